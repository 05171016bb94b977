"""Failures done for real, on a real local Ray: every test breaks something and checks the tables.

- a worker process killed (SIGKILL, by pid) mid-shard: the shard is retried, nothing lost or doubled;
- the driver (a `facejob index --address` process on this module's cluster) killed mid-run:
  the same command again finishes only the missing shards;
- the S3 endpoint down and back mid-run: retried; an archived (Glacier) object: that image's error;
- a photo that kills the worker process whenever it is decoded: only that photo fails;
- a model no worker can build: the run fails, no photo is marked.

Each result is compared row by row (statuses, boxes, embeddings) with an
uninterrupted run over the same photos.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import facejob
from facejob.config import IndexConfig, RunConfig
from facejob.indexing.driver import index
from tests import crash_model
from tests.crash_model import POISON, BrokenFaceModel, CrashingFaceModel, SlowFaceModel
from tests.s3_server import (
    Killer, MotoServer, TcpProxy, assert_same_results, aws_env, lfw_photos, make_client, rows_by_name,
    kill_driver_when, wait_for_dead_driver_tasks,
)

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 12
CONFIG = IndexConfig(run=RunConfig(workers=2, shard_size=3))
REFERENCE_CONFIG = IndexConfig(run=RunConfig(workers=1, shard_size=3))  # the same rows as CONFIG's


@pytest.fixture(scope="module")
def env(s3_endpoint: MotoServer):
    """One local Ray for the module, started with the environment its workers must inherit:
    S3 through a proxy the tests can take down."""
    import ray

    from facejob.io import s3 as fs3

    assert not ray.is_initialized()
    proxy = TcpProxy(s3_endpoint.port).start()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws_env(proxy.endpoint).items():
            mp.setenv(k, v)
        # botocore's backoff is fully jittered, so the default 12 attempts can, rarely, all fall
        # inside the 3 s outage below; 20 make that practically impossible (same code path).
        mp.setenv("FACEJOB_S3_MAX_ATTEMPTS", "20")
        fs3.configure()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        # The workers get the test's FaceModel subclass by value: tests/ need not be importable there.
        ray.cloudpickle.register_pickle_by_value(crash_model)
        try:
            yield proxy
        finally:
            ray.shutdown()
            proxy.close()
            fs3.configure()


@pytest.fixture(scope="module")
def photos(data_dir, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("photos")
    lfw_photos(data_dir, N_PHOTOS, src)
    return src


@pytest.fixture(scope="module")
def reference(env, photos, tmp_path_factory) -> Path:
    """The uninterrupted run every failure run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    summary = facejob.index([str(photos)], str(out), REFERENCE_CONFIG, progress=False)
    assert summary.ok and summary.counts["processed"] == N_PHOTOS and summary.counts["faces"] >= N_PHOTOS
    return out


def test_worker_killed_mid_shard_is_retried(env, photos, reference, tmp_path):
    out = tmp_path / "out"
    killer = Killer(os.getpid(), "ray::ShardWorker.run_shard", times=1, after=0.3)
    killer.start()
    try:
        summary = index([str(photos)], str(out), CONFIG, progress=False, model_class=SlowFaceModel)
    finally:
        killer.stop.set()
        killer.join()
    assert len(killer.killed) == 1, "no worker was caught mid-shard"
    assert summary.ok and summary.counts["processed"] == N_PHOTOS
    assert len(list((out / "images").glob("part-*.parquet"))) == summary.counts["shards"]
    assert_same_results(out, reference)


def _part_count(out: Path) -> int:
    return len(list((out / "images").glob("part-*.parquet"))) if (out / "images").is_dir() else 0


