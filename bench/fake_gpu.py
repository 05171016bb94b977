"""GPU workers load their models once: `facejob index --gpus-per-worker 1` vs the CPU path.

Starts its own Ray head (own --temp-dir and ports) that advertises fake GPUs on this CPU
machine, then runs the same job both ways on it, interleaved, ROUNDS times, each into a fresh
output, and prints every wall time, the medians and their ratio:

    gpu:  facejob index SRC --gpus-per-worker 1 --embedder torch --device cpu --shard-size 10 --address HEAD
    cpu:  facejob index SRC --workers 2          --embedder torch --device cpu --shard-size 10 --address HEAD

Before the actor pool, Ray gave GPU tasks a fresh process per shard (max_calls=1), so each
shard paid process start plus torch and model loading. The head is ended by its pid.

    python -m bench.fake_gpu [--src ../shared/data/labelled/dlib_johns] [--rounds 3] [--gpus 2] [--repo DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


WORKER_PORTS = 400      # ports a head's workers may take, from worker_ports_from(...)


def worker_ports_from(taken: list[int]) -> int:
    """The first of WORKER_PORTS worker ports (by pid, so heads started side by side differ)
    that holds none of the `taken` ports: the free ports come from the OS's ephemeral range,
    which the worker range can overlap, and Ray then refuses to start."""
    lo = 20000 + (os.getpid() % 2000) * 10
    while any(lo <= p <= lo + WORKER_PORTS for p in taken):
        lo = lo + WORKER_PORTS + 1 if lo + 2 * WORKER_PORTS < 65000 else 10000
    return lo


def start_head(tmp: Path, gpus: int, cpus: int, env: dict[str, str], repo: str) -> tuple[subprocess.Popen, str]:
    ports = free_ports(9)
    port, nm, om, client, agent, metrics, renv, grpc, dash = ports
    lo = worker_ports_from(ports)
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--num-gpus={gpus}",
           f"--num-cpus={cpus}", f"--temp-dir={tmp}", f"--port={port}", f"--node-manager-port={nm}",
           f"--object-manager-port={om}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={renv}", f"--dashboard-agent-grpc-port={grpc}",
           f"--min-worker-port={lo}", f"--max-worker-port={lo + WORKER_PORTS}", "--include-dashboard=false", f"--dashboard-port={dash}", "--node-ip-address=127.0.0.1",
           "--disable-usage-stats"]
    head = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # ready when a client can see the GPUs
        probe = subprocess.run([sys.executable, "-c", "import ray, json; ray.init(address=%r, logging_level='ERROR'); "
                                "print(json.dumps(ray.cluster_resources()))" % address],
                               env=env, capture_output=True, text=True)
        if probe.returncode == 0 and '"GPU"' in probe.stdout:
            return head, address
        if head.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ray head did not start: {head.stderr.read().decode()[-2000:]}")
        time.sleep(1)


def run_job(kind: str, src: str, out: Path, address: str, env: dict[str, str], repo: str) -> dict:
    common = ["--embedder", "torch", "--device", "cpu", "--shard-size", "10", "--address", address, "-q"]
    extra = ["--gpus-per-worker", "1"] if kind == "gpu" else ["--workers", "2"]
    cmd = [str(Path(sys.executable).with_name("facejob")), "index", src, "--out", str(out), *common, *extra]
    t0 = time.perf_counter()
    # From the measured checkout: Ray puts the driver's working directory on its workers' path.
    r = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{kind} run failed: {r.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    return {"wall_s": wall, "processed": run["counts"]["processed"], "faces": run["counts"]["faces"],
            "workers": run.get("workers", []), "worker_s": sum(v for k, v in run["timings"].items()
                                                               if k.endswith("_worker_s"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=str(REPO.parent / "shared/data/labelled/dlib_johns"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--repo", default=str(REPO), help="facejob checkout to measure (e.g. an older version)")
    args = p.parse_args()
    # Ray's token auth with a token of our own, for the head and every driver (as tests/test_multinode.py).
    env = {**os.environ, "PYTHONPATH": str(Path(args.repo).resolve()), "RAY_worker_niceness": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_ADDRESS": ""}
    tmp = Path(tempfile.mkdtemp(prefix="fj-fakegpu-", dir="/tmp"))
    head, address = start_head(tmp / "ray", args.gpus, args.cpus, env, args.repo)
    print(f"ray head pid {head.pid} at {address}: {args.gpus} fake GPUs, {args.cpus} CPUs")
    walls: dict[str, list[float]] = {"gpu": [], "cpu": []}
    try:
        for rnd in range(args.rounds):
            for kind in (("gpu", "cpu") if rnd % 2 == 0 else ("cpu", "gpu")):
                out = tmp / f"out-{kind}-{rnd}"
                r = run_job(kind, args.src, out, address, env, args.repo)
                walls[kind].append(r["wall_s"])
                procs = ", ".join(f"pid {w['pid']}: {w['shards']} shards, {w['model_builds']} model build(s)"
                                  for w in r["workers"])
                print(f"round {rnd + 1} {kind}: {r['wall_s']:.1f} s wall, {r['processed']} photos, "
                      f"{r['faces']} faces, {r['worker_s']:.1f} s in worker stages; {procs}", flush=True)
                shutil.rmtree(out)
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    gpu, cpu = statistics.median(walls["gpu"]), statistics.median(walls["cpu"])
    print(f"median wall: gpu path {gpu:.1f} s, cpu path {cpu:.1f} s, ratio {gpu / cpu:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
