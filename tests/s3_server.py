"""A real S3 endpoint for tests and benchmarks: moto's server as a subprocess over HTTP on 127.0.0.1.

Nothing patches boto3 in-process; facejob (and every Ray worker it starts) talks HTTP to the
server. `TcpProxy` sits in front of it when a test needs the endpoint itself to misbehave: stop
and restart it (an outage: connections refused, open ones reset) or cut response bodies short.
A restarted moto would come back empty, so outages are made at the proxy, never by killing moto.

Fixtures: `s3_endpoint` (one server per session) and `s3` (a fresh bucket, AWS env vars for this
test, facejob's cached client dropped). Import them into a test module or conftest.py.
The end of the file has helpers for tests and benchmarks that run real jobs: photo sets, output
comparison, and finding or killing the processes a test started (by pid, from /proc).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Never reach for real credentials or the EC2 metadata service from a test.
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
CLEARED_AWS_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "FACEJOB_S3_MAX_ATTEMPTS")


def free_port() -> int:
    """A port that was free a moment ago. Only for programs that need a port number up front and
    cannot bind port 0 themselves (`ray start`): whoever uses it must retry if it is taken."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserve_port(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0: any) that does not listen: the port stays ours and
    connections to it are refused (an endpoint that is down)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    return s


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment for a process that should use `endpoint` with fake credentials."""
    return {**FAKE_AWS_ENV, "AWS_ENDPOINT_URL": endpoint}


def child_env(endpoint: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """A full environment for a subprocess (a job, `ray start`) talking to `endpoint`."""
    env = {k: v for k, v in (base if base is not None else os.environ).items() if k not in CLEARED_AWS_ENV}
    env.update(aws_env(endpoint))
    return env


class MotoServer:
    """`python -m moto.server` on 127.0.0.1, started and stopped as a real process. It binds
    port 0 itself and the port is read from its log, so no other process can take it first."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env or {}   # moto settings, e.g. INITIAL_NO_AUTH_ACTION_COUNT=0: check credentials
        self.port = 0
        self.endpoint = ""
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])

    def start(self, timeout: float = 30.0) -> "MotoServer":
        import re

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=log, stderr=subprocess.STDOUT, env={**child_env("http://127.0.0.1"), **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if not self.port:
                m = re.search(r"Running on http://127\.0\.0\.1:(\d+)", self.log.read_text(errors="replace"))
                if m:
                    self.port = int(m.group(1))
                    self.endpoint = f"http://127.0.0.1:{self.port}"
            if self.port:
                try:
                    with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer within {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)


class TcpProxy:
    """127.0.0.1:<port> → target, byte for byte, with faults on demand.

    The port is bound when the proxy is made and stays bound until close(): while the proxy is
    stopped, a bound socket that does not listen holds it, so connections are refused and no
    other process can take the port. stop() resets every open connection (the endpoint is
    down); start() listens again on the same port. cut_responses(n, times) closes the next
    `times` connections after `n` bytes of response, mid-body.
    """

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._idle: socket.socket | None = reserve_port()
        self.port = self._idle.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut: tuple[int, int] | None = None  # (bytes, connections left to cut)
        self.connections = 0

    def start(self) -> "TcpProxy":
        s, self._idle = self._idle or reserve_port(self.port), None
        s.listen(128)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener:
            _hang_up(listener)  # shutdown() first: it wakes the accept() and ends LISTEN at once
        for c in conns:
            _hang_up(c)
        if listener:
            self._idle = reserve_port(self.port)

    def close(self) -> None:
        self.stop()
        if self._idle:
            self._idle.close()
            self._idle = None

    def cut_responses(self, nbytes: int, times: int = 1) -> None:
        with self._lock:
            self._cut = (nbytes, times)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                down, _ = listener.accept()
            except OSError:
                return  # listener closed by stop()
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                down.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    down.close()
                    up.close()
                    return
                self._conns |= {down, up}
                self.connections += 1
                limit = None
                if self._cut and self._cut[1] > 0:
                    limit = self._cut[0]
                    self._cut = (self._cut[0], self._cut[1] - 1)
            threading.Thread(target=self._pump, args=(down, up, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, down, limit), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _hang_up(src)
            _hang_up(dst)
            with self._lock:
                self._conns -= {src, dst}

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _hang_up(sock: socket.socket) -> None:
    # shutdown() before close(): a bare close() from another thread does not wake a recv()
    # blocked on the socket, so the peer would never see the connection end.
    for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            step()
        except OSError:
            pass


@dataclass
class S3Env:
    """One test's view of the S3 server: its endpoint, a boto3 client and a fresh bucket."""

    endpoint: str
    bucket: str
    client: object

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for p in pages for o in p.get("Contents", [])]


def make_client(endpoint: str):
    import boto3

    env = aws_env(endpoint)
    return boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=endpoint)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto server for the whole session."""
    with MotoServer() as server:
        yield server


def use_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point this process (and Ray workers it starts) at `endpoint`, with fake credentials."""
    from facejob.io import s3 as fs3

    for k in CLEARED_AWS_ENV:
        # setenv first, so monkeypatch restores these even when facejob sets them later.
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    for k, v in aws_env(endpoint).items():
        monkeypatch.setenv(k, v)
    fs3.configure()  # drop a client cached for another endpoint


