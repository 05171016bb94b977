"""The FaceModel design: settings in one place, validated up front; workers that build the model
once; outputs of the previous version (run.json with a flat `config`, no model.json) read and
extended; the saved model config used by search; statuses and reasons as enums."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

import facejob
from facejob.config import ConfigError, IndexConfig, ModelConfig, RunConfig, load_run_config, options
from facejob.contract.layout import MODEL_JSON, RUN_JSON
from facejob.contract.schema import Reason, Status
from facejob.io.storage import LocalStore

FACEJOB = [sys.executable, "-m", "facejob.cli"]


def rows(out: Path, name: str) -> list[dict]:
    return ds.dataset(out / name, format="parquet").to_table().to_pylist()


# ------------------------------------------------------------------------------ settings

def test_bad_settings_fail_before_anything_runs(tmp_path):
    for bad in (dict(device="gpu"), dict(device="cuda:x"), dict(detector="yolo"), dict(upsample=True)):
        with pytest.raises(ConfigError):
            ModelConfig(**bad)
    for bad in (dict(workers=-1), dict(cpus_per_worker=0), dict(extensions=("jpg",)), dict(address="")):
        with pytest.raises(ConfigError):
            RunConfig(**bad)
    # The CLI: one line, exit 2, and no Ray started (the source does not even exist).
    r = subprocess.run([*FACEJOB, "index", "nowhere", "--out", str(tmp_path / "o"), "--device", "gpu"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_runtime_settings_are_checked_and_only_precision_changes_the_fingerprint():
    for bad in (dict(runtime="tensorrt"), dict(precision="int8"), dict(compile="yes"),
                dict(runtime="onnxruntime", precision="bf16")):
        with pytest.raises(ConfigError):
            ModelConfig(**bad)
    base = ModelConfig().fingerprint()
    # the same boxes and descriptors (to 1e-6) from each runtime, compiled or not: one output
    assert ModelConfig(runtime="torch", compile=True).fingerprint() == base
    # bf16 moves descriptors by ~1e-2: an output indexed in fp32 refuses it
    assert ModelConfig(precision="bf16").fingerprint() != base


def test_every_setting_is_a_flag_with_its_help():
    r = subprocess.run([*FACEJOB, "index", "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(r.stdout.split())
    for cls in (ModelConfig, RunConfig):
        for f in options(cls):
            assert "--" + f.name.replace("_", "-") in text, f.name
            assert " ".join(f.metadata["help"].split())[:40] in text, f.name
    for cls in (ModelConfig, RunConfig):  # every setting, `extensions` included, is a flag
        assert {f.name for f in dataclasses.fields(cls)} == {f.name for f in options(cls)}


def test_flat_and_nested_config_dicts_mean_the_same():
    flat = {"detector": "cnn", "upsample": 2, "workers": 3, "extensions": [".jpg"]}
    c = IndexConfig.from_dict(flat)
    assert c.model == ModelConfig(detector="cnn", upsample=2) and c.run == RunConfig(workers=3, extensions=(".jpg",))
    assert IndexConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown setting"):
        IndexConfig.from_dict({**flat, "detecter": "hog"})


def test_help_lists_every_command_even_if_the_reducer_cannot_load():
    code = ("import sys; sys.modules['facejob.reduce.cli'] = None\n"
            "from facejob.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for cmd in ("index", "verify", "search", "cluster", "label", "dedup", "reduce"):
        assert cmd in r.stdout
    assert "unavailable" in r.stdout
    r = subprocess.run([sys.executable, "-c", code, "search", "out", "x.jpg"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "could not be loaded" in r.stderr


def test_help_does_not_load_the_models_or_the_reducer():
    code = ("import sys, contextlib, io\n"
            "from facejob.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit): main(['--help'])\n"
            "print(sorted(m for m in ('torch', 'dlib', 'ray', 'sklearn', 'hnswlib', 'pyarrow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_reasons_and_statuses():
    assert Reason.of("crash: the worker died") is Reason.CRASH and Reason.CRASH.retryable
    assert Reason.of("unavailable: timeout") is Reason.UNAVAILABLE and Reason.UNAVAILABLE.retryable
    assert not Reason.CORRUPT.retryable and not Reason.FAILED.retryable
    assert Reason.of(None) is None and Reason.of("something else") is None
    assert Reason.TOO_LARGE.error("9 MP") == "too_large: 9 MP"
    assert [s.value for s in Status] == ["ok", "no_face", "error"]


# ------------------------------------------------------------------------------ workers

def test_a_worker_builds_its_model_once_for_many_shards(ray_local, data_dir, tmp_path):
    src = data_dir / "labelled/faceapi_bbt/raj"
    out = tmp_path / "out"
    s = facejob.index([str(src)], str(out), IndexConfig(run=RunConfig(workers=1, shard_size=2)), progress=False)
    assert s.ok and s.counts["shards"] == 3 and s.counts["processed"] == 5
    (worker,) = s.report["workers"]
    assert worker["shards"] == 3 and worker["model_builds"] == 1, s.report["workers"]


def test_a_shard_moves_off_a_worker_that_never_starts(ray_local, data_dir, tmp_path, monkeypatch):
    """Three workers on two CPUs: the third is never placed while the other two live. Its
    shard must move to a free worker once nothing else is left (else the run would hang)."""
    from facejob.indexing import pool

    monkeypatch.setattr(pool, "START_GRACE_S", 1.0)
    src = data_dir / "labelled/faceapi_bbt/raj"
    s = facejob.index([str(src)], str(tmp_path / "out"), IndexConfig(run=RunConfig(workers=3, shard_size=2)),
                      progress=False)
    assert s.ok and s.counts["shards"] == 3 and s.counts["processed"] == 5
    # The third worker never ran; which of the other two took the moved shard (or whether one
    # took all three while the other was still loading) depends on timing.
    assert 1 <= len(s.report["workers"]) <= 2 and sum(w["shards"] for w in s.report["workers"]) == 3


# -------------------------------------------------------------------- outputs of earlier versions

def _as_previous_version(out: Path) -> None:
    """Rewrite run.json the way the previous facejob wrote it: one flat `config`, no model.json."""
    run = json.loads((out / RUN_JSON).read_text())
    flat = {**run.pop("model"), **run.pop("run")}
    run.pop("workers", None)
    (out / RUN_JSON).write_text(json.dumps({**run, "config": flat}))
    (out / MODEL_JSON).unlink()


def test_previous_version_output_is_read_and_extended(ray_local, data_dir, tmp_path):
    bbt = data_dir / "labelled/faceapi_bbt"
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(bbt / "raj", src)
    facejob.index([str(src)], str(out), IndexConfig(ModelConfig(upsample=1)), progress=False)
    before = sorted((f["face_id"], f["embedding"]) for f in rows(out, "faces"))
    _as_previous_version(out)
    store = LocalStore(out)
    assert ModelConfig.load(store) == ModelConfig() and load_run_config(store) == RunConfig()
    # The model check still reads the old record...
    with pytest.raises(ConfigError, match="upsample=2 \\(output has 1\\)"):
        facejob.index([str(src)], str(out), IndexConfig(ModelConfig(upsample=2)), progress=False)
    # ...and a new photo extends it: old rows untouched, the new one added, model.json written.
    shutil.copy(bbt / "howard/howard1.png", src / "howard1.png")
    s = facejob.index([str(src)], str(out), IndexConfig(), progress=False)
    assert (s.counts["unchanged"], s.counts["new"], s.counts["processed"]) == (5, 1, 1)
    after = rows(out, "faces")
    assert len(after) == len(before) + 1
    assert before == sorted((f["face_id"], f["embedding"]) for f in after if "howard" not in f["uri"])
    assert json.loads((out / MODEL_JSON).read_text()) == ModelConfig().to_dict()


def test_search_and_verify_build_the_outputs_model(ray_local, data_dir, tmp_path):
    from facejob import reduce as fr

    bbt = data_dir / "labelled/faceapi_bbt"
    out = tmp_path / "out"
    facejob.index([str(bbt / "raj")], str(out), IndexConfig(ModelConfig(embedder="torch", device="cpu")),
                  progress=False)
    _as_previous_version(out)  # the model config then comes from the old flat record
    fr.index(str(out))
    (q,) = fr.search(str(out), str(bbt / "raj/raj1.png"), k=1)
    assert q.matches[0].uri.endswith("raj1.png") and q.matches[0].distance < 1e-3
    from facejob.indexing.pipeline import FaceModel

    assert FaceModel.shared.cache_info().currsize == 1
    model = FaceModel.shared(ModelConfig(embedder="torch", device="cpu"))
    assert model.embedder.name == "torch-resnet"
    r = subprocess.run([*FACEJOB, "verify", str(bbt / "raj/raj1.png"), str(bbt / "raj/raj2.png"), "--like", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("same person"), r.stderr
