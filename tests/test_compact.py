"""`facejob compact`: small parts merged into large ones, the same rows before and after, and a
crash at every step (the process killed before each write or delete it makes) leaves an output
that readers, `facejob index` and `facejob reduce` trust, equal to the uncompacted one.

The output compacted is a real `facejob index` run over LFW photos, one part per two photos.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import facejob
from facejob.config import CompactConfig, IndexConfig, RunConfig
from facejob.contract.layout import SUPERSEDES
from facejob.indexing import plan as planning
from facejob.indexing.compact import compact, merged_id, plan_merges
from facejob.io.storage import LocalStore, committed_parts, open_store, read_footer
from tests.s3_server import child_env, lfw_photos, read_tables

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 12
CONFIG = IndexConfig(run=RunConfig(workers=1, shard_size=2, compact_parts=0))  # one worker process is plenty here
PART_PHOTOS = 5   # 6 parts of 2 photos → 2 merged parts of 6

# Compaction in a child process whose store dies (os._exit, as SIGKILL would) before its k-th
# write or delete; with k past the end it completes and prints how many it made.
CRASH = """
import os, sys
from facejob.config import CompactConfig
from facejob.indexing.compact import compact
from facejob.io.storage import open_store

store, k, made = open_store(sys.argv[1]), int(sys.argv[2]), [0]
def dying(op):
    def run(*args):
        if made[0] == k:
            os._exit(137)
        made[0] += 1
        return op(*args)
    return run
