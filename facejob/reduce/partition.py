"""Pure pieces of the sharded reducer (facejob/reduce/ray_reduce.py runs them on Ray).

Search shards: a coarse k-means over the descriptors cuts the face space into `parts` cells;
each face is stored in its `replicas` nearest cells (the overlap DiskANN uses to build
billion-scale graphs from shards), and a query visits its `probe` nearest cells. A face's near
neighbours lie in the cells near it, so a query touches `probe` shards of n * replicas / parts
faces instead of every shard (random shards must all be asked: `parts` times the query work).

Clustering parts: the connected components of the candidate graph (see `split_agglomerate`)
are clustered independently and give exactly `linkage.agglomerate`'s result.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .linkage import agglomerate

CHUNK = 1 << 15   # rows per distance block: (CHUNK x parts) float32 stays a few MB


def kmeans(x: np.ndarray, parts: int, iters: int = 8, sample: int = 50_000, seed: int = 0) -> np.ndarray:
    """`parts` centroids of the rows of `x` (Lloyd's iterations on a fixed-seed sample: the
    cells only route faces to shards, they need not be optimal)."""
    rng = np.random.default_rng(seed)
    s = x[np.sort(rng.choice(len(x), min(sample, len(x)), replace=False))].astype(np.float32)
    parts = max(1, min(parts, len(s)))
    c = s[rng.choice(len(s), parts, replace=False)].copy()
    for _ in range(iters):
        near = nearest_cells(s, c, 1)[:, 0]
        for p in range(parts):
            mine = s[near == p]
            if len(mine):   # an empty cell keeps its centroid
                c[p] = mine.mean(0)
    return c


def nearest_cells(x: np.ndarray, centroids: np.ndarray, m: int) -> np.ndarray:
    """(n, m): the m nearest centroids of each row, nearest first."""
    m = min(m, len(centroids))
    out = np.empty((len(x), m), np.int32)
    cn = (centroids * centroids).sum(1)
    for lo in range(0, len(x), CHUNK):
        d = cn[None, :] - 2 * x[lo:lo + CHUNK] @ centroids.T     # + |x|^2, the same for every centroid
        near = np.argpartition(d, m - 1, axis=1)[:, :m] if m < len(centroids) else np.argsort(d, axis=1)
        order = np.argsort(np.take_along_axis(d, near, 1), axis=1, kind="stable")
        out[lo:lo + CHUNK] = np.take_along_axis(near, order, 1)
    return out


def cell_rows(cells: np.ndarray, parts: int, replicas: int) -> list[np.ndarray]:
    """Per cell, the rows stored in it: those with the cell among their `replicas` nearest."""
    c = cells[:, :replicas]
    rows = np.repeat(np.arange(len(cells)), c.shape[1])
    flat = c.reshape(-1)
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(parts + 1))
    return [rows[order[bounds[p]:bounds[p + 1]]] for p in range(parts)]


def probed(vectors: np.ndarray, centroids: np.ndarray, probe: int) -> list[np.ndarray]:
    """Per cell, the rows of `vectors` that visit it (those with it among their `probe` nearest)."""
    cells = nearest_cells(vectors, centroids, probe)
    return [np.flatnonzero((cells == p).any(1)) for p in range(len(centroids))]


def merge_answers(m: int, answers: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """`merge_nearest` of the shards' answers to m vectors: each answer is (the vectors' rows it
    answers, their labels (rows, w), distances), as `probed` sent them; at least k columns
    (-1: fewer found)."""
    answers = list(answers)
    lab = np.full((m, max(k, sum(a[1].shape[1] for a in answers))), -1, np.int64)
    dist = np.full(lab.shape, np.inf, np.float32)
    col = 0
    for rows, a_lab, a_dist in answers:
        w = a_lab.shape[1]
        lab[rows, col:col + w], dist[rows, col:col + w] = a_lab, a_dist
        col += w
    return merge_nearest(lab, dist, k)


def merge_nearest(labels: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k nearest distinct labels among candidates from several shards.

    `labels`, `dist` (m, c): every shard's answers side by side (-1 = no answer); a face
    stored in two shards comes back twice, once is kept. Ties go to the smaller label, so the
    result does not depend on which shard answered first."""
    m = len(labels)
    d = np.where(labels < 0, np.inf, dist).astype(np.float32)
    order = _sort_rows(labels, d)
    lab, d = np.take_along_axis(labels, order, 1), np.take_along_axis(d, order, 1)
    # Copies of one label sit side by side (same label, same distance): drop all but the first.
    dup = np.zeros_like(lab, bool)
    dup[:, 1:] = lab[:, 1:] == lab[:, :-1]
    d = np.where(dup | (lab < 0), np.inf, d)
    keep = _sort_rows(lab, d)[:, :k]
    lab, d = np.take_along_axis(lab, keep, 1), np.take_along_axis(d, keep, 1)
    lab = np.where(np.isfinite(d), lab, -1)
    return lab.reshape(m, -1), d.reshape(m, -1)


