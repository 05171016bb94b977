"""The nightly reduce: a rerun reuses what did not change and still equals a reduce from scratch;
SVM predictions in batches equal the one-piece ones."""
from __future__ import annotations

import numpy as np
import pytest

from facejob.config import LabelParams
from facejob.reduce import svm


def _one_piece(m: svm.Model, x: np.ndarray, forbidden: dict[int, set[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Model.predict as it was: the whole rows x people score matrix at once."""
    s = x @ m.coef.T + m.intercept
    for r, names in forbidden.items():
        s[r, np.isin(m.classes, list(names))] = -np.inf
    best = s.argmax(1)
    top = s[np.arange(len(s)), best]
    p = np.where(np.isfinite(top), 1 / (1 + np.exp(-np.clip(m.platt[0] * np.where(np.isfinite(top), top, 0)
                                                            + m.platt[1], -50, 50))), 0.0)
    named = p >= m.params.threshold
    return np.where(named, m.classes.astype(object)[best], svm.UNKNOWN), np.where(named, p, 1 - p).astype(np.float32)


@pytest.mark.parametrize("n", [0, 5, svm.PREDICT_ROWS, 2 * svm.PREDICT_ROWS + 17])
def test_batched_predictions_equal_the_one_piece_ones(n):
    rng = np.random.default_rng(n)
    people = 40
    m = svm.Model(np.array([f"p{i}" for i in range(people)]), rng.standard_normal((people, 128)).astype(np.float32),
                  rng.standard_normal(people).astype(np.float32), (1.5, -4.0), LabelParams(threshold=0.6), {})
    x = rng.standard_normal((n, 128)).astype(np.float32) * 0.2
    # forbidden names on rows in several batches, the last row of a batch and the first of the next among them
    forbidden = {r: {f"p{r % people}", "p3"} for r in {0, svm.PREDICT_ROWS - 1, svm.PREDICT_ROWS, n - 1} if 0 <= r < n}
    label, prob = m.predict(x, forbidden)
    want_label, want_prob = _one_piece(m, x, forbidden)
    assert label.tolist() == want_label.tolist()
    np.testing.assert_allclose(prob, want_prob, rtol=1e-6, atol=1e-7)
    if n > 10:
        assert 0 < sum(v != svm.UNKNOWN for v in label.tolist()) < n     # both outcomes occur
    # With a transform (the metric head), applied batch by batch, the same as transforming first.
    shift = rng.standard_normal(128).astype(np.float32) * 0.1
    label_t, prob_t = m.predict(x, forbidden, transform=lambda b: b + shift)
    want_label, want_prob = _one_piece(m, x + shift, forbidden)
    assert label_t.tolist() == want_label.tolist()
    np.testing.assert_allclose(prob_t, want_prob, rtol=1e-5, atol=1e-6)  # float32 sums in other batch shapes


# ------------------------------------------------------------------ a rerun equals a fresh reduce

def _copies(src, dst_dir):
    """A copy of `src` re-encoded at quality 60 and one resized to 70 %: near-duplicates."""
    from PIL import Image

    img = Image.open(src).convert("RGB")
    dst_dir.mkdir(parents=True, exist_ok=True)
    img.save(dst_dir / "q60.jpg", quality=60)
    img.resize((int(img.width * 0.7), int(img.height * 0.7)), Image.LANCZOS).save(dst_dir / "small.jpg", quality=90)
    return sorted(dst_dir.iterdir())


def _outputs(out):
    """What a reduce leaves in OUT, in terms that do not depend on history: the cluster partition,
    the duplicate groups (members, kind, kept copy, reasons) and every face's prediction."""
    import pyarrow.parquet as pq

    cl = {}
    for r in pq.read_table(out / "clusters.parquet").to_pylist():
        cl.setdefault(r["cluster_id"], set()).add(r["face_id"])
    dup = {}
    for r in pq.read_table(out / "duplicates.parquet").to_pylist():
        dup.setdefault(r["group"], set()).add((r["uri"], r["kind"], r["keep"], r["reason"]))
    pred = {r["face_id"]: (r["label"], round(r["probability"], 5), r["labelled"])
            for r in pq.read_table(out / "predictions.parquet").to_pylist()}
    return {frozenset(c) for c in cl.values()}, {frozenset(g) for g in dup.values()}, pred


def test_a_rerun_after_photos_came_and_went_equals_a_fresh_reduce(tmp_path, data_dir):
    """Reduce, then remove a shard of photos and add new ones (with near copies of old photos),
    reduce again: the clusters, duplicates and names equal a reduce from scratch of the same
    faces. A third reduce with nothing changed searches and decodes nothing and changes nothing."""
    import shutil

    from facejob.reduce import reduce
    from tests.test_reduce_data import make_out, person, photos

    paths = photos(data_dir)
    old_copies = _copies(paths[3], tmp_path / "c0")              # copies indexed with their original
    new_copies = _copies(paths[10], tmp_path / "c1") + _copies(paths[-2], tmp_path / "c2")
    a = tmp_path / "a"
    make_out(a, paths[:60] + old_copies, shard_size=62)          # shard t0000
    make_out(a, paths[60:80], first_shard=1)                     # shard t0001: removed below
    by: dict[str, list[str]] = {}
    for p in paths[:60]:
        if "dlib_johns" in str(p):
            by.setdefault(person(str(p)), []).append(str(p))
    csv = tmp_path / "labels.csv"
    csv.write_text("name,uri\n" + "".join(f"{n},{u}\n" for n, us in by.items() if len(us) >= 2 for u in us[:2]))
    first = reduce(str(a), labels=str(csv))
    assert first.dedup.queried == first.faces and first.label is not None

    for part in ("faces", "images"):
        (a / part / "part-t0001.parquet").unlink()
    make_out(a, paths[80:] + new_copies, first_shard=2)
    b = tmp_path / "b"                                           # the same inputs, no reducer outputs
    for rel in ("faces", "images"):
        shutil.copytree(a / rel, b / rel)
    for rel in ("run.json", "model.json", "labels/labels.parquet"):
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(a / rel, b / rel)

    second = reduce(str(a))
    fresh = reduce(str(b))
    assert 0 < second.dedup.queried < second.faces == fresh.faces == fresh.dedup.queried
    got, want = _outputs(a), _outputs(b)
    assert got == want
    clusters, dups, _ = got
    near = [{u for u, kind, *_ in g} for g in dups if any(kind == "near" for _, kind, _, _ in g)]
    # an old photo's copies; new copies of an old photo (found from the new faces) and of a new one
    for original, copies in ((paths[3], old_copies), (paths[10], new_copies[:2]), (paths[-2], new_copies[2:])):
        assert any({str(original), *map(str, copies)} <= g for g in near), original

    stamp = {p: p.stat().st_mtime_ns for p in (a / "clusters.parquet", a / "predictions.parquet", a / "index/faces.hnsw")}
    third = reduce(str(a))
    assert third.dedup.queried == 0 and third.dedup.decoded == 0
    assert third.cluster.clusters == second.cluster.clusters and third.label.named == second.label.named
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp          # kept, not rewritten
    assert _outputs(a) == got


# ------------------------------------------------------------------ search reads only its rows

def test_rows_by_key_reads_the_groups_of_its_keys_only(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facejob.io.storage import LocalStore
    from facejob.reduce import saved

    rng = np.random.default_rng(0)
    ids = sorted({f"{x:016x}" for x in rng.integers(0, 2 ** 62, 50_000)})
    t = pa.table({"face_id": ids, "cluster_id": np.arange(len(ids))})
    store = LocalStore(tmp_path)
    saved.write(store, "c.parquet", t.take(rng.permutation(len(ids))).sort_by("face_id"), "k", saved.LOOKUP_ROWS)
    f = pq.ParquetFile(tmp_path / "c.parquet")
    assert f.metadata.num_row_groups == -(-len(ids) // saved.LOOKUP_ROWS) > 5
    want = [ids[3], ids[20_000], ids[-1], "not-there"]
    assert saved.row_groups_for(f, "face_id", sorted(want)) == [0, 20_000 // saved.LOOKUP_ROWS, f.metadata.num_row_groups - 1]
    got = saved.rows_by_key(store, "c.parquet", "face_id", want, ["cluster_id"]).to_pylist()
    assert sorted((r["face_id"], r["cluster_id"]) for r in got) == [(ids[i], i) for i in (3, 20_000, len(ids) - 1)]
    # A file in any order (an older output) still gives the right rows, from more groups.
    pq.write_table(t.take(rng.permutation(len(ids))), tmp_path / "u.parquet", row_group_size=saved.LOOKUP_ROWS)
    got = saved.rows_by_key(store, "u.parquet", "face_id", want, ["cluster_id"]).to_pylist()
    assert sorted((r["face_id"], r["cluster_id"]) for r in got) == [(ids[i], i) for i in (3, 20_000, len(ids) - 1)]
    assert saved.stamped(store, "c.parquet", "k") and not saved.stamped(store, "c.parquet", "other")
    assert saved.read(store, "c.parquet", "other") is None and saved.read(store, "c.parquet", "k").num_rows == len(ids)


# ------------------------------------------------------------------ saved work after a crash

def test_saved_work_left_by_a_crash_is_not_trusted(tmp_path):
    """A clusters.parquet of another run (a crash between it and clusters.json) and a cut
    dedup state are recomputed, not used; saved work of the same inputs is used as it is."""
    import pyarrow.parquet as pq

    from bench.reduce_scale import write_archive
    from facejob.reduce import cluster, dedup
    from facejob.reduce.saved import KEY

    out = tmp_path / "out"
    write_archive(out, 400, 40)
    cluster(str(out))
    want = pq.read_table(out / "clusters.parquet")
    mtime = (out / "clusters.parquet").stat().st_mtime_ns
    assert cluster(str(out)).clusters == len(set(want.column("cluster_id").to_pylist()))
    assert (out / "clusters.parquet").stat().st_mtime_ns == mtime         # same inputs: kept
    # What a crash after writing another run's clusters.parquet leaves: ids moved, another stamp.
    other = want.set_column(1, "cluster_id", pa_array(np.roll(want.column("cluster_id").to_numpy(), 1)))
    pq.write_table(other.replace_schema_metadata({KEY: b"another run"}), out / "clusters.parquet")
    cluster(str(out))

    def partition(t):
        by = {}
        for f, c in zip(t.column("face_id").to_pylist(), t.column("cluster_id").to_pylist()):
            by.setdefault(c, set()).add(f)
        return {frozenset(v) for v in by.values()}
    assert partition(other) != partition(want)
    assert partition(pq.read_table(out / "clusters.parquet")) == partition(want)     # clustered again

    s = dedup(str(out))
    assert s.queried == 400 and dedup(str(out)).queried == 0
    state = out / "dedup" / "near_faces.parquet"
    state.write_bytes(state.read_bytes()[:-100])                            # cut short
    assert dedup(str(out)).queried == 400


def pa_array(x):
    import pyarrow as pa

    return pa.array(x)