store.write_bytes, store.delete = dying(store.write_bytes), dying(store.delete)
compact(store, CompactConfig(part_photos=int(sys.argv[3])))
print(made[0])
"""


def crash_compaction(out: str, k: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CRASH, out, str(k), str(PART_PHOTOS)], capture_output=True,
                          text=True, timeout=300, env={**(env or os.environ), "PYTHONPATH": str(REPO)})


@pytest.fixture(scope="module")
def photos(data_dir, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("compact") / "photos"
    lfw_photos(data_dir, N_PHOTOS, src)
    return src


@pytest.fixture(scope="module")
def reference(ray_local, photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = facejob.index([str(photos)], str(out), CONFIG, progress=False)
    assert summary.ok and summary.counts["shards"] == N_PHOTOS // 2 and summary.counts["faces"] >= N_PHOTOS
    return out


def sorted_rows(out: str | Path) -> tuple[pa.Table, pa.Table]:
    """(images, faces) the readers see, in a fixed order: every column, the shard column included."""
    images, faces = read_tables(out)
    return images.sort_by("uri"), faces.sort_by("face_id")


def assert_equal_rows(got: str | Path, want: str | Path) -> None:
    gi, gf = sorted_rows(got)
    wi, wf = sorted_rows(want)
    assert gi.num_rows == wi.num_rows == N_PHOTOS and gf.num_rows == wf.num_rows
    assert gi.equals(wi) and gf.equals(wf)


def part_files(out: Path, kind: str) -> list[str]:
    return sorted(p.name for p in (out / kind).glob("part-*.parquet"))


def clusters_by_face(out: Path) -> set[frozenset[str]]:
    t = pq.read_table(out / "clusters.parquet", columns=["face_id", "cluster_id"]).to_pylist()
    groups: dict[int, set[str]] = {}
    for r in t:
        groups.setdefault(r["cluster_id"], set()).add(r["face_id"])
    return {frozenset(g) for g in groups.values()}


def test_plan_merges_gathers_consecutive_small_parts():
    sizes = [("a", 2), ("b", 2), ("big", 9), ("c", 2), ("d", 1), ("e", 4), ("f", 1)]
    assert plan_merges(sizes, 5) == [["a", "b", "c"], ["d", "e"]]   # f alone stays; big is never rewritten
    assert plan_merges([("a", 1)], 5) == [] and plan_merges([], 5) == []
    assert merged_id(["a", "b"]) == merged_id(["a", "b"]) != merged_id(["a", "c"])


def test_compact_keeps_every_row(reference, photos, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = part_files(out, "images")
    s = compact(str(out), CompactConfig(part_photos=PART_PHOTOS))
    assert (s.parts_before, s.parts_after, s.merged, s.photos_moved) == (6, 2, 2, N_PHOTOS)
    assert part_files(out, "images") == part_files(out, "faces") and len(part_files(out, "images")) == 2
    assert not set(before) & set(part_files(out, "images"))
    assert_equal_rows(out, reference)
    again = compact(str(out), CompactConfig(part_photos=PART_PHOTOS))   # both parts hold >= 5 photos now
    assert (again.parts_before, again.parts_after) == (2, 2)
    # Nothing to redo for the next run, which trusts the merged parts as they are.
    rerun = facejob.index([str(photos)], str(out), CONFIG, progress=False)
    assert rerun.counts["processed"] == 0 and rerun.counts["unchanged"] == N_PHOTOS


def test_index_compacts_when_parts_exceed_the_limit(reference, photos, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    config = IndexConfig(run=RunConfig(workers=1, shard_size=2, compact_parts=5))   # 6 parts > 5
    summary = facejob.index([str(photos)], str(out), config, progress=False)
    assert summary.counts["processed"] == 0 and summary.counts["parts_merged"] == 5   # 6 → 1 (100,000 per part)
    assert len(part_files(out, "images")) == len(part_files(out, "faces")) == 1
    assert_equal_rows(out, reference)


def test_cli_compact(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    r = subprocess.run([sys.executable, "-m", "facejob", "compact", str(out), "--part-photos", "100"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "6 parts → 1" in r.stdout
    assert_equal_rows(out, reference)
    r = subprocess.run([sys.executable, "-m", "facejob", "compact", str(tmp_path / "nothing")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert r.returncode == 3 and "run `facejob index` first" in r.stderr and not (tmp_path / "nothing").exists()


def test_crash_at_every_step_leaves_a_trusted_output(reference, photos, tmp_path):
    from facejob.reduce.pipeline import reduce

    whole = tmp_path / "whole"
    shutil.copytree(reference, whole)
    done = crash_compaction(str(whole), 10**6)
    assert done.returncode == 0, done.stderr
    steps = int(done.stdout.split()[-1])
    assert steps == 2 * 2 + 2 * 6 + 1   # per merged part: 2 writes; per replaced part: 2 deletes; the checkpoint
    reduce(str(whole))
    want_clusters = clusters_by_face(whole)
    for k in range(steps):
        out = tmp_path / f"crash{k}"
        shutil.copytree(reference, out)
        r = crash_compaction(str(out), k)
        assert r.returncode == 137, (k, r.stderr)
        assert_equal_rows(out, reference)          # readers count old parts or merged ones, never both
        rerun = facejob.index([str(photos)], str(out), CONFIG, progress=False)
        assert rerun.ok and rerun.counts["processed"] == 0 and rerun.counts["unchanged"] == N_PHOTOS, k
        # The rerun cleared what the crash left: no replaced or uncommitted part remains.
        assert part_files(out, "images") == part_files(out, "faces"), k
        assert_equal_rows(out, reference)
        reduce(str(out))
        assert clusters_by_face(out) == want_clusters, k
        s = compact(str(out), CompactConfig(part_photos=PART_PHOTOS))
        assert s.parts_after == 2 and part_files(out, "images") == part_files(whole, "images"), k
        assert_equal_rows(out, reference)
        shutil.rmtree(out)


def test_retire_forgets_what_a_merged_part_replaced(reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    store = LocalStore(out)
    replaced = [planning.shard_of(r) for r in committed_parts(store, "images/")]
    compact(str(out), CompactConfig(part_photos=100))
    (merged,) = [planning.shard_of(r) for r in committed_parts(store, "images/")]
    assert json.loads(read_footer(store, f"images/part-{merged}.parquet").metadata[SUPERSEDES]) == replaced
    uri = read_tables(out)[0].column("uri")[0].as_py()
    planning.retire(store, {merged: {uri}})
    assert SUPERSEDES not in (read_footer(store, f"images/part-{merged}.parquet").metadata or {})
    # so a new part that takes a replaced shard's name (the same photos redone) counts again
    shutil.copyfile(reference / "images" / f"part-{replaced[0]}.parquet", out / "images" / f"part-{replaced[0]}.parquet")
    shutil.copyfile(reference / "faces" / f"part-{replaced[0]}.parquet", out / "faces" / f"part-{replaced[0]}.parquet")
    assert f"images/part-{replaced[0]}.parquet" in committed_parts(store, "images/")


def test_compact_on_s3_with_a_crash(reference, s3, tmp_path):
    for p in sorted(reference.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            s3.put(f"out/{p.relative_to(reference)}", p.read_bytes())
    out = s3.uri("out")
    env = child_env(s3.endpoint)
    r = crash_compaction(out, 2 + 3, env)   # the first merged part committed, 3 of its 6 deletions done
    assert r.returncode == 137, r.stderr
    assert_equal_rows(out, reference)
    s3.client.delete_object(Bucket=s3.bucket, Key="out/.facejob.lock")   # the dead run's lease, as if expired
    s = compact(out, CompactConfig(part_photos=PART_PHOTOS))
    # the replaced parts' 3 leftover files (which 3: deletions run side by side) are cleared first
    assert (s.parts_before, s.parts_after, s.merged) == (4, 2, 1) and s.healed >= 2
    assert_equal_rows(out, reference)
    images = sorted(k for k in s3.keys("out/images/"))
    assert images == sorted(k.replace("faces/", "images/") for k in s3.keys("out/faces/")) and len(images) == 2
    assert all(planning.shard_of(k).startswith("merged-") for k in images)
    assert open_store(out).list("images/") == [k.removeprefix("out/") for k in images]