def _sort_rows(labels: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Per row, the column order by (distance, label)."""
    o = np.argsort(labels, axis=1, kind="stable")
    return np.take_along_axis(o, np.argsort(np.take_along_axis(d, o, 1), axis=1, kind="stable"), 1)


def components(n: int, eu: np.ndarray, ev: np.ndarray, must_link: np.ndarray | None = None) -> np.ndarray:
    """Per row, the smallest row of its connected component over the edges and must-link pairs.

    By scipy's connected components over a sparse graph (~5 bytes an edge: the graph of 10M
    faces has ~70M edges), then each component named by its smallest row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.empty(0, np.int64)
    u, v = eu, ev
    if must_link is not None and len(must_link):
        m = np.asarray(must_link).reshape(-1, 2)
        u, v = np.concatenate([eu, m[:, 0].astype(eu.dtype)]), np.concatenate([ev, m[:, 1].astype(ev.dtype)])
    graph = coo_matrix((np.ones(len(u), bool), (u, v)), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    del graph
    smallest = np.full(comp.max() + 1, n, np.int64)
    np.minimum.at(smallest, comp, np.arange(n))
    return smallest[comp]


def group_components(comp: np.ndarray, groups: int) -> list[np.ndarray]:
    """The rows of components of more than one row, packed into at most `groups` groups of about
    equal size (largest component first, each into the smallest group); each group's rows sorted."""
    roots, inv, size = np.unique(comp, return_inverse=True, return_counts=True)
    multi = np.flatnonzero(size > 1)
    if len(multi) == 0:
        return []
    groups = max(1, min(groups, len(multi)))
    load = np.zeros(groups, np.int64)
    owner = np.full(len(roots), -1, np.int64)
    for c in multi[np.argsort(-size[multi], kind="stable")]:
        g = int(load.argmin())
        owner[c] = g
        load[g] += size[c]
    row_group = owner[inv]
    return [np.flatnonzero(row_group == g) for g in range(groups) if load[g]]


def sub_problem(rows: np.ndarray, n: int, eu: np.ndarray, ev: np.ndarray,
                must_link: np.ndarray | None, cannot_link: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The edges, must- and cannot-link pairs among `rows` (sorted), renumbered 0..len(rows)-1
    (int32 when they fit: a part's edges travel to its task; `run_part` widens them)."""
    local = np.full(n, -1, np.int32 if n < 2**31 else np.int64)
    local[rows] = np.arange(len(rows))

    def inside(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        la, lb = local[a], local[b]
        ok = (la >= 0) & (lb >= 0)
        return la[ok], lb[ok]

    su, sv = inside(np.asarray(eu), np.asarray(ev))
    pairs = []
    for p in (must_link, cannot_link):
        p = np.empty((0, 2), np.int64) if p is None or not len(p) else np.asarray(p, np.int64).reshape(-1, 2)
        a, b = inside(p[:, 0], p[:, 1])
        pairs.append(np.stack([a, b], 1))
    return su, sv, pairs[0], pairs[1]


def split_agglomerate(x: np.ndarray, eu: np.ndarray, ev: np.ndarray, threshold: float,
                      max_rounds: int = 100_000, must_link: np.ndarray | None = None,
                      cannot_link: np.ndarray | None = None, pair_margin: float = 0.0,
                      link_weight: float = 0.0, groups: int = 1,
                      run: Callable[[Iterable[tuple]], Iterable[tuple[np.ndarray, int]]] | None = None,
                      carry: Callable[[np.ndarray], object] | None = None) -> tuple[np.ndarray, int]:
    """`linkage.agglomerate`, run as independent parts: the same labels, exactly.

    Why it is exact. Let C be a union of connected components of the graph G whose edges are
    the candidate edges (eu, ev) plus the must-link pairs.
    (1) Every merge joins two clusters linked by an edge, and the edges of a merged cluster are
        the edges of its members; must-link pairs are joined first and turned into edges of the
        joined clusters. So every cluster lies inside one component, every cluster edge joins two
        clusters of one component, and a cannot-link pair across components never meets an edge.
    (2) A round merges the pairs that are each other's best live edge. Whether (A, B) is such a
        pair depends only on A's and B's edges and on the sums of the clusters at their ends
        (linkage is exact from per-cluster sums; the link term counts a cluster's graph edges,
        all of which lie in its component), all inside one component. So the merges a
        round makes inside C are the same whether the rest of the graph is there or not, and by
        induction over rounds the clusters inside C are the same.
    (3) Bit-for-bit: the rows of C are renumbered in increasing order, so every sort, tie-break
        (the smaller neighbour id) and order of float additions (`np.add.at` over rows) is the
        same; labels (a cluster's smallest row) map back through the same order.
    Only the round count differs: it is the most any part needed, not the sum.

    `run` maps the parts' argument tuples to `(labels, rounds)` results (default: here, one by
    one; facejob.reduce.ray_reduce runs them as Ray tasks); `groups` is how many parts. A part's
    tuple starts with `carry(rows)` for its (sorted) rows of x: by default x[rows] (`run_part`
    takes that); ray_reduce's tasks fetch the descriptors from its shards by what it carries.
    """
    n = len(x)
    labels = np.arange(n)
    if n == 0:
        return labels, 0
    comp = components(n, eu, ev, must_link)
    parts = group_components(comp, groups)
    carry = carry or (lambda rows: x[rows])
    jobs = []
    for rows in parts:
        su, sv, mu, cu = sub_problem(rows, n, eu, ev, must_link, cannot_link)
        jobs.append((carry(rows), su, sv, threshold, max_rounds, mu, cu, pair_margin, link_weight))
    run = run or (lambda js: map(run_part, js))
    rounds = 0
    for rows, (lab, r) in zip(parts, run(jobs)):
        labels[rows] = rows[lab]
        rounds = max(rounds, r)
    return labels, rounds


def run_part(job: tuple) -> tuple[np.ndarray, int]:
    """One part of `split_agglomerate` (a job tuple it made)."""
    x, eu, ev, threshold, max_rounds, must, cannot, margin, link_weight = job
    eu, ev = eu.astype(np.int64), ev.astype(np.int64)    # linkage's pair keys (a * n + b) need int64
    must, cannot = must.astype(np.int64), cannot.astype(np.int64)
    return agglomerate(x, eu, ev, threshold, max_rounds, must_link=must, cannot_link=cannot, pair_margin=margin,
                       link_weight=link_weight)
