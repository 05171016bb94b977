"""`facejob index` end to end on a real local Ray: statuses, idempotent reruns, incremental changes, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

import facejob
from facejob.config import IndexConfig, ModelConfig, RunConfig
from tests.photos import EXPECTED, NON_IMAGES, make_awkward_folder

FACEJOB = [sys.executable, "-m", "facejob.cli"]

# One worker where a test is about the tables, not the pool: each worker is a process that
# loads torch and builds the models (~2 CPU s), more than these few photos cost.
ONE_WORKER = IndexConfig(run=RunConfig(workers=1))


def table(out: Path, name: str) -> list[dict]:
    return ds.dataset(out / name, format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def awkward_run(ray_local, data_dir, tmp_path_factory):
    src = make_awkward_folder(data_dir, tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("out")
    # The folder twice and one of its files again: each photo must still be listed once.
    summary = facejob.index([str(src), str(src), str(src / "plain.jpg")], str(out), IndexConfig(),
                            progress=False)
    return src, out, summary


def test_every_input_accounted_for(awkward_run):
    src, out, summary = awkward_run
    rows = {Path(r["uri"]).relative_to(src).as_posix(): r for r in table(out, "images")}
    assert sorted(rows) == sorted(EXPECTED)
    for name, (status, reason) in EXPECTED.items():
        assert rows[name]["status"] == status, (name, rows[name]["error"])
        if reason:
            assert rows[name]["error"].startswith(reason + ": "), rows[name]["error"]
        if status == "ok":
            assert rows[name]["n_faces"] >= 1
    c = summary.counts
    assert c["listed"] == len(EXPECTED) == c["ok"] + c["no_face"] + c["error"]
    assert c["skipped_by_extension"] == len(NON_IMAGES)
    faces = table(out, "faces")
    assert len(faces) == sum(r["n_faces"] for r in rows.values()) == c["faces"]
    assert len({f["face_id"] for f in faces}) == len(faces)
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["listed"] == len(EXPECTED) and run["totals"]["images"] == len(EXPECTED)
    assert run["model"]["detector"] == "retinaface" and "dlib-bin" in run["versions"]
    assert {f["detector"] for f in faces} == {"retinaface-mnet025"}
    assert all(0 < f["quality"] <= 1 and f["sharpness"] > 0 for f in faces)
    assert run["timings"]["embed_worker_s"] > 0


def test_rerun_does_no_work(awkward_run):
    src, out, _ = awkward_run
    parts_before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    summary = facejob.index([str(src)], str(out), IndexConfig(), progress=False)
    assert summary.counts["processed"] == 0 and summary.counts["unchanged"] == len(EXPECTED)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == parts_before


def test_incremental_add_change_delete(ray_local, data_dir, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    johns = sorted((data_dir / "labelled/dlib_johns/John_Salley").glob("*.jpg"))[:4]
    for p in johns:
        (src / p.name).write_bytes(p.read_bytes())
    facejob.index([str(src)], str(out), ONE_WORKER, progress=False)
    ids_before = {f["uri"]: f["face_id"] for f in table(out, "faces")}

    (src / johns[0].name).unlink()                                   # deleted
    other = sorted((data_dir / "labelled/dlib_johns/John_Shimkus").glob("*.jpg"))[0]
    (src / johns[1].name).write_bytes(other.read_bytes())            # changed content
    os.utime(src / johns[1].name, (1e9, 1e9))
    (src / "new.jpg").write_bytes(other.read_bytes())                # added
    s = facejob.index([str(src)], str(out), ONE_WORKER, progress=False)
    c = s.counts
    assert (c["new"], c["changed"], c["deleted"], c["unchanged"], c["processed"]) == (1, 1, 1, 2, 2)
    images = table(out, "images")
    assert sorted(r["uri"] for r in images) == sorted(str(p) for p in src.iterdir())
    faces = {f["uri"]: f["face_id"] for f in table(out, "faces")}
    for p in johns[2:]:  # untouched photos keep their face ids
        assert faces[str(src / p.name)] == ids_before[str(src / p.name)]
    assert faces[str(src / johns[1].name)] != ids_before[str(src / johns[1].name)]


def test_force_redoes_and_keeps_ids(ray_local, data_dir, tmp_path):
    src = data_dir / "labelled/faceapi_bbt/sheldon"
    out = tmp_path / "out"
    facejob.index([str(src)], str(out), IndexConfig(run=RunConfig(workers=1, shard_size=2)), progress=False)
    before = sorted((f["face_id"], f["uri"]) for f in table(out, "faces"))
    s = facejob.index([str(src)], str(out), IndexConfig(run=RunConfig(workers=1, shard_size=3, force=True)),
                      progress=False)
    assert s.counts["processed"] == 5
    assert sorted((f["face_id"], f["uri"]) for f in table(out, "faces")) == before
    assert len(table(out, "images")) == 5


@pytest.mark.parametrize("change, message", [
    ({"upsample": 2}, "upsample=2 \\(output has 1\\)"),
    ({"detector": "hog"}, "detector='hog' \\(output has 'retinaface'\\)"),
])
def test_refuses_to_mix_detection_settings(awkward_run, change, message):
    src, out, _ = awkward_run
    with pytest.raises(facejob.ConfigError, match=message):
        facejob.index([str(src)], str(out), IndexConfig(ModelConfig(**change)), progress=False)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FACEJOB, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["index", "x"], "the following arguments are required: --out"),
    (["index", "x", "--out", "o", "--detector", "sift"], "invalid choice: 'sift'"),
    (["index", "x", "--out", "o", "--upsample", "9"], "upsample must be an integer 0..4"),
    (["index", "/no/such/folder", "--out", "o"], "source not found: /no/such/folder"),
])
def test_cli_bad_arguments_one_line(args, message, tmp_path):
    r = subprocess.run([*FACEJOB, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_index_and_verify(ray_address, data_dir, tmp_path, capsys):
    from facejob.cli import main

    raj, out = str(data_dir / "labelled/faceapi_bbt/raj"), str(tmp_path / "o")
    r = run_cli("index", raj, "--out", out, "--workers", "1", "--detector", "hog")
    assert r.returncode == 0, r.stderr
    assert "indexed 5 photos" in r.stdout and "5 with faces" in r.stdout
    # Nothing from Ray (no token-authentication notice): only facejob's log and progress lines.
    assert all(x.startswith(("INFO ", "index ")) for x in r.stderr.splitlines()), r.stderr
    # One clock: the summary's time and rate are the last progress line's.
    last = r.stderr.splitlines()[-1]
    took, rate = last.split("  in ")[1], last.split(" photos/s")[0].rsplit(" ", 1)[1]
    assert f"indexed 5 photos in {took} ({rate} photos/s;" in r.stdout, (last, r.stdout)
    # A rerun without model flags keeps the output's own detector (not today's default).
    again = run_cli("index", raj, "--out", out, "--workers", "1")
    assert again.returncode == 0, again.stderr
    assert "Unchanged 5" in again.stdout
    assert json.loads((tmp_path / "o" / "model.json").read_text())["detector"] == "hog"
    bbt = data_dir / "labelled/faceapi_bbt"
    # verify in this process (it uses no Ray): the same command, without a Python start-up per call.
    assert main(["verify", str(bbt / "raj/raj1.png"), str(bbt / "raj/raj2.png")]) == 0
    same = capsys.readouterr().out
    assert main(["verify", str(bbt / "raj/raj1.png"), str(bbt / "howard/howard1.png")]) == 0
    other = capsys.readouterr().out
    assert same.startswith("same person") and other.startswith("different people"), (same, other)


def test_torch_backends_through_ray(ray_local, data_dir, tmp_path):
    src = data_dir / "labelled/faceapi_bbt/raj"
    s = facejob.index([str(src)], str(tmp_path / "o"),
                      IndexConfig(ModelConfig(detector="cnn", embedder="torch"), ONE_WORKER.run), progress=False)
    assert s.counts["ok"] == 5 and s.counts["faces"] >= 5
    faces = table(tmp_path / "o", "faces")
    assert {(f["detector"], f["embedder"]) for f in faces} == {("torch-cnn", "torch-resnet")}
