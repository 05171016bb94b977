"""The k-nearest-neighbour graph of all faces, from the hnswlib index (never an n x n matrix)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .hnsw import FaceIndex

QUERY_CHUNK = 100_000
# hnswlib search breadth for the graph: the graph only proposes which clusters to compare (the
# linkage itself is exact), so near-perfect kNN recall is not needed; on LFW, ef 32 and 64 give
# the same clusters at half the time.
GRAPH_EF = 32
EDGE_CHUNK = 1 << 24    # edges deduplicated at a time by `canonical_edges` (~0.3 GiB of temporaries)
ROW_BLOCK = 1 << 20     # faces' neighbours turned into edges at a time by `neighbour_edges`


def knn_graph(fi: FaceIndex, embeddings: np.ndarray, rows_of_label: np.ndarray, k: int,
              max_dist: float = np.inf, ef: int | None = None, threads: int = -1,
              chunk: int = QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges (i, j), i < j, each pair once, sorted, between every face and its k nearest.

    `embeddings` row i is face i; `rows_of_label` maps hnsw labels to those rows (-1 = not a
    current face). Edges longer than `max_dist` are dropped; the rest carry no distance (the
    linkage computes its own), which keeps the graph a third smaller: at 10M faces ~100M edges
    are found. Queries run in chunks of `chunk` rows; what they find is kept as one int32 row
    per face (its neighbours, -1 where none), half the size of the edges as pairs, and those are
    made a range at a time by `neighbour_edges`.
    """
    n = len(embeddings)
    nearest = np.full((n, k + 1), -1, np.int32 if n < 2**31 else np.int64)
    ef = max(ef or GRAPH_EF, k + 1)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        labels, d = fi.query(embeddings[lo:hi], k + 1, ef=ef, threads=threads)  # +1: the face itself comes back
        j = rows_of_label[labels]
        keep = (j >= 0) & (j != np.arange(lo, hi)[:, None]) & (d <= max_dist)
        nearest[lo:hi, :j.shape[1]] = np.where(keep, j, -1)
    return neighbour_edges(nearest)


def neighbour_edges(nearest: np.ndarray, chunk: int = EDGE_CHUNK,
                    block: int = ROW_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """`canonical_edges` of the edges (i, nearest[i, c]) for every nearest[i, c] >= 0 (no
    self-loops among them), of `nearest`'s type, without making them all: a pass over `block`
    rows at a time counts each smaller end, then one pass per range of smaller ends holding
    about `chunk` edges deduplicates that range."""
    n = len(nearest)

    def ends() -> Iterator[tuple[np.ndarray, np.ndarray]]:     # (smaller, larger) end of each edge, by rows
        for lo in range(0, n, block):
            j = nearest[lo:lo + block]
            ok = j >= 0
            i = np.broadcast_to(np.arange(lo, lo + len(j), dtype=j.dtype)[:, None], j.shape)[ok]
            j = j[ok]
            yield np.minimum(i, j), np.maximum(i, j)

    if nearest.size <= chunk:
        bounds = [0, n]
    else:
        count = np.zeros(n, np.int64)
        for a, _ in ends():
            count += np.bincount(a, minlength=n)
        bounds = _range_bounds(count, chunk)
        del count
    us, vs = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        keys = [np.empty(0, np.int64)]
        for a, b in ends():
            sel = (a >= lo) & (a < hi)
            keys.append(a[sel].astype(np.int64) * n + b[sel])     # int64 whatever the rows' type: no overflow
        key = np.concatenate(keys)
        del keys
        key = _distinct(key)
        us.append((key // n).astype(nearest.dtype))
        vs.append((key % n).astype(nearest.dtype))
    return np.concatenate(us), np.concatenate(vs)


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
    else:
        bounds = _range_bounds(np.bincount(a, minlength=n), chunk)
    us, vs = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        sel = np.flatnonzero((a >= lo) & (a < hi)) if len(bounds) > 2 else slice(None)
        key = _distinct(a[sel].astype(np.int64) * n + b[sel])     # int64 whatever the rows' type: no overflow
        us.append((key // n).astype(a.dtype))     # the ends' own type: int32 rows stay int32
        vs.append((key % n).astype(a.dtype))
    return np.concatenate(us), np.concatenate(vs)


def _range_bounds(count: np.ndarray, chunk: int) -> list[int]:
    """Bounds of ranges of smaller ends (`count`: edges per smaller end), cut where the running
    count of edges passes each multiple of `chunk`."""
    at = np.cumsum(count)
    return [0, *np.unique(np.searchsorted(at, np.arange(chunk, at[-1], chunk), side="right")).tolist(), len(count)]


def _distinct(key: np.ndarray) -> np.ndarray:
    """np.unique(key), sorting `key` itself in place (np.unique sorts a copy: a range's keys twice)."""
    key.sort()
    return key[np.concatenate([[True], key[1:] != key[:-1]])] if len(key) else key
