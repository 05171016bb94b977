"""One writer per output, for real: holders are separate processes, killed with SIGKILL; the S3
lease lives on the moto server. Two `facejob index` runs on one output: the second refuses at
once, the first's output is complete and consistent. Readers (`facejob search`) never wait."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facejob.io import lock
from facejob.contract.layout import LOCK
from facejob.io.lock import LockHeld, hold
from tests.s3_server import child_env, lfw_photos, rows_by_name

REPO = Path(__file__).resolve().parents[1]
FACEJOB = [sys.executable, "-m", "facejob.cli"]
HOLDER = """
import sys
from facejob.io.lock import hold
with hold(sys.argv[1], sys.argv[2], ttl_s=float(sys.argv[3])):
    print("held", flush=True)
    sys.stdin.read()      # until the test closes stdin (or kills us)
"""


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **(extra or {})}


def spawn_holder(out: str, command: str = "index", ttl_s: float = 60.0, environ: dict | None = None) -> subprocess.Popen:
    """A process that takes the lock of `out` and keeps it until killed; returns once it holds it."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, out, command, str(ttl_s)], cwd=REPO, env=environ or env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "held", p.stderr.read()
    return p


def kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait()
    for f in (p.stdin, p.stdout, p.stderr):
        f.close()


def assert_names_holder(message: str, p: subprocess.Popen, command: str = "index") -> None:
    assert f"pid {p.pid}" in message and f"host {socket.gethostname()}" in message, message
    assert f"`facejob {command}`" in message and "started 20" in message, message


