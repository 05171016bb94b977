"""The learned metric head (facejob.reduce.metric) and `facejob eval` (LFW 10-fold protocol)."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from facejob.io.storage import LocalStore
from tests.test_reduce_data import make_out, person, photos


@pytest.fixture(scope="module")
def archive(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("metric") / "out"
    make_out(out, photos(data_dir))
    faces = pq.read_table(out / "faces", columns=["face_id", "uri", "embedding"]).to_pylist()
    return out, faces


def test_head_learns_the_named_people_and_stays_in_dlib_units(archive):
    from facejob.reduce import metric

    _, faces = archive
    x = np.array([f["embedding"] for f in faces], np.float32)
    names, people = np.unique([person(f["uri"]) for f in faces], return_inverse=True)
    head = metric.train(x, people, metric.MetricParams(epochs=60))
    y = head.apply(x)
    assert np.abs(head.arrays["A"]).max() > 1e-3                 # it learned something
    assert metric.pair_accuracy(y, people) >= metric.pair_accuracy(x, people)
    same = people[:, None] == people[None, :]
    d_plain, d_learned = (np.linalg.norm(v[:, None] - v[None], axis=2) for v in (x, y))
    # dlib's units: mean different-person distance stays near where it was (0.6 means the same)
    assert 0.7 < d_learned[~same].mean() / d_plain[~same].mean() < 1.4
    assert d_learned[same & ~np.eye(len(x), dtype=bool)].mean() < d_plain[same & ~np.eye(len(x), dtype=bool)].mean()


def test_no_head_without_enough_named_people(archive):
    from facejob.reduce import metric

    _, faces = archive
    x = np.array([f["embedding"] for f in faces[:20]], np.float32)
    head, check = metric.fit(x, np.full(len(x), -1), metric.MetricParams())
    assert head is None and not check["kept"]


def test_label_trains_keeps_and_reloads_a_head_safely(archive, tmp_path):
    """Labels of 13 people: `label` trains a head when it helps on held-out people (else it
    says so in labels/metric.json); a saved head loads without unpickling; `--metric plain`
    ignores it; an object array in the file is refused."""
    from facejob.contract.layout import METRIC_JSON, METRIC_NPZ
    from facejob.reduce import clustering, labelling, metric
    from facejob.reduce.errors import ReduceError

    src, faces = archive
    out = tmp_path / "out"
    shutil.copytree(src, out)
    clustering.cluster(str(out))
    by: dict[str, list[str]] = {}
    for f in faces:
        by.setdefault(person(f["uri"]), []).append(f["face_id"])
    csv = tmp_path / "labels.csv"
    csv.write_text("face_id,name\n" + "".join(f"{i},{n}\n" for n, ids in by.items() for i in ids[:4]))
    labelling.label(str(out), csv)
    store = LocalStore(out)
    meta = json.loads(store.read_bytes(METRIC_JSON))
    assert meta["check"]["val_people"] >= 2 and "fingerprint" in meta
    # Same labels again: the head is not retrained (same fingerprint), the file is untouched.
    stamp = (out / METRIC_JSON).stat().st_mtime_ns
    labelling.label(str(out))
    assert (out / METRIC_JSON).stat().st_mtime_ns == stamp
    head = metric.load(store)
    if meta["kind"] == "none":
        assert head is None and not store.exists(METRIC_NPZ)
        return
    assert meta["check"]["kept"] and meta["check"]["pairs_learned"] > meta["check"]["pairs_plain"]
    assert json.loads(store.read_bytes("labels/model.json"))["metric"] == "learned"
    labelling.label(str(out), metric="plain")
    assert json.loads(store.read_bytes("labels/model.json"))["metric"] == "plain"
    buf = io.BytesIO()
    np.savez(buf, A=np.array([object()], dtype=object), c=np.zeros(128, np.float32))
    store.write_bytes(METRIC_NPZ, buf.getvalue())
    with pytest.raises(ReduceError, match="cannot load the metric head"):
        metric.load(store)


def _lfw_subset(data_dir, tmp_path, n_same=10, n_diff=10):
    """The first pairs of View 1's pairsDevTest, their photos indexed (one photo left out)."""
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()
    k = int(lines[0])
    same, diff = lines[1:1 + n_same], lines[1 + k:1 + k + n_diff]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{n_same}\n" + "\n".join(same + diff) + "\n")
    from facejob.io.lfw_pairs import read_lfw_pairs

    root = data_dir / "lfw" / "images"
    rel = sorted({p for a, b, _ in read_lfw_pairs(pairs) for p in (a, b)})
    make_out(tmp_path / "out", [root / r for r in rel[1:]])
    return tmp_path / "out", pairs, root, rel[0]


