"""cluster/aws.yaml against the launcher schema that ships inside ray; cluster/rayjob.yaml's must-haves."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[1]
AWS = REPO / "cluster" / "aws.yaml"
RAYJOB = REPO / "cluster" / "rayjob.yaml"
DOCKERFILE = REPO / "cluster" / "Dockerfile"


def ray_schema() -> dict:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load(AWS.read_text())


@pytest.fixture(scope="module")
def rayjob_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]


def test_launcher_yaml_matches_rays_schema(aws):
    jsonschema.validate(aws, ray_schema())


def test_launcher_yaml_passes_rays_own_fill_and_validate(aws):
    # What `ray up` does before touching AWS: merge the provider defaults, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(json.loads(json.dumps(aws)))
    validate_config(full)
    assert full["available_node_types"]["gpu"]["node_config"]["InstanceType"] == "g5.xlarge"


def test_the_schema_check_catches_mistakes(aws):
    bad = json.loads(json.dumps(aws))
    bad["available_node_types"]["gpu"]["min_wrokers"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema())


def test_launcher_layout(aws):
    types = aws["available_node_types"]
    head = types[aws["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    gpu = [t for name, t in types.items() if name != aws["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert len(gpu) == 1, "one GPU worker group"
    group = gpu[0]
    assert group["min_workers"] < group["max_workers"] <= aws["max_workers"], "it autoscales"
    for t in types.values():
        assert "IamInstanceProfile" in t["node_config"], "S3 access comes from an instance role"
    setup = " ".join(aws["setup_commands"])
    assert "pip install" in setup and "~/facejob" in setup
    assert aws["file_mounts"]["~/facejob"] == "."
    text = AWS.read_text()
    for needed in ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert needed in text, f"IAM note lacks {needed}"
    assert "aws_secret_access_key" not in text.lower()


def _rayjob(docs: list[dict]) -> dict:
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    assert len(jobs) == 1
    return jobs[0]


def test_rayjob_required_fields(rayjob_docs):
    job = _rayjob(rayjob_docs)
    assert job["apiVersion"] == "ray.io/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    head_c = head["template"]["spec"]["containers"][0]
    assert head_c["name"] and head_c["image"]
    workers = cluster["workerGroupSpecs"]
    assert workers
    for g in workers:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        c = g["template"]["spec"]["containers"][0]
        assert c["name"] and c["image"]
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert cluster["enableInTreeAutoscaling"] is True and any(g["maxReplicas"] > g["minReplicas"] for g in workers)


def test_rayjob_runs_the_nightly_job_with_files_the_image_has(rayjob_docs):
    job = _rayjob(rayjob_docs)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("jobs/nightly.py") and "--config" in argv
    # The Dockerfile copies the repository to /home/ray/facejob: both files must be in it.
    assert "COPY --chown=ray:users . /home/ray/facejob" in DOCKERFILE.read_text()
    for path in (argv[1], argv[argv.index("--config") + 1]):
        assert path.startswith("/home/ray/facejob/") and (REPO / path.removeprefix("/home/ray/facejob/")).is_file()
    # The env vars the head sets are the ones jobs/nightly.yaml reads.
    nightly = (REPO / "jobs" / "nightly.yaml").read_text()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_env = {e["name"] for e in head["env"]}
    for name in head_env - {"AWS_REGION"}:
        assert "${" + name in nightly, f"{name} is set but jobs/nightly.yaml never reads it"


def test_rayjob_versions_and_service_account_agree(rayjob_docs):
    job = _rayjob(rayjob_docs)
    cluster = job["spec"]["rayClusterSpec"]
    base = re.search(r"^FROM rayproject/ray:(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert base.startswith(cluster["rayVersion"] + "-"), "Dockerfile's Ray must be rayVersion"
    assert cluster["rayVersion"].split(".")[:2] == ray.__version__.split(".")[:2]
    images = {c["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1, "head and workers run the same image"
    accounts = {d["metadata"]["name"] for d in rayjob_docs if d.get("kind") == "ServiceAccount"}
    for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert g["template"]["spec"]["serviceAccountName"] in accounts


# --- jobs/nightly.yaml ---------------------------------------------------------------------

NIGHTLY = REPO / "jobs" / "nightly.yaml"


def nightly_module():
    from facejob import nightly

    return nightly


def test_nightly_yaml_follows_the_cli_defaults():
    """Every index and reduce setting is named in jobs/nightly.yaml (a comment at least), but no
    model key is set and no extension list: left out, they are the output's own or the CLI's
    defaults, so the shipped job can neither retire photos `facejob index` indexed nor clash
    with an output made with the default detector."""
    import dataclasses

    from facejob.config import ModelConfig, ReduceConfig, RunConfig

    text = NIGHTLY.read_text()
    for c in (ModelConfig, RunConfig, ReduceConfig):
        for f in dataclasses.fields(c):
            assert re.search(rf"^ *#? *{f.name}:", text, re.M), f"jobs/nightly.yaml does not mention {f.name}"
    doc = yaml.safe_load(text)
    assert not set(doc["index"]) & {f.name for f in dataclasses.fields(ModelConfig)} and "extensions" not in doc["index"]
    cfg = nightly_module().parse_config(doc, env={})
    assert cfg.index.model == ModelConfig() and cfg.model_given == frozenset()
    assert cfg.index.run == RunConfig(), "with no env vars set, the shipped index: settings are the CLI's"
    assert cfg.reduce.enabled and ReduceConfig(**{k: v for k, v in cfg.reduce.to_dict().items() if k != "enabled"}) \
        == ReduceConfig()
    assert cfg.endpoint_url is None and cfg.report is True


def test_nightly_configs_of_the_earlier_format_still_load():
    """Every key the earlier jobs/nightly.yaml spelled out (all index settings, the reduce
    section's six) is still accepted and means what it meant."""
    doc = {"sources": ["/photos"], "output": "/out", "endpoint_url": None, "log_format": "json",
           "index": {"detector": "cnn", "upsample": 1, "min_face_size": 0, "work_size": 1200, "smallest_face": 0,
                     "landmarks": 5, "embedder": "torch", "device": "auto", "batch_size": 0, "tta": "none",
                     "max_pixels": 100000000, "workers": 0, "cpus_per_worker": 1, "gpus_per_worker": 0,
                     "shard_size": 0, "address": None, "force": False, "max_retire_share": 0.1,
                     "allow_retire": False, "extensions": [".jpg", ".jpeg", ".png"]},
           "reduce": {"enabled": True, "labels": None, "corrections": None, "cluster_threshold": 0.5,
                      "cluster_k": 12, "rebuild_index": False}}
    cfg = nightly_module().parse_config(doc, env={})
    assert cfg.index.model.detector == "cnn" and "detector" in cfg.model_given
    assert cfg.index.run.extensions == (".jpg", ".jpeg", ".png")
    assert (cfg.reduce.cluster_threshold, cfg.reduce.cluster_k, cfg.reduce.enabled) == (0.5, 12, True)


def test_nightly_env_values_are_typed():
    nightly = nightly_module()
    doc = yaml.safe_load(NIGHTLY.read_text())
    cfg = nightly.parse_config(doc, env={"FACEJOB_WORKERS": "8", "FACEJOB_GPUS_PER_WORKER": "1",
                                         "FACEJOB_ARCHIVE": "s3://a/p/", "FACEJOB_S3_ENDPOINT": "http://minio:9000"})
    assert cfg.index.run.workers == 8 and cfg.index.run.gpus_per_worker == 1 and cfg.sources == ("s3://a/p/",)
    assert cfg.endpoint_url == "http://minio:9000"
    assert nightly.expand("s3://${B:-x}/p", {"B": "bkt"}) == "s3://bkt/p"
    with pytest.raises(nightly.ConfigError, match=r"\$\{NOPE\}"):
        nightly.expand("${NOPE}", {})


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(sourcse=["x"]), "unknown key"),
    (lambda d: d["index"].update(detecter="hog"), "unknown key"),
    (lambda d: d["reduce"].update(steps=["index"]), "unknown key"),
    (lambda d: d["index"].update(detector="yolo"), "detector"),
    (lambda d: d["index"].update(extensions=".jpg"), "extensions"),
    (lambda d: d["reduce"].update(cluster_threshold=3), "cluster_threshold"),
    (lambda d: d["reduce"].update(min_quality="high"), "min_quality"),
    (lambda d: d.update(report="yes"), "report"),
    (lambda d: d.update(sources=[]), "sources"),
    (lambda d: d.pop("output"), "output"),
    (lambda d: d["reduce"].update(cluster_k=0), "cluster_k"),
    (lambda d: d.update(log_format="xml"), "log_format"),
])
def test_nightly_config_mistakes_are_errors(tmp_path, capsys, edit, message):
    doc = yaml.safe_load(NIGHTLY.read_text())
    edit(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert nightly_module().main(["--config", str(path), "--check"]) == 2
    assert message in capsys.readouterr().err


def test_nightly_check_prints_the_resolved_config():
    r = subprocess.run([sys.executable, "jobs/nightly.py", "--config", "jobs/nightly.yaml", "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env={**os.environ, "FACEJOB_OUTPUT": "/tmp/o"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == "/tmp/o"
