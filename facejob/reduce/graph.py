"""The k-nearest-neighbour graph of all faces, from the hnswlib index (never an n x n matrix)."""
from __future__ import annotations

import numpy as np

from .hnsw import FaceIndex

QUERY_CHUNK = 100_000
# hnswlib search breadth for the graph: the graph only proposes which clusters to compare (the
# linkage itself is exact), so near-perfect kNN recall is not needed; on LFW, ef 32 and 64 give
# the same clusters at half the time.
GRAPH_EF = 32
EDGE_CHUNK = 1 << 24    # edges deduplicated at a time by `canonical_edges` (~0.3 GiB of temporaries)


def knn_graph(fi: FaceIndex, embeddings: np.ndarray, rows_of_label: np.ndarray, k: int,
              max_dist: float = np.inf, ef: int | None = None, threads: int = -1,
              chunk: int = QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges (i, j), i < j, each pair once, sorted, between every face and its k nearest.

    `embeddings` row i is face i; `rows_of_label` maps hnsw labels to those rows (-1 = not a
    current face). Edges longer than `max_dist` are dropped; the rest carry no distance (the
    linkage computes its own), which keeps the graph a third smaller: at 10M faces ~100M edges
    are found. Queries run in chunks of `chunk` rows so the result arrays stay small; the edges
    found are kept as int32 rows (n < 2**31) until the end.
    """
    n = len(embeddings)
    idx = np.int32 if n < 2**31 else np.int64
    src, dst = [], []
    ef = max(ef or GRAPH_EF, k + 1)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        labels, d = fi.query(embeddings[lo:hi], k + 1, ef=ef, threads=threads)  # +1: the face itself comes back
        j = rows_of_label[labels]
        i = np.broadcast_to(np.arange(lo, hi)[:, None], j.shape)
        keep = (j >= 0) & (j != i) & (d <= max_dist)
        i, j = i[keep].astype(idx), j[keep].astype(idx)
        src.append(np.minimum(i, j)); dst.append(np.maximum(i, j))
    # One array at a time, each list freed as its array is made: the edges are held about once.
    a = np.concatenate(src) if src else np.empty(0, idx)
    del src
    b = np.concatenate(dst) if dst else np.empty(0, idx)
    del dst
    return _deduplicate(a, b, n, EDGE_CHUNK)


def canonical_edges(i: np.ndarray, j: np.ndarray, n: int,
                    chunk: int = EDGE_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Edges as (min, max) pairs of the ends' type, self-loops dropped, each pair once, sorted.

    Every copy of an edge has the same smaller end, so ranges of smaller ends holding about
    `chunk` edges are deduplicated one at a time and come out in order: the temporaries are
    those of one range, not of all edges (10M faces' graph: ~100M edges found)."""
    a, b = np.minimum(i, j), np.maximum(i, j)
    keep = a != b
    if not keep.all():
        a, b = a[keep], b[keep]
    return _deduplicate(a, b, n, chunk)


def _deduplicate(a: np.ndarray, b: np.ndarray, n: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """`canonical_edges` of edges already ordered (a < b)."""
    if len(a) <= chunk:
        bounds = [0, n]
    else:       # cut the smaller ends where the running count of edges passes each multiple of chunk
        ends = np.cumsum(np.bincount(a, minlength=n))
        bounds = [0, *np.unique(np.searchsorted(ends, np.arange(chunk, len(a), chunk), side="right")).tolist(), n]
    us, vs = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sel = np.flatnonzero((a >= lo) & (a < hi)) if len(bounds) > 2 else slice(None)
        key = np.unique(a[sel].astype(np.int64) * n + b[sel])     # int64 whatever the rows' type: no overflow
        us.append((key // n).astype(a.dtype))     # the ends' own type: int32 rows stay int32
        vs.append((key % n).astype(a.dtype))
    return np.concatenate(us), np.concatenate(vs)
