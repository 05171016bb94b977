"""Damaged output heals, a full disk fails cleanly, a driver killed three times loses nothing.

Every result is compared row by row (statuses, boxes, embeddings) with an
undamaged, uninterrupted run over the same photos.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import facejob
from facejob.indexing import plan as planning
from facejob.config import IndexConfig, RunConfig
from facejob.io.storage import LocalStore, read_parquet
from tests.s3_server import assert_same_results, kill_driver_when, lfw_photos, wait_for_dead_driver_tasks

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 40  # enough that a quiet machine cannot finish a run before the kill test's random moment
CONFIG = IndexConfig(run=RunConfig(workers=2, shard_size=3))
REFERENCE_CONFIG = IndexConfig(run=RunConfig(workers=1, shard_size=3))  # the same rows as CONFIG's


@pytest.fixture(scope="module")
def ray_address():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(data_dir) -> Path:
    # Outside pytest's 0700 temp folder: the disk-full test reads it from a mount namespace.
    src = Path(tempfile.mkdtemp(prefix="fj-heal-", dir="/tmp")) / "photos"
    lfw_photos(data_dir, N_PHOTOS, src)
    yield src
    shutil.rmtree(src.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(ray_address, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = facejob.index([str(photos)], str(out), REFERENCE_CONFIG, progress=False)
    assert summary.ok and summary.counts["processed"] == N_PHOTOS and summary.counts["shards"] == -(-N_PHOTOS // 3)
    return out


def parts(out: Path, kind: str) -> list[Path]:
    return sorted((out / kind).glob("part-*.parquet")) if (out / kind).is_dir() else []


def assert_trustworthy(out: Path) -> int:
    """Every committed shard is whole: both parts read, and its images rows promise exactly its
    face rows. Returns the number of committed shards."""
    store = LocalStore(out)
    for images_part in parts(out, "images"):
        shard = planning.shard_of(images_part.name)
        images = read_parquet(store, f"images/{images_part.name}")
        faces = read_parquet(store, f"faces/part-{shard}.parquet")
        assert sum(images.column("n_faces").to_pylist()) == faces.num_rows, shard
        assert set(faces.column("uri").to_pylist()) <= set(images.column("uri").to_pylist()), shard
    return len(parts(out, "images"))


@pytest.mark.parametrize("kind", ["images", "faces"])
def test_truncated_part_is_quarantined_and_redone(ray_address, photos, reference, tmp_path, kind):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    victim = parts(out, kind)[1]
    in_shard = read_parquet(LocalStore(out), f"images/{victim.name}").num_rows   # 3, or 1 in the last shard
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])   # a copy cut short, with its normal name

    summary = facejob.index([str(photos)], str(out), CONFIG, progress=False)
    assert summary.ok and summary.counts["quarantined_parts"] == 2  # the shard's images and faces parts
    assert summary.counts["processed"] == in_shard and summary.counts["unchanged"] == N_PHOTOS - in_shard
    quarantined = sorted(p.relative_to(out).parts[-2:] for p in (out / "quarantine").rglob("*.parquet"))
    assert quarantined == [("faces", victim.name), ("images", victim.name)]
    assert (out / "quarantine").rglob(f"{kind}/{victim.name}").__next__().read_bytes() == data[: len(data) // 2]
    assert_same_results(out, reference)
    again = facejob.index([str(photos)], str(out), CONFIG, progress=False)
    assert again.counts["processed"] == 0 and again.counts["quarantined_parts"] == 0


def test_reducer_reads_only_committed_faces_parts(reference, tmp_path):
    from facejob.reduce.embeddings import read_faces

    out = tmp_path / "out"
    shutil.copytree(reference, out)
    n = len(read_faces(LocalStore(out)))
    # A faces part whose images part was never written (a crashed or still-running shard).
    shutil.copyfile(parts(out, "faces")[0], out / "faces" / "part-uncommitted.parquet")
    (out / "faces" / "part-uncommitted2.parquet").write_bytes(b"PAR1 half a part")
    assert len(read_faces(LocalStore(out))) == n


def _mount_namespaces_work() -> bool:
    d = tempfile.mkdtemp()
    try:
        return subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {d}"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        os.rmdir(d)


@pytest.mark.skipif(not _mount_namespaces_work(), reason="needs `unshare -m` and tmpfs mounts for a real full disk")
def test_full_disk_fails_the_run_and_leaves_nothing_untrustworthy(ray_address, photos, reference, tmp_path):
    # OUT is a 48 KiB tmpfs in a private mount namespace: a real ENOSPC after a shard or two.
    # The driver starts its own Ray there, so its workers write to the same small disk.
    out, kept = Path(tempfile.mkdtemp(prefix="fj-full-", dir="/tmp")), tmp_path / "after"
    script = (f'mount -t tmpfs -o size=48k tmpfs "{out}" || exit 99; '
              f'"{sys.executable}" -m facejob.cli index "{photos}" --out "{out}" --workers 2 --shard-size 3 -q; '
              f'rc=$?; cp -a "{out}" "{kept}"; exit $rc')
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""})
    finally:
        os.rmdir(out)
    assert r.returncode not in (0, 99), r.stderr[-3000:]
    assert "No space left on device" in r.stderr, r.stderr[-3000:]
    assert "facejob index: error:" in r.stderr or "FAILED shards" in r.stderr, r.stderr[-3000:]
    committed = assert_trustworthy(kept)
    assert committed < 4, "the disk was meant to fill up before the end"
    # With room again, the same command finishes the job: the same tables as a clean run.
    summary = facejob.index([str(photos)], str(kept), CONFIG, progress=False)
    assert summary.ok and summary.counts["quarantined_parts"] == 0
    assert_same_results(kept, reference)


def test_driver_killed_three_times_then_finished(ray_address, photos, reference, tmp_path):
    seed = int(os.environ.get("FACEJOB_TEST_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facejob.cli", "index", str(photos), "--out", str(out), "--workers", "2",
           "--shard-size", "1", "-q", "--address", ray_address]
    moments = []
    for _ in range(3):
        # A random moment: after 0-2 more committed shards (0: while connecting or listing),
        # plus up to a fifth of a second.
        target, extra = len(parts(out, "images")) + rng.randint(0, 2), rng.uniform(0, 0.2)
        driver = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        kill_driver_when(driver, lambda: len(parts(out, "images")) >= target, 300, extra, f"seed {seed}: ")
        moments.append((target, round(extra, 2)))
        wait_for_dead_driver_tasks(os.getpid())
        assert_trustworthy(out)
    done = len(parts(out, "images"))
    assert done < N_PHOTOS, f"seed {seed}: kills at {moments} left nothing to finish"
    final = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert final.returncode == 0, final.stderr[-3000:]
    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["processed"] == N_PHOTOS - done and counts["unchanged"] == done, (seed, moments, counts)
    assert_same_results(out, reference)