def test_eval_scores_pairs_in_ten_folds(data_dir, tmp_path, capsys):
    from facejob.cli import main
    from facejob.reduce.evaluate import read_pairs

    out, pairs, root, left_out = _lfw_subset(data_dir, tmp_path)
    p = read_pairs(pairs)
    assert sorted(np.bincount(p.fold).tolist()) == [2] * 10 and p.same.sum() == 10
    assert main(["eval", str(out), "--pairs", str(pairs), "--images", str(root), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r) == {"plain", "pairs", "missing"} and r["pairs"] == 20
    missing = sum(left_out in (a, b) for a, b in zip(p.a, p.b))
    assert r["missing"] == missing >= 1
    assert 0.8 <= r["plain"]["accuracy"] <= 1 and r["plain"]["std"] >= 0
    assert main(["eval", str(out), "--pairs", str(pairs), "--images", str(root), "--learn-metric", "--json"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["plain"] == r["plain"] and 0.5 <= r2["learned"]["accuracy"] <= 1


def test_view2_pairs_file_is_ten_folds_of_300_and_300_with_the_photos_present(data_dir):
    """bench/data's official View 2 file: 10 identity-disjoint folds of 300 same + 300 different
    pairs, every photo in the shared LFW images."""
    from pathlib import Path

    from facejob.reduce.evaluate import read_pairs

    p = read_pairs(Path(__file__).resolve().parents[1] / "bench" / "data" / "lfw_view2_pairs.txt")
    assert len(p.same) == 6000 and np.bincount(p.fold).tolist() == [600] * 10
    assert np.bincount(p.fold[p.same]).tolist() == [300] * 10
    for k in range(10):    # each fold: its 300 same pairs, then its 300 different pairs
        assert p.same[p.fold == k].tolist() == [True] * 300 + [False] * 300
    people = [{x.split("/")[0] for i in np.flatnonzero(p.fold == k) for x in (p.a[i], p.b[i])} for k in range(10)]
    assert all(not (people[i] & people[j]) for i in range(10) for j in range(i + 1, 10))
    root = data_dir / "lfw" / "images"
    absent = [x for x in sorted(set(p.a) | set(p.b)) if not (root / x).is_file()]
    assert not absent, absent[:5]


def test_eval_bad_input_is_one_line(data_dir, tmp_path, capsys):
    from facejob.cli import main

    out, pairs, root, _ = _lfw_subset(data_dir, tmp_path, 2, 2)
    assert main(["eval", str(out), "--pairs", str(tmp_path / "nope.txt"), "--images", str(root)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"pairs file not found: {tmp_path / 'nope.txt'}")
    assert main(["eval", str(out), "--pairs", str(pairs), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no pair has a face" in err


def test_search_with_a_head_ranks_by_learned_distance(archive, tmp_path):
    """With a head, search's k nearest are the k nearest learned descriptors (here those are
    among the 4k plain candidates the index gives)."""
    from facejob.reduce import metric, search_index

    src, faces = archive
    out = tmp_path / "out"
    shutil.copytree(src, out)
    fi = search_index.index(str(out))
    rng = np.random.default_rng(0)
    head = metric.Head({"A": (rng.normal(0, 0.15, (128, 128))).astype(np.float32),
                        "c": np.zeros(128, np.float32)}, metric.MetricParams(), {})
    x = np.array([f["embedding"] for f in faces], np.float32)
    q = x[:3]
    nearest = search_index._Local(fi).nearest
    rows, d = search_index._query(nearest, q, 5, head)
    got = np.array(rows.column("face_id").to_pylist()).reshape(len(q), -1)
    y, yq = head.apply(x), head.apply(q)
    row = {f["face_id"]: i for i, f in enumerate(faces)}
    brute = np.linalg.norm(y[None] - yq[:, None], axis=2)
    for i in range(3):
        want = np.sort(brute[i])[:5]
        assert np.allclose(np.sort(d[i]), want, atol=1e-4)
        assert np.allclose(brute[i, [row[f] for f in got[i]]], d[i], atol=1e-4)
    plain_rows, _ = search_index._query(nearest, q, 5, None)
    assert plain_rows.column("face_id").to_pylist() != rows.column("face_id").to_pylist()     # the head changed the ranking