@pytest.fixture
def s3(s3_endpoint, monkeypatch) -> S3Env:
    """A fresh bucket on the session's moto server, with this test's env pointing at it."""
    from facejob.io import s3 as fs3

    use_endpoint(monkeypatch, s3_endpoint.endpoint)
    client = make_client(s3_endpoint.endpoint)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield S3Env(s3_endpoint.endpoint, bucket, client)
    fs3.configure()


# --- Helpers for tests and benchmarks that run real jobs ------------------------------------
# (They live here so test_failures, test_incremental, test_multinode and bench/ share them.)

def lfw_photos(data_dir: Path, n: int, dest: Path, start: int = 0) -> list[Path]:
    """Copy `n` LFW photos (one per person, in name order, from the `start`-th) into dest/."""
    people = sorted(p for p in (data_dir / "lfw" / "images").iterdir() if p.is_dir())[start:start + n]
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for person in people:
        src = sorted(person.glob("*.jpg"))[0]
        (dest / src.name).write_bytes(src.read_bytes())
        out.append(dest / src.name)
    return out


def read_tables(out: str | Path):
    """(images, faces) of an index output, local or s3://, as pyarrow tables."""
    from facejob.contract import schema
    from facejob.io.storage import open_store, read_parts

    store = open_store(str(out))
    return read_parts(store, "images/", schema.IMAGES), read_parts(store, "faces/", schema.FACES)


def rows_by_name(out: str | Path) -> tuple[dict[str, dict], dict[tuple[str, int], dict]]:
    """Images rows by file name and face rows by (file name, face_idx), without the `shard` column.

    Fails on a duplicated image or face, so every comparison also checks for duplicates.
    """
    images, faces = read_tables(out)
    imgs: dict[str, dict] = {}
    for r in images.to_pylist():
        name = r["uri"].rsplit("/", 1)[-1]
        assert name not in imgs, f"image {name} has two rows"
        r.pop("shard")
        imgs[name] = r
    fcs: dict[tuple[str, int], dict] = {}
    for r in faces.to_pylist():
        key = (r["uri"].rsplit("/", 1)[-1], r["face_idx"])
        assert key not in fcs, f"face {key} has two rows"
        r.pop("shard")
        fcs[key] = r
    assert len({f["face_id"] for f in fcs.values()}) == len(fcs), "duplicate face ids"
    return imgs, fcs


TORCH_ATOL = 1e-6   # measured: up to 2.8e-7 between batch compositions


