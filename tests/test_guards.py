"""No mass retirement by accident: an unmounted, missing or replaced source, or a listing that
lost too many photos, stops the run (exit 2, one line) with the output untouched; the override
flags work; a subfolder that cannot be listed keeps its photos. Local folders and S3."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facejob
from facejob.config import IndexConfig, RunConfig
from facejob.indexing.plan import RetireRefused
from tests.ray_cluster import joined
from tests.s3_server import aws_env, child_env

REPO = Path(__file__).resolve().parents[1]
FACEJOB = [sys.executable, "-m", "facejob.cli"]
CONFIG = IndexConfig(run=RunConfig(workers=1))  # one worker process (torch + models, ~2 CPU s) is plenty here


@pytest.fixture(scope="module")
def ray_local(ray_cluster, s3_endpoint):
    """The session's Ray, joined with workers that reach the moto server (as does this process)."""
    from facejob.io import s3 as fs3

    with pytest.MonkeyPatch.context() as mp:
        for k, v in aws_env(s3_endpoint.endpoint).items():
            mp.setenv(k, v)
        fs3.configure()
        try:
            with joined(ray_cluster, aws_env(s3_endpoint.endpoint)):
                yield
        finally:
            fs3.configure()


def tiny_jpegs(n: int, seed: int = 0) -> dict[str, bytes]:
    """n small noise photos (no face; fast to index), by name."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        out[f"img{i:03d}.jpg"] = buf.getvalue()
    return out


def snapshot(out: Path) -> dict[str, bytes]:
    """The output's parts (not OUT/catalog.parquet: a planning cache, rewritten from them)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))
            if str(p.relative_to(out)) != "catalog.parquet"}


def facejob_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(FACEJOB + list(argv), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def refused(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr


def test_unmounted_missing_or_replaced_source_retires_nothing(ray_local, data_dir, tmp_path):
    # The case: 11 photos of one folder, then the folder "unmounts".
    src = tmp_path / "share" / "John_Shimkus"
    shutil.copytree(data_dir / "labelled/dlib_johns/John_Shimkus", src)
    n = len(list(src.glob("*.jpg")))
    assert n == 11
    out = tmp_path / "out"
    first = facejob.index([str(src)], str(out), CONFIG, progress=False)
    assert first.ok and first.counts["processed"] == n
    before = snapshot(out)

    away = tmp_path / "away"
    src.rename(away)
    src.mkdir()                      # an empty mount point where the share should be
    refused(facejob_cli("index", str(src), "--out", str(out)), "lists no photos", f"holds {n} photos",
            "nothing was retired", "--allow-retire")
    src.rmdir()                      # the mount point itself gone
    refused(facejob_cli("index", str(src), "--out", str(out)), "source not found")
    src.write_bytes(b"not a folder")  # something else in its place: refused even when allowed
    refused(facejob_cli("index", str(src), "--out", str(out), "--allow-retire"), "is not a folder")
    assert snapshot(out) == before

    src.unlink()
    away.rename(src)                 # mounted again: nothing to do
    again = facejob.index([str(src)], str(out), CONFIG, progress=False)
    assert again.counts["unchanged"] == n and again.counts["processed"] == again.counts["deleted"] == 0
    assert snapshot(out) == before

    # Really gone, and said so: the whole folder is retired.
    shutil.rmtree(src)
    src.mkdir()
    r = facejob_cli("index", str(src), "--out", str(out), "--allow-retire")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "run.json").read_text())["counts"]["deleted"] == n
    assert snapshot(out) == {}


def test_share_guard_and_its_overrides(ray_local, tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    photos = tiny_jpegs(30)
    for name, data in photos.items():
        (src / name).write_bytes(data)
    assert facejob.index([str(src)], str(out), CONFIG, progress=False).counts["processed"] == 30
    before = snapshot(out)

    gone = sorted(photos)[:12]       # 40 % of the source, more than the 10 floor
    for name in gone:
        (src / name).unlink()
    refused(facejob_cli("index", str(src), "--out", str(out)), "12 of its 30 indexed photos are gone",
            "more than 10%", "nothing was retired", "--allow-retire")
    with pytest.raises(RetireRefused):
        facejob.index([str(src)], str(out), CONFIG, progress=False)
    assert snapshot(out) == before

    r = facejob_cli("index", str(src), "--out", str(out), "--max-retire-share", "0.5")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "run.json").read_text())["counts"]["deleted"] == 12

    for name in sorted(photos)[12:15]:  # 3 of 18: below the floor, no flag needed
        (src / name).unlink()
    s = facejob.index([str(src)], str(out), CONFIG, progress=False)
    assert s.counts["deleted"] == 3 and s.report["totals"]["images"] == 15


def test_share_guard_on_s3(ray_local, s3):
    photos = tiny_jpegs(30, seed=1)
    for name, data in photos.items():
        s3.put(f"photos/{name}", data)
    out = s3.uri("out")
    assert facejob.index([s3.uri("photos/")], out, CONFIG, progress=False).counts["processed"] == 30
    for name in sorted(photos)[:12]:
        s3.client.delete_object(Bucket=s3.bucket, Key=f"photos/{name}")
    parts = sorted(k for k in s3.keys("out/") if k.endswith(".parquet"))
    refused(facejob_cli("index", s3.uri("photos/"), "--out", out, env=child_env(s3.endpoint)),
            "12 of its 30 indexed photos are gone", "nothing was retired")
    with pytest.raises(RetireRefused):
        facejob.index([s3.uri("photos/")], out, CONFIG, progress=False)
    assert sorted(k for k in s3.keys("out/") if k.endswith(".parquet")) == parts
    s = facejob.index([s3.uri("photos/")], out, IndexConfig(run=RunConfig(workers=1, allow_retire=True)), progress=False)
    assert s.counts["deleted"] == 12 and s.report["totals"]["images"] == 18


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-U", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare -U` (user namespaces) to be refused a folder as root")
def test_unlistable_subfolder_keeps_its_photos(ray_local):
    # Root may list anything; in a user namespace without a uid mapping it may not, so the
    # run sees a folder it cannot list, as on a share with broken permissions.
    base = Path(tempfile.mkdtemp(prefix="fj-unlisted-", dir="/tmp"))
    try:
        base.chmod(0o755)
        src, out = base / "src", base / "out"
        photos = tiny_jpegs(6, seed=2)
        for i, (name, data) in enumerate(photos.items()):
            (src / ("open" if i < 3 else "locked")).mkdir(parents=True, exist_ok=True)
            (src / ("open" if i < 3 else "locked") / name).write_bytes(data)
        assert facejob.index([str(src)], str(out), CONFIG, progress=False).counts["processed"] == 6
        before = snapshot(out)
        (src / "locked").chmod(0o000)
        for p in [out, *out.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        r = subprocess.run(["unshare", "-U", *FACEJOB, "index", str(src), "--out", str(out), "-q"], cwd=REPO,
                           capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 0, r.stderr
        assert "could not be listed" in r.stderr and str(src / "locked") in r.stderr
        counts = json.loads((out / "run.json").read_text())["counts"]
        assert (counts["unlisted"], counts["unlisted_folders"], counts["deleted"]) == (3, 1, 0)
        assert counts["unchanged"] == 3 and counts["processed"] == 0
        assert snapshot(out) == before
    finally:
        (base / "src" / "locked").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
