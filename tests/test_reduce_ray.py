"""The reducer on Ray (facejob/reduce/ray_reduce.py) and its pure parts (facejob/reduce/partition.py).

The split clustering must give exactly `linkage.agglomerate`'s labels; the sharded search must
find what exact search finds; SVMs and predictions on Ray equal the single-process ones. The
real two-node cluster's reduce (same clusters, labels, duplicates and search results, work on
both nodes) is in test_multinode.py, on that module's cluster.
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
    eu, ev = canonical_edges(i[keep], j.reshape(-1)[keep], len(x))
    return eu, ev


def test_arrow_hands_freed_memory_back_at_once_in_facejob_and_its_ray_workers():
    """`import facejob` sets Arrow's allocator to return freed pages at once (mimalloc's purge
    delay 0) before pyarrow loads, and hands that to Ray workers; a value the user set is kept."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; import facejob; assert 'pyarrow' not in sys.modules; "
            "from facejob.indexing.pool import worker_env; "
            "print(os.environ['MIMALLOC_PURGE_DELAY'], worker_env()['MIMALLOC_PURGE_DELAY'])")
    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.split() == ["0", "0"]
    got = subprocess.run([sys.executable, "-c", code], env={**env, "MIMALLOC_PURGE_DELAY": "250"},
                         capture_output=True, text=True, check=True)
    assert got.stdout.split() == ["250", "250"]


@pytest.mark.parametrize("seed, link_weight", [(0, 0.0), (1, 0.0), (2, 0.0), (0, 0.2), (1, 0.2)])
def test_split_clustering_is_exactly_the_single_process_one(seed, link_weight):
    x = _blobs(600, 60, seed)
    eu, ev = _knn_edges(x, 6, 0.9)
    rng = np.random.default_rng(seed)
    must = rng.integers(0, len(x), (8, 2))
    cannot = rng.integers(0, len(x), (40, 2))
    want, rounds = agglomerate(x, eu, ev, 0.45, must_link=must, cannot_link=cannot, pair_margin=0.04,
                               link_weight=link_weight)
    comp = pt.components(len(x), eu, ev, must)
    assert len(np.unique(comp)) > 20          # many parts: the split is really exercised
    for groups in (1, 3, 50):
        got, r = pt.split_agglomerate(x, eu, ev, 0.45, must_link=must, cannot_link=cannot, pair_margin=0.04,
                                      link_weight=link_weight, groups=groups)
        np.testing.assert_array_equal(got, want)
        assert 1 <= r <= rounds
    assert len(np.unique(want)) < len(x) / 2   # and it did cluster


def test_components_name_each_part_by_its_smallest_row():
    """partition.components (scipy's sparse connected components) gives what the label-propagation
    of linkage._components gives: on random graphs with repeated edges, int32 or int64 ends and
    must-link pairs; a row without edges is its own component."""
    from facejob.reduce.linkage import _components

    rng = np.random.default_rng(7)
    for t in range(60):
        n, m = int(rng.integers(1, 300)), int(rng.integers(0, 400))
        eu, ev = rng.integers(0, n, m), rng.integers(0, n, m)
        eu, ev = np.concatenate([eu, np.repeat(eu[:2], 300)]), np.concatenate([ev, np.repeat(ev[:2], 300)])
        if t % 2:
            eu, ev = eu.astype(np.int32), ev.astype(np.int32)
        must = rng.integers(0, n, (int(rng.integers(0, 5)), 2))
        want = _components(np.concatenate([np.stack([eu, ev], 1).astype(np.int64), must]), n)
        np.testing.assert_array_equal(pt.components(n, eu, ev, must), want)
    assert np.array_equal(pt.components(4, np.array([2]), np.array([3])), [0, 1, 2, 2])


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