def test_local_lock_one_writer_and_released_by_death(tmp_path):
    out = tmp_path / "out"
    holder = spawn_holder(str(out))
    try:
        with pytest.raises(LockHeld) as e:
            with hold(str(out), "cluster"):
                pass
        assert_names_holder(str(e.value), holder)
        # Every writing command refuses at once, with one line naming the holder (exit 75).
        src = tmp_path / "src"
        src.mkdir()
        commands = (["index", str(src), "--out", str(out)], ["cluster", str(out)], ["reduce", str(out)],
                    ["dedup", str(out)], ["label", str(out)], ["report", str(out)])
        runs = [subprocess.Popen(FACEJOB + argv, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for argv in commands]
        for argv, run in zip(commands, runs):
            _, stderr = run.communicate(timeout=120)
            assert run.returncode == lock.EXIT_LOCKED, (argv, stderr)
            assert len(stderr.strip().splitlines()) == 1, stderr
            assert_names_holder(stderr, holder)
        cfg = tmp_path / "nightly.yaml"
        cfg.write_text(json.dumps({"sources": [str(src)], "output": str(out), "index": {"workers": 1}}))
        r = subprocess.run([sys.executable, "jobs/nightly.py", "--config", str(cfg)], cwd=REPO, env=env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == lock.EXIT_LOCKED and f"pid {holder.pid}" in r.stderr, r.stderr
    finally:
        kill(holder)
    # The kernel dropped the dead holder's lock: the next writer goes ahead at once.
    with hold(str(out), "cluster"):
        with hold(str(out), "label"):  # re-entrant in one process (the nightly job nests them)
            info = json.loads((out / LOCK).read_text())
            assert info["pid"] == os.getpid() and info["command"] == "cluster"


def test_s3_lease_is_renewed_refused_and_taken_over_when_expired(s3, caplog):
    out = s3.uri("out")
    ttl = 2.0
    holder = spawn_holder(out, ttl_s=ttl, environ=env(child_env(s3.endpoint)))
    from facejob.io import s3 as fs3

    lease = f"{out}/{LOCK}"
    try:
        first = fs3.get_versioned(lease)
        assert json.loads(first[0])["pid"] == holder.pid
        # Renewed (a new ETag) again and again, for longer than its ttl: still refused.
        seen, deadline = {first[1]}, time.monotonic() + 60
        while len(seen) < 4:
            assert time.monotonic() < deadline, "the lease was not renewed"
            seen.add(fs3.get_versioned(lease)[1])
            time.sleep(0.2)
        with pytest.raises(LockHeld) as e:
            with hold(out, "index"):
                pass
        assert_names_holder(str(e.value), holder)
        r = subprocess.run(FACEJOB + ["cluster", out], cwd=REPO, env=env(child_env(s3.endpoint)),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == lock.EXIT_LOCKED and f"pid {holder.pid}" in r.stderr, r.stderr
    finally:
        kill(holder)
    # A dead holder's lease stays until it expires, then the next writer takes it over.
    assert fs3.get_versioned(lease) is not None
    caplog.set_level(logging.WARNING, logger="facejob.io.lock")
    deadline = time.monotonic() + 60
    while True:
        try:
            with hold(out, "index", ttl_s=ttl):
                mine = json.loads(fs3.get_versioned(lease)[0])
                assert mine["pid"] == os.getpid() and mine["command"] == "index"
            break
        except LockHeld:
            assert time.monotonic() < deadline, "the expired lease was never taken over"
            time.sleep(0.2)
    assert any("took over the expired lease" in r.message and f"pid {holder.pid}" in r.message
               for r in caplog.records)
    assert fs3.get_versioned(lease) is None, "a released lease is deleted"


def test_two_index_runs_on_one_output(ray_address, data_dir, tmp_path):
    src, out = tmp_path / "photos", tmp_path / "out"
    photos = lfw_photos(data_dir, 16, src)
    # One worker: the first run takes long enough that the second surely starts while it runs.
    cmd = FACEJOB + ["index", str(src), "--out", str(out), "--workers", "1", "--shard-size", "2", "-q",
                     "--address", ray_address]
    first = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK).is_file() or f'"pid": {first.pid}' not in (out / LOCK).read_text():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        second = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == lock.EXIT_LOCKED, (first.poll(), second.stdout, second.stderr)
        assert first.poll() is None, "the second run must be refused while the first one runs"
        assert_names_holder(second.stderr, first)
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            kill(first)
    assert first.returncode == 0, stderr[-3000:]
    images, faces = rows_by_name(out)  # fails on a duplicated photo, face or face id
    assert sorted(images) == sorted(p.name for p in photos)
    assert len(faces) == sum(r["n_faces"] for r in images.values())
    for name, row in images.items():
        assert row["n_faces"] == sum(1 for (n, _) in faces if n == name), name

    # Readers never wait for writers: search runs while another process holds the lock.
    r = subprocess.run(FACEJOB + ["reduce", str(out)], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    holder = spawn_holder(str(out), "reduce")
    try:
        some_face = next(iter(faces.values()))["face_id"]
        r = subprocess.run(FACEJOB + ["search", str(out), "--face-id", some_face, "--json"], cwd=REPO, env=env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-3000:]
        matches = json.loads(r.stdout)[0]["matches"]
        assert len(matches) == min(10, len(faces) - 1) and some_face not in {m["face_id"] for m in matches}
    finally:
        kill(holder)


def test_s3_lease_taken_over_under_a_stalled_run_is_reported(s3):
    from facejob.io import s3 as fs3

    out = s3.uri("out")
    lease = f"{out}/{LOCK}"
    with pytest.raises(lock.LockLost, match="taken over by another run"):
        with hold(out, "index", ttl_s=1.0):
            # Another run took the lease over (as it would after this one stalled past its ttl).
            s3.put(f"out/{LOCK}", json.dumps({"command": "index", "host": "other", "pid": 1,
                                                    "started": "2026-01-01T00:00:00+00:00"}).encode())
            handle, _ = lock._held[(os.getpid(), out)]
            deadline = time.monotonic() + 30
            while not handle.lost:   # the next renewal's If-Match fails
                assert time.monotonic() < deadline, "the renewal never noticed"
                time.sleep(0.05)
    assert json.loads(fs3.get_versioned(lease)[0])["host"] == "other", "the other run's lease is left alone"