def test_driver_killed_mid_run_then_rerun_finishes_only_missing_shards(env, photos, reference, tmp_path):
    import ray

    # The driver joins this module's Ray cluster, as `ray job submit` would on a real one.
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facejob.cli", "index", str(photos), "--out", str(out),
           "--workers", "2", "--shard-size", "2", "-q", "--address", ray.get_runtime_context().gcs_address]
    driver = subprocess.Popen(cmd, cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_driver_when(driver, lambda: _part_count(out) > 0, 240, what="no shard committed: ")
    wait_for_dead_driver_tasks(os.getpid())
    done = _part_count(out)
    assert 1 <= done < N_PHOTOS // 2, "the driver must die with shards left to do"
    rows_done = len(rows_by_name(out)[0])

    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["unchanged"] == rows_done and counts["new"] == N_PHOTOS - rows_done
    assert counts["processed"] == N_PHOTOS - rows_done and counts["failed_shards"] == 0
    assert_same_results(out, reference)


def test_s3_outage_is_retried_and_an_unreadable_object_is_its_own_error(env, photos, reference, s3_endpoint):
    proxy = env
    bucket = "failures-s3"
    client = make_client(s3_endpoint.endpoint)  # straight to moto, around the proxy
    client.create_bucket(Bucket=bucket)
    for p in sorted(photos.iterdir()):
        client.put_object(Bucket=bucket, Key=f"photos/{p.name}", Body=p.read_bytes())
    # An archived photo: listed like any other, but S3 refuses to read it (InvalidObjectState).
    archived = sorted(photos.iterdir())[0].read_bytes()
    client.put_object(Bucket=bucket, Key="photos/archived.jpg", Body=archived, StorageClass="GLACIER")

    def parts() -> int:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/images/")
        return sum(len(p.get("Contents", [])) for p in pages)

    outage: dict[str, float] = {}

    def take_endpoint_down() -> None:
        while parts() == 0:
            time.sleep(0.05)
        outage["parts_before"] = parts()
        proxy.stop()
        outage["down"] = time.monotonic()
        time.sleep(3)
        proxy.start()
        outage["up"] = time.monotonic()

    saboteur = threading.Thread(target=take_endpoint_down, daemon=True)
    saboteur.start()
    t0 = time.monotonic()
    summary = facejob.index([f"s3://{bucket}/photos/"], f"s3://{bucket}/out", CONFIG, progress=False)
    saboteur.join(timeout=60)
    assert "up" in outage, "the endpoint was never taken down"
    assert outage["parts_before"] < summary.counts["shards"], "the outage must hit a run with work left"
    assert time.monotonic() - t0 > 3
    assert summary.ok and summary.counts["processed"] == N_PHOTOS + 1
    assert summary.counts["error"] == 1
    images, _ = rows_by_name(f"s3://{bucket}/out")
    archived_row = images["archived.jpg"]
    assert archived_row["status"] == "error"
    assert archived_row["error"].startswith("unreadable: ") and "InvalidObjectState" in archived_row["error"]
    assert_same_results(f"s3://{bucket}/out", reference, same_uris=False, skip={"archived.jpg"})


def test_poisoned_photo_fails_alone_after_bounded_retries(env, photos, reference, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = sorted(p.name for p in photos.iterdir())[:5]
    for n in names:
        (src / n).write_bytes((photos / n).read_bytes())
    (src / f"{POISON}.jpg").write_bytes((photos / names[0]).read_bytes())
    out = tmp_path / "out"
    summary = index([str(src)], str(out), CONFIG, progress=False, model_class=CrashingFaceModel)
    assert summary.ok, summary.failed_shards
    images, _ = rows_by_name(out)
    bad = images[f"{POISON}.jpg"]
    assert bad["status"] == "error" and bad["error"].startswith("crash: "), bad
    assert summary.counts["error"] == 1 and summary.counts["processed"] == 6
    keep = set(p.name for p in photos.iterdir()) - set(names)
    assert_same_results(out, reference, same_uris=False, skip=keep | {f"{POISON}.jpg"})


def test_workers_that_cannot_build_the_model_fail_the_run_not_the_photos(env, photos, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="index workers cannot start .*model files missing"):
        index([str(photos)], str(out), CONFIG, progress=False, model_class=BrokenFaceModel)
    assert not (out / "images").exists(), "no photo may be recorded as failed for a worker's fault"