def test_a_shard_inserts_in_chunks_the_graph_it_would_in_one_go(tmp_path, monkeypatch):
    """A shard seals its graph SEAL_ROWS descriptors at a time, letting each received batch go
    once its rows are in (no second copy of them all): one thread inserts them one by one in row
    order either way, so the saved graph is byte for byte the one a single add_items makes,
    whatever rows the batches hold and in whatever order they came, less the skipped rows."""
    from facejob.reduce import ray_reduce as rr
    from facejob.reduce.hnsw import IndexParams

    x = _blobs(700, 30, 4)
    shuffled = np.random.default_rng(3).permutation(700)
    scattered = [shuffled[part] for part in np.array_split(np.arange(700), 5)[::-1]]
    # As the part tasks send them: runs of rows, the parts' batches interleaved.
    runs = [r for pair in zip(np.array_split(np.arange(350), 5), np.array_split(np.arange(350, 700), 5)) for r in pair]
    saved = []
    monkeypatch.setattr(rr, "_here", lambda: None)    # where it ran: asking Ray would start one here
    for seal_rows, batches in ((10_000, scattered), (7, scattered), (7, runs), (64, runs)):
        monkeypatch.setattr(rr, "SEAL_ROWS", seal_rows)
        shard = rr._Shard.__ray_actor_class__(IndexParams(M=8, ef_construction=20))
        for rows in batches:
            shard.add(x[rows], rows, rows % 2 == 0)
        shard.seal(np.array([5, 77]))
        assert shard.live == 698 and np.array_equal(shard.rows, np.setdiff1d(np.arange(700), [5, 77]))
        assert np.array_equal(shard.home, np.setdiff1d(np.arange(0, 700, 2), [5, 77]))
        got, vec = shard.vectors(np.arange(0, 700, 10))
        assert np.array_equal(got, np.arange(0, 700, 10)) and np.array_equal(vec, x[got])
        shard.index.save_index(str(tmp_path / f"{len(saved)}.hnsw"))
        saved.append((tmp_path / f"{len(saved)}.hnsw").read_bytes())
    assert all(s == saved[0] for s in saved[1:])


def test_a_shard_lets_each_batch_go_once_its_rows_are_in_the_graph(monkeypatch):
    """While a shard seals, the descriptors received shrink as the graph grows: before each chunk
    is inserted, only the batches with rows still to insert are held; each big batch lies in a
    memory mapping of its own (so its pages go back to the OS with it)."""
    import mmap
    import weakref

    import hnswlib

    from facejob.reduce import ray_reduce as rr
    from facejob.reduce.hnsw import IndexParams

    x = _blobs(700, 30, 4)
    held = []

    class Watched(hnswlib.Index):
        def add_items(self, data, ids, num_threads=-1):
            held.append(sum(r() is not None for r in refs))
            super().add_items(data, ids, num_threads=num_threads)

    monkeypatch.setattr(rr, "_here", lambda: None)
    monkeypatch.setattr(rr, "SEAL_ROWS", 70)
    monkeypatch.setattr(rr, "OWN_PAGES_BYTES", 0)      # every batch in a mapping of its own
    monkeypatch.setattr(rr.hnswlib, "Index", Watched)
    shard = rr._Shard.__ray_actor_class__(IndexParams(M=8, ef_construction=20))
    for rows in np.array_split(np.arange(700), 10)[::-1]:
        shard.add(x[rows], rows, rows % 2 == 0)
    refs = [weakref.ref(b[0]) for b in shard.batches]

    def owner(a):
        while isinstance(a, np.ndarray):
            a = a.base
        return a.obj if isinstance(a, memoryview) else a

    assert all(isinstance(owner(b[0]), mmap.mmap) for b in shard.batches)
    shard.seal(np.empty(0, np.int64))
    assert held == list(range(10, 0, -1))
    assert all(r() is None for r in refs)
    got, vec = shard.vectors(np.arange(700))
    assert np.array_equal(got, np.arange(0, 700, 2)) and np.array_equal(vec, x[got])


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


