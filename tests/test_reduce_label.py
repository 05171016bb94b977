"""Reducer tests: labels CSV / folder input, per-person SVMs, safe model files."""
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
    out = tmp_path_factory.mktemp("label") / "out"
    make_out(out, photos(data_dir))
    from facejob.reduce import cluster

    cluster(str(out))
    ids = pq.read_table(out / "faces").to_pylist()
    return out, ids


def _write(tmp_path, text: str):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return str(p)


def _copy_out(archive, tmp_path):
    out, ids = archive
    dst = tmp_path / "out"
    shutil.copytree(out, dst)
    return dst, ids


def test_labels_name_the_rest_and_strangers_stay_unknown(archive, tmp_path):
    """Three photos of each John are labelled (by uri). Their other photos must get their
    names; the TV cast (never labelled) must come out unknown."""
    from facejob.reduce import label

    out, ids = _copy_out(archive, tmp_path)
    johns = sorted((r for r in ids if "dlib_johns" in r["uri"]), key=lambda r: r["uri"])
    by: dict[str, list] = {}
    for r in johns:
        by.setdefault(person(r["uri"]), []).append(r)
    rows = [f"{name},{r['uri']}" for name, rs in by.items() for r in rs[:3]]
    s = label(str(out), _write(tmp_path, "name,uri\n" + "\n".join(rows) + "\n"))
    assert s.people == 5 and s.labelled == 15
    pred = {r["face_id"]: r for r in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert len(pred) == len(ids)
    labelled = {r["face_id"] for rs in by.values() for r in rs[:3]}
    assert all(pred[f]["labelled"] and pred[f]["probability"] == 1.0 for f in labelled)
    others = [r for rs in by.values() for r in rs[3:]]
    right = [pred[r["face_id"]]["label"] == person(r["uri"]) for r in others]
    assert np.mean(right) >= 0.95, np.mean(right)
    cast = [r for r in ids if "faceapi_bbt" in r["uri"]]
    unknown = [pred[r["face_id"]]["label"] == "unknown" for r in cast]
    assert np.mean(unknown) >= 0.95, np.mean(unknown)
    probs = np.array([pred[r["face_id"]]["probability"] for r in others + cast])
    assert ((probs >= 0) & (probs <= 1)).all()


def test_stored_labels_are_reused_and_reduce_relabels(archive, tmp_path):
    from facejob.reduce import label, reduce

    out, ids = _copy_out(archive, tmp_path)
    bbt = [r for r in ids if "faceapi_bbt" in r["uri"]]
    amy = [r for r in bbt if person(r["uri"]) == "amy"][:2]
    raj = [r for r in bbt if person(r["uri"]) == "raj"][:2]
    text = "face_id,name\n" + "".join(f"{r['face_id']},{n}\n" for n, rs in (("Amy", amy), ("Raj", raj)) for r in rs)
    label(str(out), _write(tmp_path, text))
    (out / "predictions.parquet").unlink()
    r = reduce(str(out))
    assert r.label is not None and r.label.people == 2
    assert (out / "predictions.parquet").exists()
    # Labels given later add to the stored ones.
    sheldon = [r for r in bbt if person(r["uri"]) == "sheldon"][:2]
    s = label(str(out), _write(tmp_path, "face_id,name\n" + "".join(f"{r['face_id']},Sheldon\n" for r in sheldon)))
    assert s.people == 3 and s.labelled == 6
    # --replace forgets them.
    s = label(str(out), _write(tmp_path, "face_id,name\n" + "".join(f"{r['face_id']},Sheldon\n" for r in sheldon)),
              replace=True)
    assert s.people == 1


def test_label_threshold_is_saved_and_used_by_the_next_reduce(archive, tmp_path):
    """`facejob label --threshold` is stored with the models; a later `facejob reduce` (which
    relabels with the stored labels) applies it instead of the default."""
    from facejob.cli import main

    out, ids = _copy_out(archive, tmp_path)
    rows = [r for r in ids if "dlib_johns" in r["uri"]]
    labels = _write(tmp_path, "face_id,name\n" + "".join(f"{r['face_id']},{person(r['uri'])}\n" for r in rows[::4]))
    assert main(["label", str(out), "--labels", labels]) == 0
    default = pq.read_table(out / "predictions.parquet").to_pylist()
    # Pick a threshold that the default run's named faces straddle, so the test can fail.
    probs = sorted(p["probability"] for p in default if not p["labelled"] and p["label"] != "unknown")
    high = round(float(probs[len(probs) // 2]), 4)
    assert main(["label", str(out), "--threshold", str(high)]) == 0
    (out / "predictions.parquet").unlink()
    assert main(["reduce", str(out)]) == 0
    assert json.loads((out / "labels/model.json").read_text())["params"]["threshold"] == high
    after = pq.read_table(out / "predictions.parquet").to_pylist()
    named = [p for p in after if not p["labelled"] and p["label"] != "unknown"]
    assert named and all(p["probability"] >= high for p in named)
    assert len(named) < len(probs)


def test_bad_label_and_cluster_thresholds_fail_before_anything_is_written(archive, tmp_path, capsys):
    """A threshold the SVMs or the linkage cannot use is one line and exit 2, before OUT changes."""
    from facejob.cli import main

    out, ids = _copy_out(archive, tmp_path)
    labels = _write(tmp_path, "face_id,name\n" + "".join(f"{r['face_id']},{person(r['uri'])}\n" for r in ids[::4]))

    def files():   # the lock file is taken (touched) by every command; nothing else may change
        return sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*") if p.name != ".facejob.lock")

    before = files()
    assert main(["label", str(out), "--labels", labels, "--threshold", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == ("facejob label: error: IdentityClassifier: threshold must be a "
                                               "probability in [0, 1], got 1.5")
    assert main(["cluster", str(out), "--threshold", "-0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("GraphClusterer: threshold must be a distance > 0, got -0.1") and len(err.splitlines()) == 1
    assert files() == before


@pytest.mark.parametrize("case, body, message", [
    ("unknown face_id", "face_id,name\n{a},Amy\n{b},Amy\nnot-a-face,Amy\n", "line 4: face_id 'not-a-face' is not in the archive"),
    ("empty name", "face_id,name\n{a},Amy\n{b},  \n{c},Amy\n", "line 3: empty name"),
    ("duplicate row", "face_id,name\n{a},Amy\n{b},Amy\n{a},Amy\n", "line 4: same face as line 2, duplicate of"),
    ("conflicting names", "face_id,name\n{a},Amy\n{b},Amy\n{a},Penny\n", "line 4: same face as line 2, conflicts with ('Amy' vs 'Penny')"),
    ("one photo", "face_id,name\n{a},Amy\n{b},Amy\n{c},Raj\n", "'Raj' has only 1 labelled face (labels.csv:4)"),
    ("bad header", "who,face\nAmy,{a}\n", "needs a header with `name` and `face_id`"),
    ("unknown uri", "name,uri\nAmy,/nowhere/photo.jpg\nAmy,/nowhere/b.jpg\n", "line 2: no face of photo '/nowhere/photo.jpg' in the archive"),
    ("no such face", "name,uri,face_idx\nAmy,{ua},0\nAmy,{ub},5\n", "line 3: photo '{ub}' has no face 5 (it has 1)"),
    ("face_idx not a number", "name,uri,face_idx\nAmy,{ua},0\nAmy,{ub},x\n", "line 3: face_idx 'x' is not a number"),
    ("uri and id of one face", "name,face_id,uri\nAmy,{a},\nAmy,,{ua}\n", "line 3: same face as line 2, duplicate of"),
])
def test_labels_csv_errors_are_clear(archive, tmp_path, case, body, message):
    from facejob.reduce import LabelsError, label

    out, ids = _copy_out(archive, tmp_path)
    a, b, c = (r["face_id"] for r in ids[:3])
    ua, ub = (r["uri"] for r in ids[:2])
    with pytest.raises(LabelsError) as e:
        label(str(out), _write(tmp_path, body.format(a=a, b=b, c=c, ua=ua, ub=ub)))
    assert message.format(ua=ua, ub=ub) in str(e.value) and "\n" not in str(e.value)
    assert not (out / "predictions.parquet").exists() and not (out / "labels").exists()


def test_cli_label_error_is_one_line(archive, tmp_path, capsys):
    from facejob.reduce.cli import main

    out, ids = _copy_out(archive, tmp_path)
    rc = main(["label", str(out), "--labels", _write(tmp_path, f"face_id,name\n{ids[0]['face_id']},\n")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "empty name" in err


def test_folder_of_photos_as_labels(archive, tmp_path, data_dir):
    """NAME/photo.jpg: photos already in the archive use its faces (by bytes); others are embedded."""
    from facejob.reduce import read_labels

    out, _ = archive
    tree = tmp_path / "people"
    for name in ("John_Simm", "John_Salley"):
        (tree / name).mkdir(parents=True)
        for p in sorted((data_dir / "labelled/dlib_johns" / name).iterdir())[:2]:
            shutil.copy(p, tree / name / p.name)
    (tree / "Penny").mkdir()
    for p in sorted((data_dir / "labelled/faceapi_bbt/penny").iterdir())[:2]:
        shutil.copy(p, tree / "Penny" / p.name)
    # Not in the archive: a mirrored copy (new bytes) must be embedded with the archive's settings.
    from PIL import Image, ImageOps
    src = sorted((data_dir / "labelled/faceapi_bbt/penny").iterdir())[2]
    ImageOps.mirror(Image.open(src).convert("RGB")).save(tree / "Penny" / "mirrored.jpg", quality=95)
    lab = read_labels(str(out), tree)
    assert sorted(set(lab.name)) == ["John_Salley", "John_Simm", "Penny"] and len(lab) == 7
    assert (lab.row >= 0).sum() == 6 and (lab.row < 0).sum() == 1
    assert lab.embedding.shape == (7, 128)
    # Rows found by bytes point at the archive faces of those very photos.
    from facejob.reduce.embeddings import read_faces

    uris = read_faces(LocalStore(out)).meta.column("uri").to_pylist()
    assert {person(uris[r]) for r in lab.row[lab.row >= 0]} == {"John_Simm", "John_Salley", "penny"}


def test_model_files_load_without_running_code(archive, tmp_path):
    """The saved models are plain arrays + JSON; a model file carrying a pickle is refused and
    its payload never runs."""
    from facejob.reduce import LabelsError, label
    from facejob.reduce.svm import MODEL_NPZ, load_model

    out, ids = _copy_out(archive, tmp_path)
    rows = [r for r in ids if "dlib_johns" in r["uri"]]
    text = "face_id,name\n" + "".join(f"{r['face_id']},{person(r['uri'])}\n" for r in rows[::4])
    label(str(out), _write(tmp_path, text))
    store = LocalStore(out)
    raw = np.load(io.BytesIO(store.read_bytes(MODEL_NPZ)), allow_pickle=False)
    assert {k: raw[k].dtype.kind for k in raw.files} == {"classes": "U", "coef": "f", "intercept": "f", "platt": "f"}
    assert b"pickle" not in store.read_bytes(MODEL_NPZ)
    meta = json.loads(store.read_bytes("labels/model.json"))
    assert meta["format"] == 1 and meta["params"]["threshold"] == 0.5
    m = load_model(store)
    assert sorted(m.classes) == sorted({person(r["uri"]) for r in rows[::4]})

    # Tamper: an object array whose unpickling would create a file.
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    np.savez(buf, classes=np.array([Payload()], dtype=object), coef=m.coef, intercept=m.intercept, platt=np.array(m.platt))
    store.write_bytes(MODEL_NPZ, buf.getvalue())
    with pytest.raises(LabelsError, match="cannot load the label models"):
        load_model(store)
    assert not marker.exists()


def test_corrections_name_people_and_take_faces_out(archive, tmp_path):
    """Names from the report page are labels (a one-face cluster too); "not this person" drops a
    CSV label of that name and keeps the face from getting it back."""
    from facejob.reduce import label

    out, ids = _copy_out(archive, tmp_path)
    bbt = [r for r in ids if "faceapi_bbt" in r["uri"]]
    amy = [r["face_id"] for r in bbt if person(r["uri"]) == "amy"]
    raj = [r["face_id"] for r in bbt if person(r["uri"]) == "raj"]
    howard = [r["face_id"] for r in bbt if person(r["uri"]) == "howard"][:1]
    label(str(out), _write(tmp_path, "face_id,name\n" + "".join(f"{f},Amy\n" for f in amy[:3])
                                     + "".join(f"{f},Raj\n" for f in raj[:2])))
    corr = tmp_path / "corrections.json"
    corr.write_text(json.dumps({"facejob": "corrections", "version": 1, "corrections": [
        {"kind": "name", "name": "Howard", "cluster_id": 99, "face_ids": howard},
        {"kind": "not_person", "face_id": amy[0], "cluster_id": 1, "others": amy[1:], "name": "Amy"}]}))
    s = label(str(out), corrections=corr)
    assert s.people == 3 and s.labelled == 2 + 2 + 1
    pred = {r["face_id"]: r for r in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert pred[howard[0]]["label"] == "Howard" and pred[howard[0]]["labelled"]
    assert pred[amy[0]]["label"] != "Amy" and not pred[amy[0]]["labelled"]
    # Its probability is that of the label it got (or, for `unknown`, that it is none of the
    # people it may be), never Amy's: it means the same as for every other face.
    from facejob.reduce.svm import load_model

    m = load_model(LocalStore(out))
    x = np.array([r["embedding"] for r in ids if r["face_id"] == amy[0]], np.float32)
    free, p_free = m.predict(x)
    assert free[0] == "Amy" and p_free[0] >= 0.5          # without the correction it would be Amy
    got, p_got = m.predict(x, {0: {"Amy"}})
    assert (pred[amy[0]]["label"], pred[amy[0]]["probability"]) == (got[0], pytest.approx(float(p_got[0])))
    if got[0] == "unknown":
        assert p_got[0] > 0.5 and abs(p_got[0] - p_free[0]) > 1e-3
    for r in pred.values():      # every face: a name at >= threshold, or unknown at > 1 - threshold
        assert r["probability"] >= 0.5 if r["label"] != "unknown" else r["probability"] > 0.5
    assert all(pred[f]["label"] == "Amy" for f in amy[1:3])
    # The CSV labels stay stored as given; the corrections apply on top on every run.
    assert pq.read_table(out / "labels" / "labels.parquet").num_rows == 5
    assert label(str(out)).labelled == 5


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _three_people(rng: np.random.Generator):
    """Synthetic descriptors: three people's centres, 6 labelled faces each (names A, B, C), 400 strangers."""
    centres = _unit(rng.normal(size=(3, 128))) * 0.5
    xl = np.concatenate([c + rng.normal(0, 0.02, (6, 128)) for c in centres]).astype(np.float32)
    names = [n for n in "ABC" for _ in range(6)]
    strangers = _unit(rng.normal(size=(400, 128))) * 0.5 + rng.normal(0, 0.02, (400, 128))
    return centres, xl, names, strangers


def test_pool_faces_the_first_models_name_leave_the_pool():
    """Photos of a named person outside their cluster and not near a labelled face land in the
    background pool; the faces the first models name are taken out and the models retrained, so
    they do not teach the SVMs (and the calibration) to reject that person."""
    from facejob.reduce import svm

    rng = np.random.default_rng(0)
    centres, xl, names, strangers = _three_people(rng)
    amy_far = centres[0] + _unit(rng.normal(size=(6, 128))) * 0.42     # beyond pool_exclude (0.4)
    x = np.concatenate([strangers, amy_far]).astype(np.float32)
    m, fit = svm.fit_archive(x, -np.ones(len(xl), np.int64), xl, names, None, svm.LabelParams(pool_size=1000))
    assert m.info["pool_named_dropped"] == 6 and not np.isin(np.arange(400, 406), fit["pool"]).any()
    assert list(m.predict(x[400:])[0]) == ["A"] * 6
    assert (m.predict(strangers.astype(np.float32))[0] == "unknown").mean() > 0.95


def test_pool_faces_are_judged_by_models_that_did_not_train_on_them():
    """Many photos of a named person in the pool (40 beyond pool_exclude, in no cluster): as
    negatives they teach her SVM to reject them: judged by models trained with them, 18 of 40
    left the pool and 29 got her name. Models trained on the other half of the pool name them,
    so all leave it and all get her name; strangers stay unknown."""
    from facejob.reduce import svm

    rng = np.random.default_rng(0)
    centres, xl, names, strangers = _three_people(rng)
    amy_far = centres[0] + _unit(rng.normal(size=(40, 128))) * 0.45
    x = np.concatenate([strangers, amy_far]).astype(np.float32)
    m, fit = svm.fit_archive(x, -np.ones(len(xl), np.int64), xl, names, None, svm.LabelParams(pool_size=1000))
    assert m.info["pool_named_dropped"] == 40 and not np.isin(np.arange(400, 440), fit["pool"]).any()
    assert list(m.predict(x[400:])[0]) == ["A"] * 40
    assert (m.predict(strangers.astype(np.float32))[0] == "unknown").mean() > 0.95


def _a_and_look_alikes(seed: int, in_cluster: int):
    """A's 6 labels (rows 0-5) and 6 other photos (rows 418-423) in cluster 0 with the first
    `in_cluster` of 50 photos of someone who looks like A (rows 424-473); the rest elsewhere."""
    rng = np.random.default_rng(seed)
    centres, xl, names, strangers = _three_people(rng)
    amy = centres[0] + rng.normal(0, 0.02, (6, 128))                        # A's other photos
    other = centres[0] + _unit(rng.normal(size=128)) * 0.6
    alike = other + rng.normal(0, 0.05, (50, 128))
    x = np.concatenate([xl, strangers, amy, alike]).astype(np.float32)
    clusters = np.arange(len(x))
    clusters[list(range(6)) + list(range(418, 424 + in_cluster))] = 0
    return x, xl, names, strangers, clusters


def test_cluster_mates_the_labels_do_not_name_are_strangers_not_positives():
    """A cluster holding a labelled person's photos and a few look-alikes lends only the mates
    that models trained on the labels alone name as that person; the others go to the
    background pool, so the person's SVM learns to reject them (and strangers like them)."""
    from facejob.reduce import svm

    x, xl, names, strangers, clusters = _a_and_look_alikes(1, in_cluster=5)
    m, fit = svm.fit_archive(x, np.arange(18), xl, names, clusters, svm.LabelParams(pool_size=1000))
    assert sorted(fit["extra"].tolist()) == list(range(418, 424))           # A's own photos only
    assert np.isin(np.arange(424, 429), fit["pool"]).all()                  # the look-alikes are strangers
    assert list(m.predict(x[418:424])[0]) == ["A"] * 6
    assert (m.predict(x[424:])[0] == "unknown").all()
    assert (m.predict(strangers.astype(np.float32))[0] == "unknown").mean() > 0.95


def test_a_cluster_mostly_of_look_alikes_lends_no_positives():
    """When the labels' models name fewer than half of a cluster's other members (6 of 26 here),
    the cluster is a mix and lends no positives: all its members are strangers in the pool,
    where the out-of-fold judgement takes out A's own photos again. Her photos still get her
    name, the look-alikes none."""
    from facejob.reduce import svm

    x, xl, names, strangers, clusters = _a_and_look_alikes(1, in_cluster=20)
    m, fit = svm.fit_archive(x, np.arange(18), xl, names, clusters, svm.LabelParams(pool_size=1000))
    assert len(fit["extra"]) == 0 and m.info["extra_positives"] == 0
    assert np.isin(np.arange(424, 444), fit["pool"]).all()                  # look-alikes: strangers
    assert not np.isin(np.arange(418, 424), fit["pool"]).any()              # A's photos: judged out of fold
    assert list(m.predict(x[418:424])[0]) == ["A"] * 6
    assert (m.predict(x[424:])[0] == "unknown").all()
    assert (m.predict(strangers.astype(np.float32))[0] == "unknown").mean() > 0.95


def test_cluster_mates_beyond_the_labels_spread_are_no_positives():
    """A cluster-mate is a positive only nearer to one of its person's labelled faces than the
    two farthest apart of them are (A's span 0.4 here); with one labelled face (B) there is no
    spread and the vetting alone decides."""
    from facejob.reduce.svm import _within_label_spread

    e = np.eye(128, dtype=np.float32)
    labelled = np.stack([0.2 * e[0], -0.2 * e[0], 0.1 * e[1], 0.5 * e[2]])     # A, A, A, B
    names = ["A", "A", "A", "B"]
    mates = np.stack([0.2 * e[0] + 0.3 * e[3], 0.2 * e[0] + 0.5 * e[3], 0.5 * e[2] + 0.9 * e[4]])
    assert _within_label_spread(mates, ["A", "A", "B"], labelled, names).tolist() == [True, False, True]
