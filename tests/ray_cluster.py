"""Real Ray clusters for tests: `ray start --block` nodes on 127.0.0.1, each with its own temp dir
and ports, stopped by pid (never `ray stop`, which would stop every Ray on the machine).

The session shares one head (conftest's `ray_cluster`); test_multinode starts its own two nodes.
Ray 2.60's `ray start` turns token auth on: conftest sets RAY_AUTH_MODE/RAY_AUTH_TOKEN (the
session's token) before Ray is imported, so in-process drivers and `facejob` subprocesses join
the shared head with no further setup; test_multinode gives its nodes a token of their own.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.s3_server import free_port, kill_pids, descendants

RAY = str(Path(sys.executable).with_name("ray"))
PORT_TRIES = 3  # `ray start` needs port numbers up front; one taken in between is retried


def cluster_env(token: str) -> dict[str, str]:
    """Environment of the nodes and of every driver: Ray's token auth with this token."""
    # `python` in a job's entrypoint must be this environment's.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ADDRESS": ""}


class RayNode:
    """One `ray start --block` process: its node's raylet and workers live and die with it."""

    def __init__(self, temp_dir: str, env: dict[str, str], *args: str):
        ports = {f"--{name}": str(free_port()) for name in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")}
        cmd = [RAY, "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
               "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()], *args]
        self.log = tempfile.TemporaryFile()
        # Umask 022, as a login shell has: the workers' files under OUT must come out readable
        # by others whatever umask the test runner has (test_nightly_defaults checks).
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, preexec_fn=lambda: os.umask(0o022))

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        # SIGKILL by pid: `ray start --block` on SIGTERM can hang on its exit handlers.
        kill_pids([self.proc.pid, *descendants(self.proc.pid)])
        self.proc.wait()
        self.log.close()


def start_head(temp_dir: str, env: dict[str, str], *args: str, dashboard: bool = False) -> tuple[RayNode, str, str]:
    """A head node, healthy (the GCS answers, and with `dashboard` the job server too);
    (node, address, dashboard url or "")."""
    for attempt in range(PORT_TRIES):
        port, dash = free_port(), free_port()
        shown = [f"--include-dashboard={str(dashboard).lower()}"]
        if dashboard:
            shown += [f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1"]
        head = RayNode(temp_dir, env, "--head", f"--port={port}", *shown, *args)
        address, url = f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}" if dashboard else ""
        deadline = time.monotonic() + 120
        while head.proc.poll() is None:
            try:  # `ray job submit` talks to the job server: wait for it too
                subprocess.run([RAY, "health-check", f"--address={address}"], check=True,
                               capture_output=True, timeout=30, env=env)
                if dashboard:
                    subprocess.run([RAY, "job", "list", f"--address={url}"], check=True,
                                   capture_output=True, timeout=30, env=env)
                return head, address, url
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                assert time.monotonic() < deadline, head.output()
                time.sleep(0.5)
        output = head.output()
        head.stop()
        if attempt == PORT_TRIES - 1:
            raise AssertionError(output)
    raise AssertionError("unreachable")


@contextmanager
def joined(address: str, env_vars: dict[str, str] | None = None):
    """This process as a driver of the Ray at `address` (its workers get `env_vars` too), and
    RAY_ADDRESS pointing `facejob` subprocesses there."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ADDRESS", address)
        ray.init(address=address, logging_level="WARNING", runtime_env={"env_vars": env_vars} if env_vars else None)
        try:
            yield address
        finally:
            ray.shutdown()
