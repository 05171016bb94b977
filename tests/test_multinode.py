"""A real two-node Ray cluster on 127.0.0.1 (`ray start --head` + `ray start --address`):
`facejob index --address` on it must run shards on both nodes (and run.json must say so), the
documented `ray job submit --working-dir . -- python jobs/nightly.py ...` must work on it, and
`facejob reduce --address` on it must equal the single-process reducer. One cluster for the
module: starting two nodes costs more than any of the tests.

The nodes run with `--block` in their own sessions and are stopped by pid (never `ray stop`,
which would stop every Ray on the machine).
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.ray_cluster import PORT_TRIES, RAY, RayNode, cluster_env, start_head
from tests.s3_server import cmdline, descendants, kill_pids, lfw_photos, rows_by_name

REPO = Path(__file__).resolve().parents[1]
N_PHOTOS = 8


def cluster_nodes(address: str, env: dict[str, str]) -> list[dict]:
    """The alive nodes as the cluster sees them, asked from a separate driver process."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(json.dumps([{'id': n['NodeID'], 'resources': n['Resources'], 'labels': n.get('Labels', {})} "
            "for n in ray.nodes() if n['Alive']]))" % address)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_worker(temp_dir: str, env: dict[str, str], address: str) -> RayNode:
    """A second node joined to `address`, seen alive by the cluster."""
    for attempt in range(PORT_TRIES):
        node = RayNode(temp_dir, env, f"--address={address}", "--num-cpus=1",
                       '--resources={"facejob_worker": 1}', "--labels=facejob-role=worker")
        deadline = time.monotonic() + 120
        while node.proc.poll() is None:
            if len(cluster_nodes(address, env)) >= 2:
                return node
            assert time.monotonic() < deadline, node.output()
            time.sleep(0.5)
        output = node.output()
        node.stop()
        if attempt == PORT_TRIES - 1:
            raise AssertionError(output)
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def two_nodes():
    temp_dir = tempfile.mkdtemp(prefix="fj-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = cluster_env(secrets.token_hex(32))
    nodes: list[RayNode] = []
    try:
        head, address, dashboard = start_head(temp_dir, env, "--num-cpus=1", '--resources={"facejob_head": 1}',
                                              "--labels=facejob-role=head", dashboard=True)
        nodes.append(head)
        nodes.append(start_worker(temp_dir, env, address))
        yield address, env, dashboard
    finally:
        for node in reversed(nodes):
            node.stop()
        # Anything still running from this cluster names its unique temp dir: ours to end.
        kill_pids([pid for pid in descendants(0) if temp_dir in cmdline(pid)])
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_index_runs_shards_on_both_nodes(two_nodes, data_dir, tmp_path):
    address, env, _ = two_nodes
    nodes = cluster_nodes(address, env)
    assert len(nodes) == 2
    by_role = {n["labels"].get("facejob-role"): n for n in nodes}
    assert set(by_role) == {"head", "worker"}
    assert by_role["head"]["resources"].get("facejob_head") == 1
    assert by_role["worker"]["resources"].get("facejob_worker") == 1 and "facejob_head" not in by_role["worker"]["resources"]

    src = tmp_path / "photos"
    lfw_photos(data_dir, N_PHOTOS, src)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "facejob.cli", "index", str(src), "--out", str(out), "--address", address,
           "--workers", "2", "--shard-size", "2", "-q"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["processed"] == N_PHOTOS and run["counts"]["failed_shards"] == 0
    assert set(run["nodes"]) == {n["id"] for n in nodes}, run["nodes"]
    assert sum(run["nodes"].values()) == run["counts"]["shards"]

    images, faces = rows_by_name(out)  # fails on a duplicated image or face
    assert sorted(images) == sorted(p.name for p in src.iterdir())
    assert len(faces) == sum(r["n_faces"] for r in images.values()) == run["counts"]["faces"]


def test_ray_job_submit_runs_the_nightly_job(two_nodes, data_dir, tmp_path):
    _, env, dashboard = two_nodes
    src, out = tmp_path / "photos", tmp_path / "out"
    lfw_photos(data_dir, 4, src, start=100)
    # The documented command, with jobs/nightly.yaml as it is (the settings come from the env).
    cmd = [RAY, "job", "submit", f"--address={dashboard}", "--working-dir", ".", "--",
           f"FACEJOB_ARCHIVE={src}", f"FACEJOB_OUTPUT={out}", "FACEJOB_WORKERS=2",
           "python", "jobs/nightly.py", "--config", "jobs/nightly.yaml"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith('{"status"'))
    summary = json.loads(line)
    assert summary["status"] == "ok" and summary["counts"]["processed"] == 4
    assert summary["reduce"]["summary"]["faces"] == summary["counts"]["faces"]
    # The job's cluster ran the reducer's heavy parts too (facejob/reduce/ray_reduce.py).
    assert sum(summary["reduce"]["summary"]["ray_work"].values()) > 0
    assert (out / "clusters.parquet").is_file() and (out / "run.json").is_file()


def test_two_node_reduce_equals_the_single_process_one(two_nodes, data_dir, tmp_path):
    """`facejob reduce --address` on a two-node cluster: the same clusters, labels, duplicates and
    search results as `facejob reduce` in one process, with reducer work on both nodes."""
    import pyarrow.parquet as pq

    from facejob.config import ReduceConfig
    from facejob.reduce.pipeline import reduce_with
    from facejob.reduce.search_index import search_face
    from tests.test_reduce_data import make_out, person, photos

    address, env, _ = two_nodes
    base = tmp_path / "base"
    make_out(base, photos(data_dir), shard_size=10)          # 10 parts: read by tasks on both nodes
    faces = pq.read_table(base / "faces").to_pylist()
    johns = sorted((r for r in faces if "dlib_johns" in r["uri"]), key=lambda r: r["uri"])
    by: dict[str, list] = {}
    for r in johns:
        by.setdefault(person(r["uri"]), []).append(r)
    labels = tmp_path / "labels.csv"
    labels.write_text("name,uri\n" + "".join(f"{n},{r['uri']}\n" for n, rs in by.items() for r in rs[:3]))
    one, ray_out = tmp_path / "one", tmp_path / "ray"
    shutil.copytree(base, one)
    shutil.copytree(base, ray_out)

    reduce_with(str(one), ReduceConfig(labels=str(labels)))
    cmd = [sys.executable, "-m", "facejob.cli", "reduce", str(ray_out), "--address", address, "--workers", "2",
           "--shards", "2", "--labels", str(labels), "-q"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]

    work = dict(pair.rsplit(" ", 1) for pair in
                next(ln for ln in r.stdout.splitlines() if ln.startswith("ray: ")).split(": ", 2)[2].split(", "))
    assert set(work) == {n["id"] for n in cluster_nodes(address, env)}, r.stdout     # both nodes did work
    assert all(int(c) > 0 for c in work.values())

    for f in ("clusters.parquet", "predictions.parquet", "duplicates.parquet"):
        a, b = pq.read_table(one / f), pq.read_table(ray_out / f)
        assert a.num_rows > 0 and a.equals(b), f
    pred = pq.read_table(one / "predictions.parquet").column("label").to_pylist()
    assert len(set(pred) - {"unknown"}) == len(by)          # the labels did name people
    clusters = pq.read_table(one / "clusters.parquet").column("cluster_id").to_numpy()
    assert len(np.unique(clusters)) < len(clusters)         # and faces did cluster
    for face in faces[::9]:
        a, b = search_face(str(one), face["face_id"], k=5), search_face(str(ray_out), face["face_id"], k=5)
        assert [(m.face_id, m.cluster_id, m.label) for m in a.matches] == \
               [(m.face_id, m.cluster_id, m.label) for m in b.matches]
        np.testing.assert_allclose([m.distance for m in a.matches], [m.distance for m in b.matches], rtol=1e-6)
