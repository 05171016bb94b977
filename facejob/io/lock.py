"""One writer per output: every command that writes OUT holds its lock for as long as it runs.

Local folder: `fcntl.flock` on OUT/.facejob.lock. The kernel drops the lock when the holding
process ends, however it ends (SIGKILL included), so a stale lock cannot exist; the file only
says who held it last. NFS (v4, or v3 with lockd) honours flock as a POSIX lock.

S3 prefix: a lease object OUT/.facejob.lock created with a conditional PUT (If-None-Match: *),
so of two writers exactly one creates it. The holder rewrites it every ttl/3 seconds with
If-Match on its own ETag (a background thread), and deletes it, again with If-Match, when
done. A lease not renewed for `ttl_s` (by the S3 server's clock: its Date header against the
object's Last-Modified, so local clocks do not matter) belongs to a dead run and is taken over,
once more with If-Match, so two late-comers cannot both take it.

A second writer fails at once with LockHeld, whose message names the holder (host, pid, command,
start time). The lock is re-entrant within a process (the nightly job holds it around `index`
and the reducer, which take it again). Readers (`facejob search`) never take it.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from facejob.contract.layout import LOCK
from facejob.io.storage import Store, open_store

log = logging.getLogger(__name__)

LEASE_TTL_S = 60.0
EXIT_LOCKED = 75              # sysexits' EX_TEMPFAIL: another run holds the output; try later


class LockHeld(RuntimeError):
    """Another process holds the output's lock."""


class LockLost(RuntimeError):
    """This run's S3 lease was taken over while it ran (it stalled for longer than the lease)."""


def _holder(command: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": uuid.uuid4().hex}


def _describe(root: str, raw: bytes) -> str:
    try:
        h = json.loads(raw)
        who = f"`facejob {h['command']}` on host {h['host']}, pid {h['pid']}, started {h['started']}"
    except (ValueError, KeyError, TypeError):
        who = "another process (its lock file says nothing more)"
    return f"{root} is being written by {who}; try again when it has finished"


class _FileLock:
    def __init__(self, folder: Path, holder: dict[str, Any]):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file, not an output folder; give a new folder or an earlier output")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # less the umask, like every output file
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(self.fd, 4096, 0)
            os.close(self.fd)
            raise LockHeld(_describe(str(folder), raw)) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        os.close(self.fd)  # closing the last descriptor drops the flock


class _Lease:
    def __init__(self, root: str, holder: dict[str, Any], ttl_s: float):
        from facejob.io import s3

        self.s3, self.uri, self.ttl = s3, f"{root}/{LOCK}", ttl_s
        self.holder = {**holder, "ttl_s": ttl_s}
        self.lost = False
        self._stop = threading.Event()
        self.etag = s3.put_conditional(self.uri, self._body())
        while self.etag is None:
            cur = s3.get_versioned(self.uri)
            if cur is None:  # released in between: try to create it again
                self.etag = s3.put_conditional(self.uri, self._body())
                continue
            raw, etag, modified, now = cur
            try:
                old = json.loads(raw)
                ttl = float(old.get("ttl_s", LEASE_TTL_S))
            except (ValueError, TypeError, AttributeError):
                old, ttl = {}, LEASE_TTL_S
            if old.get("token") == self.holder["token"]:  # our own PUT, answered late and retried
                self.etag = etag
                break
            # +1 s: Last-Modified has whole seconds only.
            if now <= modified + ttl + 1:
                raise LockHeld(_describe(root, raw))
            self.etag = s3.put_conditional(self.uri, self._body(), if_match=etag)
            if self.etag is None:
                raise LockHeld(_describe(root, (s3.get_versioned(self.uri) or (b"",))[0]))
            log.warning("took over the expired lease of %s (not renewed for %.0f s): %s",
                        root, now - modified, _describe(root, raw))
        self._thread = threading.Thread(target=self._renew, name="facejob-lease", daemon=True)
        self._thread.start()

    def _body(self) -> bytes:
        return json.dumps({**self.holder, "renewed": time.time()}).encode()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                etag = self.s3.put_conditional(self.uri, self._body(), if_match=self.etag)
            except Exception as e:  # S3 down for a while: keep trying until the lease runs out
                log.warning("could not renew the lease %s: %s", self.uri, e)
                continue
            if etag is None:
                self.lost = True
                log.error("lost the lease %s: another run took it over; this run's output is suspect", self.uri)
                return
            self.etag = etag

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.lost:
            raise LockLost(f"the lease on {self.uri} was taken over by another run while this one ran; "
                           f"rerun when that one has finished")
        self.s3.delete_conditional(self.uri, self.etag)


_held: dict[tuple[int, str], list] = {}   # (pid, output root) → [handle, depth]
_held_lock = threading.Lock()


@contextlib.contextmanager
def hold(out: str | Store, command: str, ttl_s: float = LEASE_TTL_S, create: bool = True) -> Iterator[None]:
    """Hold the writer lock of `out` (a folder or s3:// prefix, or its Store) for the block.

    Raises LockHeld at once if another process holds it; re-entrant within this process.
    With create=False a local output folder that does not exist is not created (and there is
    nothing to lock: the command will find nothing to work on).
    """
    store = open_store(out)
    path = store.local_path()
    if not create and path is not None and not path.is_dir():
        yield
        return
    key = (os.getpid(), store.root)
    with _held_lock:
        entry = _held.get(key)
        if entry is None:
            holder = _holder(command)
            handle = _FileLock(path, holder) if path is not None else _Lease(store.root, holder, ttl_s)
            entry = _held[key] = [handle, 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _held_lock:
            entry[1] -= 1
            done = entry[1] == 0
            if done:
                del _held[key]
        if done:
            entry[0].release()


F = TypeVar("F", bound=Callable[..., Any])


def writes_output(command: str) -> Callable[[F], F]:
    """Decorator for functions whose first argument is an existing output they update: hold its lock."""
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(out, *args, **kwargs):
            with hold(out, command, create=False):
                return fn(out, *args, **kwargs)
        return run  # type: ignore[return-value]
    return wrap
