"""Identity clustering: average-linkage agglomeration restricted to the k-nearest-neighbour graph.

Average linkage (UPGMA) over all pairs is the best classic way to cluster face descriptors, but
it needs the n x n distance matrix. Two observations make it sparse:

1. Linkage by mean *squared* distance is exact from per-cluster sums, whatever pairs we have
   seen:  mean_{a in A, b in B} |a - b|^2 = E_A|a|^2 + E_B|b|^2 - 2 mean(A).mean(B).
   So the kNN graph only has to say which clusters are worth comparing, not how far apart
   they are; there are no missing distances to guess.
2. Average linkage is reducible, so merging every *reciprocal* best pair under the threshold
   in one round gives the same result as merging one pair at a time (Reciprocal
   Agglomerative Clustering). Each round is a few vectorised passes over the edge list.

Only edges whose linkage is under the threshold ("live" edges) and edges touching a cluster
that just merged are looked at in a round, so late rounds cost little.

One global threshold cannot serve every part of the face space: where many different people
look alike (on LFW, East Asian politicians) distinct people lie 0.44-0.52 apart, while parts
of one person elsewhere are 0.52-0.57 apart. The graph tells them apart: parts of one person
are each other's nearest neighbours, look-alikes merely lie close. So with a `link_weight` w
the distance compared is RMS - w * links, links = the mean over the two clusters of the share
of each one's graph edges that end in the other (0..1; edges counted with multiplicity as
clusters merge). It is no longer reducible; the result is the one the rounds of reciprocal
best pairs give (deterministic, and still a function of each connected component alone).
"""
from __future__ import annotations

import numpy as np

from facejob.config import CLUSTER_LINK_WEIGHT, CLUSTER_PAIR_MARGIN, CLUSTER_THRESHOLD

from .errors import check_params, check_rows, is_int, is_real, not_fitted

CHUNK = 1 << 16   # rows or edges per vectorised step: bounds the temporaries to a few MB
ATTACH_ROWS = 50_000   # faces `attach` places at a time (the clusters they are near: a mean each)
PAIRS = 1 << 14   # cluster pairs per distance step: two (PAIRS, 128) float32 sums, 8 MiB each
SLICE = 1 << 20   # pairs sorted at once when merged clusters' edges are deduplicated


