"""The reducer on Ray (facejob/reduce/ray_reduce.py) and its pure parts (facejob/reduce/partition.py).

The split clustering must give exactly `linkage.agglomerate`'s labels; the sharded search must
find what exact search finds; and a real two-node Ray cluster must reduce a small real archive
to the same clusters, labels, duplicates and search results as the single-process path, with
work on both nodes.
"""
from __future__ import annotations

import numpy as np
import pytest

from facejob.reduce import partition as pt
from facejob.reduce.graph import canonical_edges
from facejob.reduce.linkage import agglomerate


def _blobs(n: int, people: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((people, 128)).astype(np.float32) * 0.08
    return (c[rng.integers(0, people, n)] + rng.standard_normal((n, 128)).astype(np.float32) * 0.02).astype(np.float32)


def _knn_edges(x: np.ndarray, k: int, max_dist: float) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))
    j = np.argsort(d, 1)[:, 1:k + 1]
    i = np.repeat(np.arange(len(x)), k)
    keep = d[i, j.reshape(-1)] <= max_dist
    eu, ev, _ = canonical_edges(i[keep], j.reshape(-1)[keep], d[i, j.reshape(-1)][keep], len(x))
    return eu, ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_clustering_is_exactly_the_single_process_one(seed):
    x = _blobs(600, 60, seed)
    eu, ev = _knn_edges(x, 6, 0.9)
    rng = np.random.default_rng(seed)
    must = rng.integers(0, len(x), (8, 2))
    cannot = rng.integers(0, len(x), (40, 2))
    want, rounds = agglomerate(x, eu, ev, 0.45, must_link=must, cannot_link=cannot, pair_margin=0.04)
    comp = pt.components(len(x), eu, ev, must)
    assert len(np.unique(comp)) > 20          # many parts: the split is really exercised
    for groups in (1, 3, 50):
        got, r = pt.split_agglomerate(x, eu, ev, 0.45, must_link=must, cannot_link=cannot, pair_margin=0.04,
                                      groups=groups)
        np.testing.assert_array_equal(got, want)
        assert 1 <= r <= rounds
    assert len(np.unique(want)) < len(x) / 2   # and it did cluster


def test_cutting_edges_over_the_threshold_is_not_exact():
    """Why the split is by components of the whole candidate graph, not of its edges under the
    threshold: the linkage averages over every pair, also pairs the graph does not hold, so an
    edge over the threshold can carry a merge. Edges x0-x1 (0.35) and x1-y (0.55 > 0.5); x0-y
    (0.2) is no edge. {x0, x1} merge, then {x0, x1} and y (RMS 0.41) over the 0.55 edge."""
    x = np.zeros((3, 128), np.float32)
    x[1, 0], x[2, 0] = -0.35, 0.2
    eu, ev = np.array([0, 1]), np.array([1, 2])
    want, _ = agglomerate(x, eu, ev, 0.5)
    assert len(np.unique(want)) == 1
    short = np.linalg.norm(x[eu] - x[ev], axis=1) <= 0.5
    cut, _ = pt.split_agglomerate(x, eu[short], ev[short], 0.5)
    assert len(np.unique(cut)) == 2


def test_sharded_search_matches_exact_search():
    x = _blobs(3000, 300, 5)
    cent = pt.kmeans(x, 8, seed=0)
    cells = pt.nearest_cells(x, cent, 3)
    rows = pt.cell_rows(cells, len(cent), 2)
    assert sum(len(r) for r in rows) == 2 * len(x)
    q = x[:200]
    qc = pt.nearest_cells(q, cent, 3)
    cand_l, cand_d = [], []
    for p in range(len(cent)):
        d = np.linalg.norm(q[:, None] - x[rows[p]][None], axis=2)
        o = np.argsort(d, 1)[:, :11]
        asked = (qc == p).any(1)[:, None]
        cand_l.append(np.where(asked, rows[p][o], -1))
        cand_d.append(np.where(asked, np.take_along_axis(d, o, 1), np.inf))
    lab, dist = pt.merge_nearest(np.concatenate(cand_l, 1), np.concatenate(cand_d, 1), 11)
    assert all(len(set(r[r >= 0])) == len(r[r >= 0]) for r in lab)      # each face once
    assert (np.diff(dist, axis=1) >= 0).all()
    exact = np.argsort(np.linalg.norm(q[:, None] - x[None], axis=2), 1)[:, :11]
    recall = np.mean([len(set(a) & set(b)) / 11 for a, b in zip(lab, exact)])
    assert recall >= 0.95, recall
