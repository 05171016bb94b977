"""The clustering merge as it was before issue 22 (facejob/reduce/linkage.py at 19fa92c), kept
verbatim as the reference the lean `linkage.agglomerate` must equal label for label
(tests/test_linkage_lean.py; `python -m bench.merge_memory --impl old` measures it). The two
helpers the rewrite left as they were (`_components`, `_roots`) are the package's own.
`representatives` and `attach` are those of 3f3c3d0, before they read only the clusters they
need (so that descriptors held elsewhere are fetched by row). `attach_rest` is clustering's
`_attach_rest` of 6db5701, before its photo and cannot-link checks became sorted int64 keys."""
from __future__ import annotations

import numpy as np

from facejob.reduce.linkage import _components, _roots

CHUNK = 1 << 16


class _Clusters:
    """Per-cluster sums, indexed by the id of the cluster's first face (a root)."""

    def __init__(self, x: np.ndarray, degree: np.ndarray):
        self.n = np.ones(len(x), np.int64)
        self.s = np.array(x, np.float32, copy=True)                       # sum of members
        self.q = np.einsum("ij,ij->i", x, x, dtype=np.float64)            # sum of squared norms
        self.deg = degree.astype(np.float64)                               # graph edge ends in the cluster

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
        for lo in range(0, len(u), CHUNK):
            a, b = u[lo:lo + CHUNK], v[lo:lo + CHUNK]
            na, nb = self.n[a], self.n[b]
            dot = np.einsum("ij,ij->i", self.s[a], self.s[b], dtype=np.float64) / (na * nb)
            msd = self.q[a] / na + self.q[b] / nb - 2 * dot
            out[lo:lo + CHUNK] = np.sqrt(np.maximum(msd, 0))
        return out

    def merge(self, u: np.ndarray, v: np.ndarray) -> None:
        """Fold clusters v into u (pairs are disjoint, so plain fancy-index updates are safe)."""
        self.n[u] += self.n[v]
        self.s[u] += self.s[v]
        self.q[u] += self.q[v]
        self.deg[u] += self.deg[v]


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
    """
    n = len(x)
    parent = np.arange(n)
    if n == 0:
        return parent, 0
    eu, ev = eu.astype(np.int64), ev.astype(np.int64)
    cl = _Clusters(x, np.bincount(eu, minlength=n) + np.bincount(ev, minlength=n))
    w = np.ones(len(eu))          # graph edges between the two clusters of each edge
    if must_link is not None and len(must_link):
        parent = _components(np.asarray(must_link, np.int64), n)
        rows = np.flatnonzero(parent != np.arange(n))
        for a in (cl.n, cl.s, cl.q, cl.deg):
            np.add.at(a, parent[rows], a[rows])
        eu, ev, w = _unique_pairs(parent[eu], parent[ev], n, w)
    cannot = np.empty(0, np.int64)
    if cannot_link is not None and len(cannot_link):
        c = np.asarray(cannot_link, np.int64)
        cannot = _keys(parent[c[:, 0]], parent[c[:, 1]], n)
        cannot = np.unique(cannot[cannot >= 0])
        ok = ~np.isin(_keys(eu, ev, n), cannot)
        eu, ev, w = eu[ok], ev[ok], w[ok]
    if len(eu) == 0:
        return parent, 0
    el = cl.distance(eu, ev, w, link_weight)
    rounds = 0
    while rounds < max_rounds:
        live = np.flatnonzero(el <= threshold - pair_margin / np.sqrt(cl.n[eu] * cl.n[ev]))
        if len(live) == 0:
            break
        mu, mv = _reciprocal_best(eu[live], ev[live], el[live], n)
        if len(mu) == 0:
            break
        rounds += 1
        cl.merge(mu, mv)
        parent[mv] = mu
        changed = np.zeros(n, bool)
        changed[mu] = changed[mv] = True
        touched = changed[eu] | changed[ev]
        # v was folded into u this round: one step up the parent array finds the new root.
        nu, nv, nw = _unique_pairs(parent[eu[touched]], parent[ev[touched]], n, w[touched])
        if len(cannot):
            # Constraints follow their clusters; an edge between constrained clusters is dropped for good.
            cannot = np.unique(_keys(parent[cannot // n], parent[cannot % n], n))
            ok = ~np.isin(nu * n + nv, cannot)
            nu, nv, nw = nu[ok], nv[ok], nw[ok]
        rest = ~touched
        eu = np.concatenate([eu[rest], nu])
        ev = np.concatenate([ev[rest], nv])
        w = np.concatenate([w[rest], nw])
        el = np.concatenate([el[rest], cl.distance(nu, nv, nw, link_weight)])
    return _roots(parent), rounds


def _keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """One int64 per unordered pair (min * n + max); a pair of equal rows gets -1 (never an edge)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return np.where(lo != hi, lo * n + hi, -1)