class _Clusters:
    """Per-cluster sums, indexed by the id of the cluster's first face (a root).

    A single face's sum is its row of `x`, read in place (never copied: `x` may be read-only or
    memory-mapped). A cluster of two or more faces keeps its sum in a row of `pool`; a merge frees
    the merged-in cluster's row for the next one, so the sums take 512 bytes per cluster that
    exists now, not per face (`pool` is allocated at its largest possible size but only the rows
    written are ever backed by memory, and rows are reused lowest first).
    """

    def __init__(self, x: np.ndarray, degree: np.ndarray, index_type: type):
        n = len(x)
        self.x = x
        self.n = np.ones(n, np.int64)
        self.q = np.einsum("ij,ij->i", x, x, dtype=np.float64)            # sum of squared norms
        self.deg = degree.astype(np.float64)                               # graph edge ends in the cluster
        self.slot = np.full(n, -1, index_type)                             # row of `pool`, -1: a single face
        self.pool = np.empty((n // 2 + 1, x.shape[1]), np.float32)        # sum of members
        self.free = np.empty(0, np.int64)
        self.top = 0

    def sums(self, r: np.ndarray) -> np.ndarray:
        """The float32 sum of members of clusters r (a copy)."""
        s = np.asarray(self.x.take(r, axis=0), np.float32)
        k = self.slot[r]
        has = np.flatnonzero(k >= 0)
        if len(has):
            s[has] = self.pool.take(k[has], axis=0)
        return s

    def _rows(self, count: int) -> np.ndarray:
        """`count` free rows of `pool`, the lowest freed ones first."""
        take = min(count, len(self.free))
        got = np.concatenate([self.free[:take], np.arange(self.top, self.top + count - take)])
        self.free = self.free[take:]
        self.top += count - take
        return got

    def distance(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, link_weight: float) -> np.ndarray:
        """linkage(u, v) - link_weight * the mean share of u's and v's graph edges that join
        them (`w`: edges between u and v), elementwise."""
        rms = self.linkage(u, v)
        if not link_weight:
            return rms
        share = (w / np.maximum(self.deg[u], 1) + w / np.maximum(self.deg[v], 1)) / 2
        return (rms - link_weight * share).astype(np.float32)

    def linkage(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """sqrt(mean squared distance) between clusters u and v, elementwise."""
        out = np.empty(len(u), np.float32)
        for lo in range(0, len(u), PAIRS):
            a, b = u[lo:lo + PAIRS], v[lo:lo + PAIRS]
            na, nb = self.n[a], self.n[b]
            dot = np.einsum("ij,ij->i", self.sums(a), self.sums(b), dtype=np.float64) / (na * nb)
            msd = self.q[a] / na + self.q[b] / nb - 2 * dot
            out[lo:lo + PAIRS] = np.sqrt(np.maximum(msd, 0))
        return out

    def lengths(self, u: np.ndarray, v: np.ndarray, w: np.ndarray, link_weight: float, threshold: float,
                pair_margin: float) -> np.ndarray:
        """`distance` per edge where it is within the merge limit, else inf: an edge over it stays
        over it until one of its clusters changes, and then it is measured again."""
        out = np.empty(len(u), np.float32)
        for lo in range(0, len(u), PAIRS):
            a, b = u[lo:lo + PAIRS], v[lo:lo + PAIRS]
            d = self.distance(a, b, w[lo:lo + PAIRS], link_weight)
            d[~(d <= threshold - pair_margin / np.sqrt(self.n[a] * self.n[b]))] = np.inf
            out[lo:lo + PAIRS] = d
        return out

    def merge(self, u: np.ndarray, v: np.ndarray) -> None:
        """Fold clusters v into u (pairs are disjoint, so plain fancy-index updates are safe)."""
        self.n[u] += self.n[v]
        self.q[u] += self.q[v]
        self.deg[u] += self.deg[v]
        for lo in range(0, len(u), PAIRS):
            a, b = u[lo:lo + PAIRS], v[lo:lo + PAIRS]
            total = self.sums(a) + self.sums(b)              # float32, as s[u] += s[v]
            gone = self.slot[b]
            self.free = np.sort(np.concatenate([self.free, gone[gone >= 0]]))
            self.slot[b] = -1
            k = self.slot[a]
            alone = k < 0
            k[alone] = self._rows(int(alone.sum()))
            self.slot[a] = k
            self.pool[k] = total

    def join(self, root: np.ndarray, rows: np.ndarray) -> None:
        """Fold every row of `rows` into its cluster root[row], in the order of `rows` (the same
        float32 additions as np.add.at(s, root[rows], s[rows]))."""
        for a in (self.n, self.q, self.deg):
            np.add.at(a, root[rows], a[rows])
        roots = np.unique(root[rows])
        self.slot[roots] = k = self._rows(len(roots))
        self.pool[k] = self.x[roots]
        for lo in range(0, len(rows), PAIRS):
            r = rows[lo:lo + PAIRS]
            np.add.at(self.pool, self.slot[root[r]], np.asarray(self.x[r], np.float32))


def agglomerate(x: np.ndarray, eu: np.ndarray, ev: np.ndarray, threshold: float,
                max_rounds: int = 100_000, must_link: np.ndarray | None = None,
                cannot_link: np.ndarray | None = None, pair_margin: float = 0.0,
                link_weight: float = 0.0) -> tuple[np.ndarray, int]:
    """Cluster rows of `x` by average linkage (RMS distance) over the graph edges (eu, ev).

    Two clusters merge when they are each other's closest graph neighbour and their distance
    (RMS, less `link_weight` times the share of their graph edges that join them: see the
    module's docstring) is <= threshold - pair_margin / sqrt(n_a * n_b): two single faces need to be
    `pair_margin` nearer than `threshold`, and the limit rises toward `threshold` as the number
    of face pairs behind the RMS grows (an average over many pairs varies less than one distance). `must_link` ((m, 2) row pairs) are joined before anything else,
    whatever their distance; two clusters holding a `cannot_link` pair never merge (a
    cannot-link pair that must-links put together anyway is ignored: the curator's word wins).
    Returns (label per row = its cluster's smallest row, rounds).

    Memory: `x` is only read (never copied; it may be read-only or memory-mapped). Besides it,
    per face 4 bytes of label, 4 of sum row and 24 of counts (size, sum of squared norms, graph
    edge ends), 512 per cluster of two or more faces that exists at a time, 16 per edge (two
    int32 ends, an int32 count of graph edges, a float32 distance), and per round temporaries of
    about 16 bytes per edge that it looks at: 436 bytes per face in all at 1M synthetic faces of
    8.2 edges each, against 1,167 before (bench/merge_memory.py). The edge arrays never grow: a
    round's merged clusters' edges are written back over the slots of the edges they replace
    (fewer: duplicates fold), and spare slots become holes (ends = n, distance inf) that
    nothing reads.
    """
    n = len(x)
    if n == 0:
        return np.arange(0), 0
    it = np.int32 if max(n, len(eu)) < 2**31 - 1 else np.int64    # rows, counts (n itself: a hole's end)
    parent = np.arange(n, dtype=it)
    cl = _Clusters(x, np.bincount(eu, minlength=n) + np.bincount(ev, minlength=n), it)
    u, v = np.array(eu, it), np.array(ev, it)      # copies: their slots are rewritten as clusters merge
    w = np.ones(len(u), it)         # graph edges between the two clusters of each edge
    if must_link is not None and len(must_link):
        parent = _components(np.asarray(must_link, np.int64), n).astype(it)
        cl.join(parent, np.flatnonzero(parent != np.arange(n)))
        u, v, w = (np.concatenate(p).astype(it) for p in zip(*_unique_pairs(parent[u], parent[v], n, w)))
    cannot = np.empty(0, np.int64)
    if cannot_link is not None and len(cannot_link):
        c = np.asarray(cannot_link, np.int64)
        cannot = _keys(parent[c[:, 0]], parent[c[:, 1]], n)
        cannot = np.unique(cannot[cannot >= 0])
        ok = ~_within(u, v, n, cannot)
        u, v, w = u[ok], v[ok], w[ok]
    if len(u) == 0:
        return parent.astype(np.int64), 0
    el = cl.lengths(u, v, w, link_weight, threshold, pair_margin)    # inf: over the limit (or a hole)
    rounds = 0
    while rounds < max_rounds:
        live = el < np.inf
        if not live.any():
            break
        mu, mv = _reciprocal_best(u[live], v[live], el[live], n)
        del live
        if len(mu) == 0:
            break
        rounds += 1
        cl.merge(mu, mv)
        parent[mv] = mu
        changed = np.zeros(n + 1, bool)     # [n]: a hole's end, never changed
        changed[mu] = changed[mv] = True
        touched = changed.take(u)
        touched |= changed.take(v)
        slots = np.flatnonzero(touched).astype(it)
        del touched
        # v was folded into u this round: one step up the parent array finds the new root.
        a, b, tw = parent.take(u[slots]), parent.take(v[slots]), w[slots]
        u[slots] = v[slots] = n
        el[slots] = np.inf
        if len(cannot):
            # Constraints follow their clusters; an edge between constrained clusters is dropped for good.
            cannot = np.unique(_keys(parent[cannot // n], parent[cannot % n], n))
        at = 0
        for nu, nv, nw in _unique_pairs(a, b, n, tw):
            if len(cannot):
                ok = ~_within(nu, nv, n, cannot)
                nu, nv, nw = nu[ok], nv[ok], nw[ok]
            put = slots[at:at + len(nu)]
            u[put], v[put], w[put] = nu, nv, nw
            el[put] = cl.lengths(u[put], v[put], w[put], link_weight, threshold, pair_margin)
            at += len(nu)
    return _roots(parent).astype(np.int64), rounds


def _keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """One int64 per unordered pair (min * n + max); a pair of equal rows gets -1 (never an edge)."""
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    return np.where(lo != hi, lo * n + hi, -1)


def in_sorted(keys: np.ndarray, table: np.ndarray) -> np.ndarray:
    """np.isin(keys, table) for a sorted, distinct `table` (any shape of keys), without sorting keys."""
    if not len(table):
        return np.zeros(np.shape(keys), bool)
    return table[np.minimum(np.searchsorted(table, keys), len(table) - 1)] == keys


def _within(a: np.ndarray, b: np.ndarray, n: int, table: np.ndarray) -> np.ndarray:
    """np.isin(_keys(a, b, n), table) for a sorted `table`, in chunks."""
    out = np.zeros(len(a), bool)
    if len(table):
        for lo in range(0, len(a), CHUNK):
            out[lo:lo + CHUNK] = in_sorted(_keys(a[lo:lo + CHUNK], b[lo:lo + CHUNK], n), table)
    return out


def _unique_pairs(a: np.ndarray, b: np.ndarray, n: int, w: np.ndarray):
    """Distinct unordered pairs (min, max) of (a, b), self-pairs dropped, with the sum of the
    weights `w` of the pairs folded into each: yields (min, max, sum) arrays for one range of
    `min` at a time, so that no more than about SLICE pairs are sorted at once. Overwrites `a` and `b`."""
    swap = np.flatnonzero(a > b)
    a[swap], b[swap] = b[swap], a[swap]
    lo, hi = a, b
    cuts = np.linspace(0, n, len(lo) // SLICE + 2).astype(np.int64)
    for r0, r1 in zip(cuts[:-1], cuts[1:]):
        sel = (lo != hi) if len(cuts) == 2 else (lo >= r0) & (lo < r1) & (lo != hi)
        key = lo[sel].astype(np.int64) * n + hi[sel]
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = np.ones(len(key), bool)
        first[1:] = key[1:] != key[:-1]
        starts = np.flatnonzero(first)
        total = np.add.reduceat(w[sel][order], starts) if len(starts) else w[:0]
        key = key[starts]
        yield key // n, key % n, total


def _components(pairs: np.ndarray, n: int) -> np.ndarray:
    """Per row, the smallest row it is linked to through `pairs` (connected components)."""
    label = np.arange(n)
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = _roots(new)
        if np.array_equal(new, label):
            return label
        label = new


def _reciprocal_best(u: np.ndarray, v: np.ndarray, link: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) that are each other's lowest-linkage neighbour among the given edges.

    Ties go to the smaller neighbour id, so the result does not depend on edge order.
    """
    low = np.full(n, np.inf, np.float32)
    best = np.full(n, n, np.int64)
    for lo in range(0, len(u), CHUNK):   # int64 rows a chunk at a time: ufunc.at is slow with other types
        a, b = u[lo:lo + CHUNK].astype(np.int64), v[lo:lo + CHUNK].astype(np.int64)
        np.minimum.at(low, a, link[lo:lo + CHUNK])
        np.minimum.at(low, b, link[lo:lo + CHUNK])
    for lo in range(0, len(u), CHUNK):
        a, b, d = u[lo:lo + CHUNK].astype(np.int64), v[lo:lo + CHUNK].astype(np.int64), link[lo:lo + CHUNK]
        at = d == low[a]
        np.minimum.at(best, a[at], b[at])
        at = d == low[b]
        np.minimum.at(best, b[at], a[at])
    node = np.flatnonzero(best < n)
    nb = best[node]
    mutual = (best[nb] == node) & (node < nb)
    return node[mutual], nb[mutual]


def _roots(parent: np.ndarray) -> np.ndarray:
    while True:
        up = parent[parent]
        if np.array_equal(up, parent):
            return parent
        parent = up


def representatives(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: (root label, size, row of the member nearest the cluster mean; the first
    row among equally near ones).

    Only clusters of two or more faces are computed (a lone face is its own representative),
    and `x` is read by rows, once, a run of whole clusters at a time: it may be Descriptors
    held elsewhere (embeddings.Descriptors), of which only those clusters' rows are fetched,
    and no mean is kept past its run (10M faces: ~1M clusters, 0.5 GiB of means at once)."""
    roots, inv, size = np.unique(labels, return_inverse=True, return_counts=True)
    rep = np.empty(len(roots), np.int64)
    rep[inv[::-1]] = np.arange(len(inv))[::-1]       # each cluster's first row: a lone face's answer
    multi = np.flatnonzero(size > 1)
    if len(multi) == 0:
        return roots, size, rep
    which = np.full(len(roots), -1, np.int64)        # cluster -> its place among the multi-face ones
    which[multi] = np.arange(len(multi))
    mine = np.flatnonzero(which[inv] >= 0)           # their rows, in row order
    by_cluster = mine[np.argsort(which[inv[mine]], kind="stable")]    # and by cluster, rows ascending
    del mine, which
    size_m = size[multi]
    starts = np.concatenate([[0], np.cumsum(size_m)[:-1]])
    lo = 0
    while lo < len(multi):   # a run of whole clusters covering about CHUNK rows at a time
        hi = max(lo + 1, int(np.searchsorted(starts, starts[lo] + CHUNK, side="right")) - 1)
        rows = by_cluster[starts[lo]:starts[hi - 1] + size_m[hi - 1]]
        at = starts[lo:hi] - starts[lo]
        xs = x[rows]
        mean = (np.add.reduceat(xs.astype(np.float64), at) / size_m[lo:hi, None]).astype(np.float32)
        diff = xs - np.repeat(mean, size_m[lo:hi], axis=0)
        d = np.einsum("ij,ij->i", diff, diff)
        cl = np.repeat(np.arange(hi - lo), size_m[lo:hi])
        nearest = np.flatnonzero(d == np.minimum.reduceat(d, at)[cl])
        rep[multi[lo:hi]] = rows[nearest[np.unique(cl[nearest], return_index=True)[1]]]
        lo = hi
    return roots, size, rep


def attach(x: np.ndarray, roots: np.ndarray, q: np.ndarray, cand: np.ndarray, threshold: float,
           blocked: np.ndarray | None = None, pair_margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Attach extra faces `q` to the clusters of `x` (label per row `roots`) where that is unambiguous.

    `cand` (m, k): rows of x near each q (-1 = none); `blocked` (m, k) marks candidates whose
    cluster q may not join (e.g. it holds another face of q's photo). A face joins a cluster
    when that cluster is the only one among its candidates' clusters whose RMS distance to it
    (`agglomerate`'s criterion without the link term: q has no graph edges) is under its limit (threshold -
    pair_margin / sqrt(cluster size)). Returns (root per q or -1,
    RMS distance to the nearest candidate cluster or inf). Only the candidate clusters' rows
    of `x` are read (it may be Descriptors held elsewhere), for ATTACH_ROWS faces at a time:
    the float64 means of the clusters they are near are 1 KiB each (10M faces, 3 % of them
    attached: ~1M clusters, 1 GiB at once). A cluster's sum adds its rows in row order
    whatever the block, so the answers do not depend on it.
    """
    m = len(q)
    out, best_d = np.full(m, -1, np.int64), np.full(m, np.inf, np.float32)
    if m == 0 or len(x) == 0:
        return out, best_d
    uroots, inv = np.unique(roots, return_inverse=True)
    ok = cand >= 0
    if blocked is not None:
        ok &= ~blocked
    for lo in range(0, m, ATTACH_ROWS):
        at = slice(lo, lo + ATTACH_ROWS)
        _attach_block(x, uroots, inv, q[at], cand[at], ok[at], threshold, pair_margin, out[at], best_d[at])
    return out, best_d


def _attach_block(x: np.ndarray, uroots: np.ndarray, inv: np.ndarray, q: np.ndarray, cand: np.ndarray,
                  ok: np.ndarray, threshold: float, pair_margin: float, out: np.ndarray, best_d: np.ndarray) -> None:
    """`attach` of the faces `q` into `out` and `best_d` (views), `ok` their usable candidates."""
    wanted = np.unique(inv[cand[ok]])                # the candidates' clusters: their sums only
    which = np.full(len(uroots), -1, np.int64)
    which[wanted] = np.arange(len(wanted))
    mine = np.flatnonzero(which[inv] >= 0)
    w = which[inv[mine]]
    n = np.bincount(w, minlength=len(wanted)).astype(np.float64)
    mean = np.zeros((len(wanted), x.shape[1]), np.float64)
    sq = np.empty(len(mine), np.float64)
    for lo in range(0, len(mine), CHUNK):            # in row order: each sum adds its rows in order
        xs = x[mine[lo:lo + CHUNK]]
        np.add.at(mean, w[lo:lo + CHUNK], xs.astype(np.float64))
        sq[lo:lo + CHUNK] = np.einsum("ij,ij->i", xs, xs, dtype=np.float64)
    mean /= np.maximum(n, 1)[:, None]
    msq = np.bincount(w, weights=sq, minlength=len(wanted)) / np.maximum(n, 1)
    for i in range(len(q)):
        c = np.unique(which[inv[cand[i][ok[i]]]])
        if len(c) == 0:
            continue
        qi = q[i].astype(np.float64)
        d = np.sqrt(np.maximum(qi @ qi + msq[c] - 2 * mean[c] @ qi, 0))
        best_d[i] = d.min()
        under = d <= threshold - pair_margin / np.sqrt(n[c])
        if under.sum() == 1:
            out[i] = uroots[wanted[c[under][0]]]


class GraphClusterer:
    """`agglomerate` and `attach` as a scikit-learn-style clusterer.

    `fit(X, edges, must_link, cannot_link)` clusters the rows of X over candidate edges (u, v)
    (e.g. `graph.knn_graph`'s: the graph needs the search index, so it is an
    input here); `labels_` then holds each row's cluster (its smallest row) and `rounds_` the
    merge rounds. `predict(Q, candidates, blocked)` attaches further faces to those clusters
    where that is unambiguous. Settings are checked when it is made (ConfigError, a ValueError).
    """

    def __init__(self, threshold: float = CLUSTER_THRESHOLD, pair_margin: float = CLUSTER_PAIR_MARGIN,
                 max_rounds: int = 100_000, link_weight: float = CLUSTER_LINK_WEIGHT):
        self.threshold, self.pair_margin, self.max_rounds = threshold, pair_margin, max_rounds
        self.link_weight = link_weight
        self._check()

    def _check(self) -> None:
        check_params(type(self).__name__, self, [
            ("threshold", lambda v: is_real(v) and v > 0, "a distance > 0"),
            ("pair_margin", lambda v: is_real(v) and v >= 0, "a distance >= 0"),
            ("max_rounds", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            ("link_weight", lambda v: is_real(v) and v >= 0, "a distance >= 0"),
        ])

    def fit(self, X: np.ndarray, edges: tuple[np.ndarray, np.ndarray], must_link: np.ndarray | None = None,
            cannot_link: np.ndarray | None = None, agglomerate_with=None) -> GraphClusterer:
        """Cluster the rows of X over `edges` with the curator's pairs (see `agglomerate`);
        `agglomerate_with`: a function that gives `agglomerate`'s result another way (e.g.
        facejob.reduce.ray_reduce's, in parallel parts)."""
        owner = type(self).__name__
        self._check()
        X = check_rows(owner, "X", X)
        if len(edges) != 2:
            raise ValueError(f"{owner}: edges must be two arrays (u, v) of rows of X")
        eu, ev = (np.asarray(e) for e in edges)
        if not (eu.ndim == 1 and eu.shape == ev.shape and _rows_of(eu, len(X)) and _rows_of(ev, len(X))):
            raise ValueError(f"{owner}: edges must be two arrays (u, v) of rows of X, of one length")
        for name, pairs in (("must_link", must_link), ("cannot_link", cannot_link)):
            p = np.asarray(pairs if pairs is not None else np.empty((0, 2), np.int64))
            if len(p) and not (p.ndim == 2 and p.shape[1] == 2 and _rows_of(p, len(X))):
                raise ValueError(f"{owner}: {name} must be (m, 2) pairs of rows of X")
        self.labels_, self.rounds_ = (agglomerate_with or agglomerate)(
            X, eu, ev, self.threshold, self.max_rounds, must_link=must_link, cannot_link=cannot_link,
            pair_margin=self.pair_margin, link_weight=self.link_weight)
        self.X_ = X
        return self

    def fit_predict(self, X: np.ndarray, edges: tuple[np.ndarray, np.ndarray], must_link: np.ndarray | None = None,
                    cannot_link: np.ndarray | None = None) -> np.ndarray:
        return self.fit(X, edges, must_link, cannot_link).labels_

    def predict(self, Q: np.ndarray, candidates: np.ndarray, blocked: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """(cluster label per row of Q or -1, RMS distance to its nearest candidate cluster or
        inf); `candidates` (m, k): rows of the fitted X near each row of Q (-1 = none);
        `blocked` (m, k): candidates whose cluster that row may not join (see `attach`)."""
        owner = type(self).__name__
        if not hasattr(self, "labels_"):
            raise not_fitted(owner)
        Q = check_rows(owner, "Q", Q, self.X_.shape[1])
        cand = np.asarray(candidates)
        if cand.ndim != 2 or len(cand) != len(Q) or not _rows_of(cand, len(self.X_), -1):
            raise ValueError(f"{owner}: candidates must be (len(Q), k) rows of the fitted X or -1")
        if blocked is not None and np.shape(blocked) != cand.shape:
            raise ValueError(f"{owner}: blocked must have the shape of candidates {cand.shape}")
        return attach(self.X_, self.labels_, Q, cand, self.threshold, blocked, self.pair_margin)


def _rows_of(a: np.ndarray, n: int, low: int = 0) -> bool:
    """Integers in [low, n)."""
    return np.issubdtype(a.dtype, np.integer) and (a.size == 0 or (a.min() >= low and a.max() < n))