def assert_same_results(got: str | Path, want: str | Path, same_uris: bool = True, skip: set[str] = frozenset(),
                        atol: float | None = None) -> float:
    """Two outputs hold the same photos with the same statuses, boxes and embeddings.

    Embeddings must be within `atol`; by default bit for bit equal from dlib's embedder, and
    within TORCH_ATOL from the torch embedder (the default), whose float32 sums depend on the
    batch a face was in and its place there. With same_uris=False (one run over S3, one over a
    folder) uri-derived fields are not compared. Returns the largest embedding difference.
    """
    gi, gf = rows_by_name(got)
    wi, wf = rows_by_name(want)
    wi = {k: v for k, v in wi.items() if k not in skip}
    wf = {k: v for k, v in wf.items() if k[0] not in skip}
    gi = {k: v for k, v in gi.items() if k not in skip}
    gf = {k: v for k, v in gf.items() if k[0] not in skip}
    assert sorted(gi) == sorted(wi)
    assert sorted(gf) == sorted(wf)
    image_cols = ["sha256", "width", "height", "status", "error", "n_faces", "size"]
    face_cols = ["sha256", "left", "top", "right", "bottom", "det_score", "landmarks"]
    if same_uris:
        image_cols.append("uri")
        face_cols += ["uri", "face_id"]
    for k in wi:
        assert {c: gi[k][c] for c in image_cols} == {c: wi[k][c] for c in image_cols}, k
    worst = 0.0
    for k in wf:
        assert {c: gf[k][c] for c in face_cols} == {c: wf[k][c] for c in face_cols}, k
        diff = max(abs(a - b) for a, b in zip(gf[k]["embedding"], wf[k]["embedding"]))
        tol = atol if atol is not None else 0.0 if wf[k]["embedder"] == "dlib-resnet" else TORCH_ATOL
        assert diff <= tol, f"{k}: embeddings differ by {diff}"
        worst = max(worst, diff)
    return worst


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_pids(pids: list[int], sig: int = 9) -> None:
    """Signal exactly these processes (ours, collected beforehand), ignoring ones already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_driver_when(driver: subprocess.Popen, ready, timeout: float, after: float = 0.0, what: str = "") -> None:
    """SIGKILL a `facejob index` driver (started with stderr=PIPE) once `ready()` is true, `after`
    seconds later; it must still be running then. The driver is reaped and its stderr closed."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert driver.poll() is None, f"{what}the run ended first: {driver.stderr.read().decode()[-3000:]}"
            assert time.monotonic() < deadline, f"{what}no progress in time"
            time.sleep(0.02)
        time.sleep(after)
        assert driver.poll() is None, f"{what}the run ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stderr.close()


def wait_for_dead_driver_tasks(root: int, timeout: float = 60.0) -> None:
    """Ray ends a killed driver's shard workers; wait for that (below `root`), so no stray shard
    commits under the next run."""
    deadline = time.monotonic() + timeout
    while any(cmdline(pid).startswith("ray::ShardWorker") for pid in descendants(root)):
        assert time.monotonic() < deadline, "the dead driver's tasks kept running"
        time.sleep(0.1)


class Killer(threading.Thread):
    """Kills (SIGKILL) processes below `root` whose title starts with `title` once they have been
    running a task for `after` seconds, `times` times. Ray titles a worker `ray::<function>`
    while it runs that function, so this kills a worker mid-task and nothing else."""

    def __init__(self, root: int, title: str, times: int = 1, after: float = 0.3):
        super().__init__(daemon=True)
        self.root, self.title, self.times, self.after = root, title, times, after
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        first_seen: dict[int, float] = {}
        while not self.stop.is_set() and len(self.killed) < self.times:
            now = time.monotonic()
            for pid in descendants(self.root):
                if not cmdline(pid).startswith(self.title):
                    first_seen.pop(pid, None)
                    continue
                if now - first_seen.setdefault(pid, now) >= self.after:
                    kill_pids([pid])
                    self.killed.append(pid)
                    break
            time.sleep(0.05)
