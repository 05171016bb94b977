"""The lean merge (issue 22: flat arrays, sums of merged clusters only, edge slots reused) gives
exactly the labels and round count of the merge before it (tests/linkage_reference.py, kept
verbatim), on random graphs with ties, must- and cannot-link pairs, with and without the
graph-link term, and with its slicing and chunking forced small so every path is taken."""
from __future__ import annotations

import numpy as np
import pytest

from facejob.reduce import linkage
from facejob.reduce.embeddings import Descriptors
from tests import linkage_reference as ref


def _problem(seed: int, n: int, people: int, k: int, ties: bool):
    """Descriptors of `people` people (quantised when `ties`: many equal distances), a kNN graph
    of k per face, must-links within people, cannot-links across and within."""
    rng = np.random.default_rng(seed)
    who = rng.integers(0, people, n)
    c = rng.standard_normal((people, 128)).astype(np.float32) * 0.05
    x = c[who] + rng.standard_normal((n, 128)).astype(np.float32) * 0.02
    if ties:
        x = np.round(x * 20) / 20          # coarse grid: equal rows and equal distances
        x[rng.choice(n, n // 5, replace=False)] = x[0]
    x = x.astype(np.float32)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nn = np.argsort(d, axis=1, kind="stable")[:, :k]
    a = np.repeat(np.arange(n), k)
    b = nn.reshape(-1)
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    eu, ev = key // n, key % n
    same = np.flatnonzero(who[:, None] == who[None, :])
    must = np.stack(np.divmod(rng.choice(same, 6), n), 1)
    cannot = rng.integers(0, n, (12, 2))
    return x, eu, ev, must, cannot


CASES = [dict(link_weight=lw, pair_margin=pm, constraints=cs)
         for lw in (0.0, 0.2) for pm in (0.0, 0.04) for cs in (False, True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("ties", [False, True])
def test_lean_merge_equals_the_reference(case, ties, monkeypatch):
    for seed in range(4):
        x, eu, ev, must, cannot = _problem(seed, 300, 40, 6, ties)
        kw = dict(pair_margin=case["pair_margin"], link_weight=case["link_weight"])
        if case["constraints"]:
            kw.update(must_link=must, cannot_link=cannot)
        edge = np.linalg.norm(x[eu] - x[ev], axis=1)
        for threshold in np.quantile(edge, [0.3, 0.7]) + case["pair_margin"]:
            want = ref.agglomerate(x, eu, ev, threshold, **kw)
            assert len(np.unique(want[0])) < len(x) - 10, "the case must merge something"
            assert linkage.agglomerate(x, eu, ev, threshold, **kw) == _same(want)
            with monkeypatch.context() as m:      # many chunks and slices: every loop runs more than once
                m.setattr(linkage, "CHUNK", 7)
                m.setattr(linkage, "PAIRS", 5)
                m.setattr(linkage, "SLICE", 16)
                assert linkage.agglomerate(x, eu, ev, threshold, **kw) == _same(want)
            assert linkage.agglomerate(x, eu, ev, threshold, max_rounds=2, **kw) == _same(
                ref.agglomerate(x, eu, ev, threshold, max_rounds=2, **kw))


class _same:
    """== a (labels, rounds) pair: equal labels (int64) and rounds."""

    def __init__(self, want):
        self.labels, self.rounds = want

    def __eq__(self, got):
        labels, rounds = got
        return labels.dtype == np.int64 and np.array_equal(labels, self.labels) and rounds == self.rounds

    def __repr__(self):
        return f"(labels {self.labels.tolist()}, rounds {self.rounds})"


def test_descriptors_are_only_read(tmp_path):
    """x may be read-only or memory-mapped (a Ray task's argument, a file): it is never written
    and never needs to be copied; the labels are the same. The caller's edges are not written either."""
    x, eu, ev, must, cannot = _problem(7, 300, 40, 6, False)
    want = ref.agglomerate(x, eu, ev, 0.4, must_link=must, cannot_link=cannot, pair_margin=0.04, link_weight=0.2)
    assert len(np.unique(want[0])) < len(x) - 10
    ro = x.copy()
    ro.setflags(write=False)
    assert linkage.agglomerate(ro, eu, ev, 0.4, must_link=must, cannot_link=cannot, pair_margin=0.04,
                               link_weight=0.2) == _same(want)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert linkage.agglomerate(mm, eu, ev, 0.4, must_link=must, cannot_link=cannot, pair_margin=0.04,
                               link_weight=0.2) == _same(want)
    assert np.array_equal(mm, x)
    eu32, ev32 = eu.astype(np.int32), ev.astype(np.int32)     # edges already of the merge's own type
    assert linkage.agglomerate(x, eu32, ev32, 0.4, pair_margin=0.04, link_weight=0.2) == _same(
        ref.agglomerate(x, eu, ev, 0.4, pair_margin=0.04, link_weight=0.2))
    assert np.array_equal(eu32, eu) and np.array_equal(ev32, ev)


def test_edgeless_and_empty_inputs():
    x = np.eye(4, 128, dtype=np.float32)
    none = np.empty(0, np.int64)
    for got, want in ((linkage.agglomerate(x, none, none, 0.5), ref.agglomerate(x, none, none, 0.5)),
                      (linkage.agglomerate(x[:0], none, none, 0.5), ref.agglomerate(x[:0], none, none, 0.5)),
                      (linkage.agglomerate(x, none, none, 0.5, must_link=np.array([[0, 2]])),
                       ref.agglomerate(x, none, none, 0.5, must_link=np.array([[0, 2]]))),
                      (linkage.agglomerate(x, np.array([0]), np.array([1]), 9.0, cannot_link=np.array([[1, 0]])),
                       ref.agglomerate(x, np.array([0]), np.array([1]), 9.0, cannot_link=np.array([[1, 0]])))):
        assert got == _same(want)


def _held_elsewhere(x: np.ndarray, fetched: list[int]) -> Descriptors:
    """x as Descriptors whose reads are counted (rows fetched) in `fetched`."""
    def fetch(rows: np.ndarray) -> np.ndarray:
        fetched.append(len(rows))
        return x[rows]
    return Descriptors(len(x), fetch)


@pytest.mark.parametrize("ties", [False, True])
def test_representatives_and_attach_read_only_what_they_need_and_equal_the_reference(ties, monkeypatch):
    """Representatives only of clusters of two or more, attach only over the candidates'
    clusters: the same answers as before, from the matrix or from Descriptors fetched by row,
    with small chunks too; and the Descriptors are read for those rows only."""
    for seed in range(3):
        x, eu, ev, _, _ = _problem(seed, 300, 60, 6, ties)
        labels, _ = linkage.agglomerate(x, eu, ev, np.quantile(np.linalg.norm(x[eu] - x[ev], axis=1), 0.5))
        want = ref.representatives(x, labels)
        size = np.bincount(labels, minlength=len(x))
        assert (size == 1).sum() > 5 and (size > 2).sum() > 5, "lone faces and clusters both"
        rng = np.random.default_rng(seed)
        q = x[rng.choice(len(x), 40)] + rng.standard_normal((40, 128)).astype(np.float32) * 0.01
        cand = np.argsort(((q[:, None] - x[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :8]
        cand[rng.random(cand.shape) < 0.1] = -1
        blocked = rng.random(cand.shape) < 0.2
        threshold = float(np.quantile(np.linalg.norm(x[eu] - x[ev], axis=1), 0.7))
        attached = ref.attach(x, labels, q, cand, threshold, blocked, 0.04)
        assert (attached[0] >= 0).sum() > 3 and (attached[0] < 0).sum() > 3
        for chunk in (linkage.CHUNK, 7):
            monkeypatch.setattr(linkage, "CHUNK", chunk)
            fetched: list[int] = []
            for xx in (x, _held_elsewhere(x, fetched)):
                got = linkage.representatives(xx, labels)
                assert all(np.array_equal(g, w) for g, w in zip(got, want))
                got = linkage.attach(xx, labels, q, cand, threshold, blocked, 0.04)
                assert np.array_equal(got[0], attached[0]) and np.array_equal(got[1], attached[1])
            in_multi = int((size[labels] > 1).sum())
            ok = (cand >= 0) & ~blocked
            in_cand = int(np.isin(labels, labels[cand[ok]]).sum())
            # representatives and attach read each row they need once
            assert sum(fetched) == in_multi + in_cand < 2 * len(x)
        with monkeypatch.context() as m:      # faces attached a few at a time: the same answers
            m.setattr(linkage, "ATTACH_ROWS", 7)
            got = linkage.attach(_held_elsewhere(x, []), labels, q, cand, threshold, blocked, 0.04)
        assert np.array_equal(got[0], attached[0]) and np.array_equal(got[1], attached[1])


def test_descriptors_read_like_the_matrix():
    x = np.random.default_rng(0).standard_normal((50, 128)).astype(np.float32)
    d = Descriptors(len(x), lambda r: x[r], stream=lambda: (x[i:i + 16] for i in range(0, 50, 16)))
    assert d.shape == (50, 128) and len(d) == 50
    assert np.array_equal(d[3:9], x[3:9]) and np.array_equal(d[np.array([7, -1, 7])], x[[7, -1, 7]])
    assert np.array_equal(d[4], x[4]) and np.array_equal(d[[1, 2]], x[[1, 2]]) and d[:0].shape == (0, 128)
    assert np.array_equal(np.concatenate(list(d.chunks())), x)
    t = d.take(np.array([5, 2, 9])).map(lambda v: v * 2)
    assert len(t) == 3 and np.array_equal(t[1:], x[[2, 9]] * 2)
    assert np.array_equal(np.concatenate(list(t.chunks())), x[[5, 2, 9]] * 2)
    from facejob.reduce import saved

    assert saved.digest(d) == saved.digest(x) and saved.digest(t) == saved.digest(x[[5, 2, 9]] * 2)
    with pytest.raises(IndexError):
        d[np.array([50])]


@pytest.mark.parametrize("seed", range(4))
def test_attaching_low_quality_faces_by_sorted_keys_equals_the_python_sets(seed):
    """clustering._attach_rest (photo and cannot-link checks as sorted int64 keys, one face per
    photo and cluster by np.unique) gives the labels and count of the reference's Python sets:
    photos of up to three faces, curator cannot-links, faces that lose to a nearer one of their photo."""
    import pyarrow as pa

    from facejob.reduce import corrections as corr
    from facejob.reduce.clustering import _attach_rest
    from facejob.reduce.embeddings import Faces

    x, eu, ev, _, _ = _problem(seed, 400, 50, 6, False)
    rng = np.random.default_rng(seed)
    n = len(x)
    photo = np.sort(rng.integers(0, n * 2 // 3, n))          # many photos of two or three faces
    ids = [f"f{i}" for i in range(n)]
    faces = Faces(pa.table({"face_id": ids, "uri": [f"p{p}.jpg" for p in photo]}), x)
    seed_rows = np.sort(rng.choice(n, n * 3 // 4, replace=False))
    rest = np.setdiff1d(np.arange(n), seed_rows)
    keep = np.isin(eu, seed_rows) & np.isin(ev, seed_rows)
    at = np.full(n, -1)
    at[seed_rows] = np.arange(len(seed_rows))
    threshold = float(np.quantile(np.linalg.norm(x[eu] - x[ev], axis=1), 0.7))
    gc = linkage.GraphClusterer(threshold, 0.04).fit(x[seed_rows], (at[eu[keep]], at[ev[keep]]))

    def nearest(v, m, ef):
        return np.argsort(((v[:, None] - x[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :m]

    # "not this person": a low-quality face and the nearest seed it would join (and some at random)
    near = nearest(x[rest], n, 0)
    near_seed = near[np.arange(len(rest)), np.argmax(np.isin(near, seed_rows), axis=1)]
    pairs = [*zip(rest[::3], near_seed[::3]), *zip(rng.choice(rest, 20), rng.choice(seed_rows, 20))]
    applied = corr.Applied(cannot=[(ids[a], ids[b]) for a, b in pairs])

    for app in (None, applied):
        got, want = np.arange(n), np.arange(n)
        got[seed_rows] = want[seed_rows] = seed_rows[gc.labels_]
        not_same = np.empty((0, 2), np.int64) if app is None else corr.rows_of(faces.face_ids, app.cannot)
        joined = _attach_rest(nearest, faces, x, got, rest, seed_rows, np.append(at, -1), 6, not_same, gc,
                              corr.photo_codes(faces.meta.column("uri")))
        assert joined == ref.attach_rest(nearest, faces, x, want, rest, seed_rows, 6, app, gc) > 3
        assert np.array_equal(got, want)
        assert joined == (got[rest] != rest).sum() and (got[rest] == rest).sum() > 3