def _unique_pairs(a: np.ndarray, b: np.ndarray, n: int, w: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct unordered pairs (min, max) of (a, b), self-pairs dropped, with the sum of the
    weights `w` of the pairs folded into each."""
    key, inv = np.unique(_keys(a, b, n), return_inverse=True)
    total = np.bincount(inv.reshape(-1), weights=w, minlength=len(key))
    keep = key >= 0
    return key[keep] // n, key[keep] % n, total[keep]


def _reciprocal_best(u: np.ndarray, v: np.ndarray, link: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b) that are each other's lowest-linkage neighbour among the given edges.

    Ties go to the smaller neighbour id, so the result does not depend on edge order.
    """
    a = np.concatenate([u, v])
    b = np.concatenate([v, u])
    w = np.concatenate([link, link])
    low = np.full(n, np.inf, np.float32)
    np.minimum.at(low, a, w)
    at_low = w == low[a]
    best = np.full(n, n, np.int64)
    np.minimum.at(best, a[at_low], b[at_low])
    node = np.flatnonzero(best < n)
    nb = best[node]
    mutual = (best[nb] == node) & (node < nb)
    return node[mutual], nb[mutual]


def representatives(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cluster: (root label, size, row of the member nearest the cluster mean)."""
    roots, inv, size = np.unique(labels, return_inverse=True, return_counts=True)
    by_cluster = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(size)[:-1]])
    mean = np.empty((len(roots), x.shape[1]), np.float32)
    lo = 0
    while lo < len(roots):   # a run of whole clusters covering about CHUNK rows at a time
        hi = max(lo + 1, int(np.searchsorted(starts, starts[lo] + CHUNK, side="right")) - 1)
        rows = by_cluster[starts[lo]:starts[hi - 1] + size[hi - 1]]
        sums = np.add.reduceat(x[rows].astype(np.float64), starts[lo:hi] - starts[lo])
        mean[lo:hi] = sums / size[lo:hi, None]
        lo = hi
    d = np.empty(len(x), np.float32)
    for lo in range(0, len(x), CHUNK):
        diff = x[lo:lo + CHUNK] - mean[inv[lo:lo + CHUNK]]
        d[lo:lo + CHUNK] = np.einsum("ij,ij->i", diff, diff)
    order = np.lexsort((np.arange(len(x)), d, inv))   # by cluster, then distance to mean, then row
    first = np.ones(len(order), bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    return roots, size, order[first]


def attach(x: np.ndarray, roots: np.ndarray, q: np.ndarray, cand: np.ndarray, threshold: float,
           blocked: np.ndarray | None = None, pair_margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Attach extra faces `q` to the clusters of `x` (label per row `roots`) where that is unambiguous.

    `cand` (m, k): rows of x near each q (-1 = none); `blocked` (m, k) marks candidates whose
    cluster q may not join (e.g. it holds another face of q's photo). A face joins a cluster
    when that cluster is the only one among its candidates' clusters whose RMS distance to it
    (`agglomerate`'s criterion without the link term: q has no graph edges) is under its limit (threshold -
    pair_margin / sqrt(cluster size)). Returns (root per q or -1,
    RMS distance to the nearest candidate cluster or inf).
    """
    m = len(q)
    out, best_d = np.full(m, -1, np.int64), np.full(m, np.inf, np.float32)
    if m == 0 or len(x) == 0:
        return out, best_d
    uroots, inv = np.unique(roots, return_inverse=True)
    n = np.bincount(inv).astype(np.float64)
    mean = np.zeros((len(uroots), x.shape[1]), np.float64)
    np.add.at(mean, inv, x.astype(np.float64))
    mean /= n[:, None]
    msq = np.bincount(inv, weights=np.einsum("ij,ij->i", x, x, dtype=np.float64)) / n
    ok = cand >= 0
    if blocked is not None:
        ok &= ~blocked
    for i in range(m):
        c = np.unique(inv[cand[i][ok[i]]])
        if len(c) == 0:
            continue
        qi = q[i].astype(np.float64)
        d = np.sqrt(np.maximum(qi @ qi + msq[c] - 2 * mean[c] @ qi, 0))
        best_d[i] = d.min()
        under = d <= threshold - pair_margin / np.sqrt(n[c])
        if under.sum() == 1:
            out[i] = uroots[c[under][0]]
    return out, best_d


def attach_rest(nearest, faces, x, labels, rest, seed_rows, k, applied, gc) -> int:
    """clustering._attach_rest of 6db5701 (a Python set of every seed's (photo, cluster)),
    verbatim but for its name and annotations."""
    from facejob.reduce import corrections as corr

    if len(rest) == 0 or len(seed_rows) == 0:
        return 0
    seed_pos = np.full(len(faces) + 1, -1, np.int64)      # face row -> row among the seeds; [-1] -> -1
    seed_pos[seed_rows] = np.arange(len(seed_rows))
    cand = nearest(faces.embeddings[rest], 2 * k, max(4 * k, 64))
    cand[seed_pos[cand] < 0] = -1
    uri = faces.meta.column("uri").combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    photo_in = set(zip(uri[seed_rows].tolist(), labels[seed_rows].tolist()))
    no = {}
    if applied is not None:
        for a, b in corr.rows_of(faces.face_ids, applied.cannot).tolist():
            no.setdefault(a, set()).add(int(labels[b]))
            no.setdefault(b, set()).add(int(labels[a]))
    cl = labels[np.maximum(cand, 0)]
    blocked = np.array([[(uri[r], c) in photo_in or c in no.get(int(r), ()) for c in row]
                        for r, row in zip(rest.tolist(), cl.tolist())], bool).reshape(cand.shape)
    to, dist = gc.predict(x[rest], seed_pos[cand], blocked)
    to = np.where(to >= 0, seed_rows[np.maximum(to, 0)], -1)     # a cluster's smallest seed -> its face row
    # One face per photo in a cluster: among extra faces of one photo aiming at one cluster, the nearest joins.
    taken: set[tuple[int, int]] = set()
    joined = 0
    for i in np.argsort(dist, kind="stable").tolist():
        key = (int(uri[rest[i]]), int(to[i]))
        if to[i] >= 0 and key not in taken:
            taken.add(key)
            labels[rest[i]] = to[i]
            joined += 1
    return joined