def test_svms_and_predictions_on_ray_equal_the_single_process_ones(ray_local, monkeypatch):
    """Per-person SVMs trained in parallel Ray tasks (chunks of people) on the session's Ray, and
    predictions made in Ray tasks: the same models (to float tolerance) and the same labels as in
    one process."""
    from functools import partial

    from facejob.reduce import ray_reduce as rr
    from facejob.reduce.svm import IdentityClassifier

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 128)).astype(np.float32) * 0.08
    who = rng.integers(0, 40, 2000)
    x = (centres[who] + rng.standard_normal((2000, 128)).astype(np.float32) * 0.03).astype(np.float32)
    rows = np.concatenate([np.flatnonzero(who == p)[:3] for p in range(12)])     # 12 people named, 3 faces each
    names = [f"p{who[r]}" for r in rows]
    forbidden = {int(r): {f"p{who[r]}"} for r in np.flatnonzero(who < 12)[:50]}   # "not this person"
    transform = partial(np.multiply, np.float32(1.5))    # stands in for the metric head, applied per batch

    one = IdentityClassifier(pool_size=800).fit_archive(x, rows, x[rows], names, clusters=who)
    want = one.predict(x, forbidden, transform)
    monkeypatch.setattr(rr, "PREDICT_ROWS", 150)         # 14 prediction tasks, at most 4 in flight
    fits = []
    with rr.RayReducer(workers=2) as eng:
        def run(*a):
            fits.append(a[2])
            return eng.fit_svms(*a)
        par = IdentityClassifier(pool_size=800).fit_archive(x, rows, x[rows], names, clusters=who, run=run)
        got = eng.predict(par, x, forbidden, transform)
        tasks = sum(eng.work.values())
    assert fits and all(n == 12 for n in fits)          # every training went through the tasks
    assert tasks == len(fits) * rr.FIT_TASKS * 2 + 14    # each in chunks of people; the prediction tasks
    assert (par.classes_ == one.classes_).all()
    np.testing.assert_allclose(par.model_.coef, one.model_.coef, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(par.model_.intercept, one.model_.intercept, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(par.model_.platt, one.model_.platt, rtol=1e-6)
    assert (par.pool_ == one.pool_).all() and (par.extra_ == one.extra_).all()
    assert (got[0] == want[0]).all()
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    assert len(set(want[0]) - {"unknown"}) == 12 and (want[0] == "unknown").any()    # named people, not everyone
    assert all(want[0][r] not in ns for r, ns in forbidden.items())


def test_streamed_shards_answer_and_cluster_like_one_process(ray_local, tmp_path):
    """The shards are filled by part tasks straight from OUT/faces/ (no descriptor passes through
    the driver), also when a part was written twice under another name: the reducer reads the
    same faces as the single-process reader, the shards answer with rows of those faces (each
    face once, its repeat in no shard) and the exact nearest ones at this size, and the cluster
    step over them writes the single-process clusters."""
    import shutil
    import tempfile
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.reduce_scale import write_archive
    from facejob.io.storage import LocalStore
    from facejob.reduce import ray_reduce as rr
    from facejob.reduce import saved
    from facejob.reduce.clustering import cluster
    from facejob.reduce.embeddings import ALL_COLUMNS, Descriptors, read_faces
    from facejob.reduce.svm import IdentityClassifier

    one, par = tmp_path / "one", tmp_path / "ray"
    who = write_archive(one, 1200, 80, part_rows=150)
    for d in ("faces", "images"):     # part 3 again, committed under another name: its faces are repeats
        shutil.copy(one / d / "part-0003.parquet", one / d / "part-0003x.parquet")
    shutil.copytree(one, par)
    faces = read_faces(LocalStore(one), ALL_COLUMNS)
    assert len(faces) == 1200 and len(read_faces(LocalStore(one), drop_repeated=False)) == 1350
    cluster(LocalStore(one), faces=faces)

    with rr.RayReducer(workers=2, shards=3) as eng:
        got = eng.read_faces(LocalStore(par), ALL_COLUMNS)
        assert got.meta.equals(faces.meta) and np.array_equal(got.embeddings, faces.embeddings)
        eng.build()
        asked = np.array([1199, 0, 17, 17, 640])      # any order, repeats allowed
        # Before the shards start, a few rows are read from the parts (the repeated part skipped):
        # a rerun that asks only those never builds the shards.
        assert np.array_equal(eng.vectors(asked), faces.embeddings[asked]) and not eng._actors
        q = np.arange(0, 1200, 7)
        rows, dist = eng.query(faces.embeddings[q], 10)
        assert eng._actors and np.array_equal(eng.vectors(asked), faces.embeddings[asked])
        # Without descriptors on the driver: read by row from the shards, streamed again from
        # the parts for a digest (repeats skipped), as the whole matrix.
        lazy = eng.read_faces(LocalStore(par), ALL_COLUMNS, embeddings=False)
        assert isinstance(lazy.embeddings, Descriptors) and lazy.meta.equals(faces.meta)
        assert saved.digest(lazy.embeddings) == saved.digest(faces.embeddings)
        assert np.array_equal(lazy.embeddings[asked], faces.embeddings[asked])
        # Columns of a few face rows read again from the parts (the rows after the repeated
        # part are read rows further on): those rows only, in the order asked.
        few = eng.columns(LocalStore(par), ["uri", "landmarks"], asked)
        assert few.equals(faces.meta.select(["uri", "landmarks"]).take(asked))
        streamed = pa.Table.from_batches(list(eng.batches(LocalStore(par), ["face_id", "landmarks"])))
        assert streamed.equals(faces.meta.select(["face_id", "landmarks"]))     # the repeats left out
        # Names for them: the prediction tasks fetch their rows from the shards (the driver sends
        # row numbers, reads none), and name every face as one process does from the matrix.
        named = np.concatenate([np.flatnonzero(who == p)[:3] for p in range(10)])
        clf = IdentityClassifier(pool_size=300).fit_archive(
            faces.embeddings, named, faces.embeddings[named], [f"p{who[r]}" for r in named], clusters=None)
        want = clf.predict(faces.embeddings, {1: {f"p{who[1]}"}})
        fetched: list[int] = []
        fetch = lazy.embeddings._fetch
        lazy.embeddings._fetch = lambda r: fetched.append(len(r)) or fetch(r)
        got_names = eng.predict(clf, lazy.embeddings, {1: {f"p{who[1]}"}})
        assert not fetched and (got_names[0] == want[0]).all() and len(set(want[0])) > 5
        np.testing.assert_allclose(got_names[1], want[1], rtol=1e-5)
        eng.spill_rows = 100      # the large part's task maps its descriptors from a file (removed after)
        s = cluster(LocalStore(par), faces=got, engine=eng)
        shards, tasks, part_rows = eng.shard_count, sum(eng.work.values()), eng.part_rows
        own = list(eng.process_own_peaks.values())
    assert max(part_rows) > 100 and not list(Path(tempfile.gettempdir()).glob("facejob-merge-*"))
    assert own and all(0 < o < 2 for o in own)     # the clustering tasks' own memory was watched
    assert shards == 3 and tasks >= 2 * 9 + 3      # a sample and a route task per part; the shards built
    assert rows.shape == (len(q), 10) and (rows >= 0).all() and (rows < 1200).all()
    assert all(len(set(r)) == 10 for r in rows.tolist())
    d = np.linalg.norm(faces.embeddings[q][:, None] - faces.embeddings[None], axis=2)
    exact = np.argsort(d, 1)[:, :10]
    assert (rows == exact).all()
    np.testing.assert_allclose(dist, np.take_along_axis(d, exact, 1), rtol=1e-4, atol=1e-5)
    a, b = pq.read_table(one / "clusters.parquet"), pq.read_table(par / "clusters.parquet")
    assert a.num_rows == 1200 and a.equals(b)
    assert s.clusters < 1200 / 2          # it did cluster


def test_reduce_on_ray_writes_a_sharded_index_that_searches_and_dedups_like_one_process(ray_local, tmp_path):
    """`reduce` with an engine writes OUT/index/ from its shard actors (sharded layout: no process
    holds every face); searching it in one process loads only the shards the query visits and
    finds what the single-process index finds; dedup through the engine (with or without the
    descriptors on the driver) writes the single-process outputs. A rerun over the same faces
    keeps the index; the single-process reduce replaces it by its own layout."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.reduce_scale import write_archive
    from facejob.io.storage import LocalStore
    from facejob.reduce import ray_reduce as rr
    from facejob.reduce import search_index as sx
    from facejob.reduce import shard_index as si
    from facejob.reduce import deduping as dp
    from facejob.reduce import duplicates as dd
    from facejob.reduce.deduping import dedup
    from facejob.reduce.embeddings import ALL_COLUMNS, read_faces
    from facejob.reduce.hnsw import IndexParams
    from facejob.reduce.pipeline import reduce

    one, par = tmp_path / "one", tmp_path / "ray"
    write_archive(one, 600, 40, part_rows=100, landmark_noise=0)    # one shape: near faces are candidates
    for d in ("faces", "images"):     # part 3's photos again under other paths: byte-identical copies
        t = pq.read_table(one / d / "part-0003.parquet")
        for c in ("uri", "face_id") if d == "faces" else ("uri",):
            t = t.set_column(t.schema.get_field_index(c), c, pa.array([v + "x" for v in t.column(c).to_pylist()]))
        if d == "faces":    # a hair apart (a copy at the very same point would tie with its original)
            emb = t.column("embedding").combine_chunks()
            x = emb.flatten().to_numpy() + np.float32(1e-3)
            t = t.set_column(t.schema.get_field_index("embedding"), "embedding",
                             pa.FixedSizeListArray.from_arrays(pa.array(x), emb.type.list_size))
        pq.write_table(t, one / d / "part-0006x.parquet")
    shutil.copytree(one, par)
    reduce(str(one))
    with rr.RayReducer(workers=2, shards=4) as eng:
        reduce(str(par), engine=eng)
        meta = json.loads((par / "index/shards.json").read_text())
        for f in ("duplicates.parquet", "dedup/near_faces.parquet"):
            (par / f).unlink()
        faces = eng.read_faces(LocalStore(par), ALL_COLUMNS, embeddings=False)
        eng.build()
        dedup(str(par), faces=faces, engine=eng)       # the descriptors come from the shards
        reduce(str(par), engine=eng)                    # the same faces: the index is kept
        assert json.loads((par / "index/shards.json").read_text()) == meta

    files = {p.name for p in (par / "index").iterdir()}     # the last build's files, nothing else
    assert files == {"shards.json", *(f.split("/")[-1] for s in meta["shards"] for f in (s["hnsw"], s["ids"]))}
    assert len(meta["shards"]) == 4 and meta["count"] == 700 and meta["probe"] == rr.SHARD_PROBE
    assert sum(s["count"] for s in meta["shards"]) == 700 * rr.SHARD_REPLICAS
    for f in ("clusters.parquet", "duplicates.parquet"):
        a, b = pq.read_table(one / f), pq.read_table(par / f)
        assert a.num_rows > 0 and a.equals(b), f
    # The near faces dedup found through the shards are the exact ones at this size (the single
    # index's hnswlib search may miss one: it once missed a face itself, giving it 8 others).
    f1 = read_faces(LocalStore(one), ALL_COLUMNS)
    x = f1.embeddings.astype(np.float64)

    def exact(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        d = np.linalg.norm(x[rows][:, None] - x[None], axis=2)
        j = np.argsort(d, axis=1, kind="stable")[:, :k]
        return j, np.take_along_axis(d, j, 1)

    code = dd.content_codes(f1.meta.column("sha256"))[0]
    dp._near_faces(LocalStore(tmp_path / "exact"), exact, IndexParams(), f1.face_ids, code,
                   dp._shapes([f1.meta.column("landmarks")]))
    near = pq.read_table(par / "dedup/near_faces.parquet")
    assert near.equals(pq.read_table(tmp_path / "exact/dedup/near_faces.parquet"))
    assert sum(map(len, near.column("near").to_pylist())) > 100    # near faces were found, through the index

    ids = pq.read_table(one / "faces", columns=["face_id"]).column(0).to_pylist()
    for fid in ids[::53]:
        a, b = sx.search_face(str(one), fid, k=5), sx.search_face(str(par), fid, k=5)
        assert len(a.matches) == 5 and a.box == b.box
        assert [(m.face_id, m.uri, m.box, m.cluster_id) for m in a.matches] == \
               [(m.face_id, m.uri, m.box, m.cluster_id) for m in b.matches]
        np.testing.assert_allclose([m.distance for m in a.matches], [m.distance for m in b.matches], rtol=1e-5)
    single, sharded = sx._open(LocalStore(one)), sx._open(LocalStore(par))
    assert isinstance(sharded, si.ShardedIndex)
    vec = single.vector(ids[5])[0]
    want, got = single.nearest(vec[None], 10, True), sharded.nearest(vec[None], 10, True)
    assert 0 < len(sharded.loaded) <= meta["probe"] < 4        # only the shards the query visits
    assert got[0].equals(want[0]) and np.array_equal(got[2], want[2])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    assert sx.search_face(str(par), ids[5], k=3).matches[0].face_id == want[0].column("face_id")[1].as_py()

    (par / meta["shards"][2]["ids"]).unlink()      # a lost shard file: the rerun rebuilds, never trusts it
    assert not si.unchanged(LocalStore(par), meta["inputs"])
    reduce(str(par))                                # the single-process layout replaces the sharded one
    assert sorted(p.name for p in (par / "index").iterdir()) == ["faces.hnsw", "ids.parquet", "params.json"]
    assert sx.search_face(str(par), ids[5], k=3).matches[0].face_id == want[0].column("face_id")[1].as_py()
