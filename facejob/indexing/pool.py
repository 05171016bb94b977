"""The Ray actor pool that runs an index job's shards: workers that each build one FaceModel
and take shard after shard.

Actor (`ShardWorker`): per-process setup and `FaceModel` in its constructor, then shard after
shard: `FaceModel.process_shard` → faces part, then images part (the commit marker), each
written atomically.

Failures: an exception in a shard retries it (TASK_RETRIES), then the shard is reported
failed. A dead actor (the process died: OOM, a segfault in a decoder, a killed node) is
replaced and its shard retried; a shard that kills its worker TASK_RETRIES + 1 times is split
into one job per image, so a single poisoned photo fails alone with an `error: crash` row, and
an image whose processing raises gets a `failed` reason with the exception. Workers whose
constructor keeps failing (no model can be built) fail the run; no photo is marked.

The only module that imports Ray; it knows shards (plan.Shard), not plans, and writes parts,
never run.json.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import socket
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from facejob.config import IndexConfig, ModelConfig, RunConfig
from facejob.contract import layout
from facejob.contract.schema import Reason, Status
from facejob.indexing.pipeline import FaceModel, ImageResult, setup_process, shard_tables
from facejob.indexing.plan import Shard
from facejob.io.sources import ImageRef
from facejob.io.storage import Store, open_store, write_parquet

log = logging.getLogger("facejob")

TASK_RETRIES = 3          # a shard is retried this many times (after an exception or a dead worker)
IMAGE_RETRIES = 1         # ...and, after a shard keeps killing its worker, each image alone this many times
START_GRACE_S = 60.0      # a worker not started by then loses its shard to a free one, once nothing else is left


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return socket.gethostname()


def _write_shard(store: Store, shard: str, images: pa.Table, faces: pa.Table) -> None:
    write_parquet(store, layout.faces_part(shard), faces)
    write_parquet(store, layout.images_part(shard), images)


def _peak_rss_mb() -> float:
    """This process's peak resident memory: Linux's VmHWM (of this process image; ru_maxrss would
    start at the parent's at fork), else ru_maxrss (macOS reports bytes)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def _stats(images: pa.Table, faces: pa.Table, timings: Counter, node: str) -> dict[str, Any]:
    statuses = Counter(images.column("status").to_pylist())
    w = images.column("width").to_numpy(zero_copy_only=False)
    h = images.column("height").to_numpy(zero_copy_only=False)
    megapixels = float(np.nansum(w.astype(np.float64) * h.astype(np.float64))) / 1e6
    return {"images": images.num_rows, "faces": faces.num_rows, "status": dict(statuses),
            "megapixels": megapixels, "timings": dict(timings), "node": node, "pid": os.getpid(),
            "peak_rss_mb": round(_peak_rss_mb(), 1)}


def run_shard(model: FaceModel, shard: Shard, out: str, node: str = "local") -> dict[str, Any]:
    """Process one shard with `model` and commit its parts (faces, then images)."""
    model.timings.clear()
    images, faces = model.process_shard(shard.refs, shard.id)
    t = time.perf_counter()
    _write_shard(open_store(out), shard.id, images, faces)
    model.timings["write"] += time.perf_counter() - t
    return _stats(images, faces, model.timings, node)


class ShardWorker:
    """A Ray actor's state: one FaceModel, built in the constructor, used for every shard.

    `model_class` lets tests run a FaceModel subclass (e.g. one that kills its process on a
    poisoned photo) through the real pool.
    """

    def __init__(self, model: dict[str, Any], max_pixels: int, threads: int,
                 model_class: type[FaceModel] = FaceModel) -> None:
        setup_process(threads)
        self.model = model_class(ModelConfig.from_dict(model), max_pixels)
        setup_process(threads)  # a backend may have loaded torch just now
        self.node = _node_id()
        self.shards = 0

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "node": self.node}

    def run_shard(self, shard: Shard, out: str) -> dict[str, Any]:
        stats = run_shard(self.model, shard, out, self.node)
        self.shards += 1
        return {**stats, "model_builds": FaceModel.builds, "worker_shards": self.shards}

    def run_image(self, ref: ImageRef, shard: str) -> tuple[pa.Table, pa.Table]:
        """One image alone (the fallback for a shard that kills its worker): its two tables."""
        m = self.model
        return shard_tables([ref], [m.process_ref(ref)], shard, m.detector.name, m.embedder.name)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during the run; says how many shards were committed before it."""


class ShardProgress(Protocol):
    """What the pool tells as it goes: each committed shard's stats; close() on Ctrl-C."""

    def update(self, stats: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def worker_env() -> dict[str, str]:
    """Settings Ray workers need from this process, for `runtime_env` (never credentials: workers
    use their own chain). The reducer's Ray edge hands its workers the same."""
    from facejob.io import s3

    env = {k: v for k, v in os.environ.items() if k.startswith("FACEJOB_") or k == "MIMALLOC_PURGE_DELAY"}
    env.update(s3.worker_env())
    # Under `ray job submit --runtime-env-json`, Ray refuses to merge a key the job already sets.
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        taken = set()
    return {k: v for k, v in env.items() if k not in taken}


def _start_ray(run: RunConfig):
    import ray

    if ray.is_initialized():
        return ray
    # Ray says nothing (not even its token-authentication notice) unless asked with --verbose:
    # our own log holds what a user needs, and a --log-format json stream must stay JSON.
    verbose = log.isEnabledFor(logging.DEBUG)
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=verbose,
                                  logging_level=logging.INFO if verbose else logging.ERROR,
                                  runtime_env={"env_vars": worker_env()})
    address = run.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray starts workers at niceness 15 by default; on our own local Ray the workers *are*
        # the job, and at 15 any other busy process on the machine starves them.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=run.workers or os.cpu_count(), **kwargs)
    logging.getLogger("ray").handlers[:] = log.handlers  # what Ray still says, in our format
    return ray


def _cluster_max(ray) -> dict[str, float]:
    """The most resources the cluster may ever have: the autoscaler's node groups × max counts
    when it publishes them (Ray's own, private, accessor; unbounded counts are ignored), else
    what the cluster has now."""
    now = ray.cluster_resources()
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception:  # older/newer Ray, or no autoscaler: what is there now
        most = {}
    return {k: max(now.get(k, 0), most.get(k, 0) if most.get(k, 0) < sys.maxsize else 0)
            for k in set(now) | set(most)}


def worker_count(run: RunConfig) -> int:
    """--workers, else as many workers as the cluster's CPUs (or GPUs) can ever hold."""
    if run.workers:
        return run.workers
    most = _cluster_max(_start_ray(run))
    if run.gpus_per_worker:
        return max(1, int(most.get("GPU", 0) / run.gpus_per_worker))
    return max(1, int(most.get("CPU", 1) / run.cpus_per_worker))


@dataclass
class _Job:
    shard: Shard
    ref: ImageRef | None = None    # set: one image of a shard that kept killing its worker
    attempt: int = 0


class _Isolated:
    """A shard processed image by image; written by the driver once every image is done."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.tables: list[tuple[pa.Table, pa.Table] | None] = [None] * len(shard.refs)

    def done(self) -> bool:
        return all(t is not None for t in self.tables)


def _error_tables(ref: ImageRef, shard: str, reason: Reason, message: str) -> tuple[pa.Table, pa.Table]:
    return shard_tables([ref], [ImageResult(Status.ERROR, reason.error(message))], shard, "", "")


class _Pool:
    """ShardWorker actors, each holding one FaceModel, and the job each one has.

    Every actor gets a job as soon as it exists: Ray runs it once the actor is constructed, as
    it would a queued task. A job whose actor is still not constructed after START_GRACE_S,
    when nothing else is left to do and another actor is free, moves to that actor (the first
    one's node may never come: an autoscaler at its limit), so a run never waits on it.
    """

    def __init__(self, ray, actor_cls, args: tuple, size: int, out: str) -> None:
        self.ray, self.actor_cls, self.args, self.out = ray, actor_cls, args, out
        self.born: dict[Any, float] = {}                  # live actor → when it was asked for
        self.starting: dict[Any, Any] = {}                # its ready() call → actor, until constructed
        self.free: list[Any] = []
        self.running: dict[Any, tuple[Any, _Job]] = {}    # call → (actor, job)
        for _ in range(size):
            self.start()

    def start(self) -> None:
        actor = self.actor_cls.remote(*self.args)
        self.born[actor] = time.monotonic()
        self.starting[actor.ready.remote()] = actor
        self.free.append(actor)

    def is_starting(self, actor) -> bool:
        return actor in self.starting.values()

    def constructed(self, actor) -> bool:
        """Did this (now dead) actor get through its constructor? Its ready() call says, even if
        the death was reported first."""
        ref = next((r for r, a in self.starting.items() if a == actor), None)
        if ref is None:
            return True
        try:
            self.ray.get(ref)
            del self.starting[ref]
            return True
        except Exception:
            return False

    def drop(self, actor) -> list[_Job]:
        """Kill an actor; the jobs it had, to be run again elsewhere."""
        self.ray.kill(actor, no_restart=True)
        self.born.pop(actor, None)
        self.starting = {r: a for r, a in self.starting.items() if a != actor}
        self.free = [a for a in self.free if a != actor]
        lost = [ref for ref, (a, _) in self.running.items() if a == actor]
        return [self.running.pop(ref)[1] for ref in lost]

    def submit(self, job: _Job, actor=None) -> None:
        """Give `job` to `actor`, else to a free one (constructed ones first)."""
        if actor is None:
            ready = [a for a in self.free if not self.is_starting(a)]
            actor = (ready or self.free)[-1]
        self.free.remove(actor)
        call = (actor.run_image.remote(job.ref, job.shard.id) if job.ref
                else actor.run_shard.remote(job.shard, self.out))
        self.running[call] = (actor, job)

    def next(self) -> tuple[Any, Any, _Job | None] | None:
        """The next call to finish: (ref, actor, job; None for an actor's ready()), or None
        after a few seconds without one."""
        done, _ = self.ray.wait([*self.starting, *self.running], num_returns=1, timeout=5)
        if not done:
            return None
        ref = done[0]
        if ref in self.starting:
            return ref, self.starting.pop(ref), None
        actor, job = self.running.pop(ref)
        return ref, actor, job

    def reassign_stuck(self) -> None:
        """Move jobs off actors not constructed within START_GRACE_S to free, constructed ones."""
        now = time.monotonic()
        for actor, job in list(self.running.values()):
            targets = [a for a in self.free if not self.is_starting(a)]
            if targets and self.is_starting(actor) and now - self.born[actor] > START_GRACE_S:
                log.info("a worker has not started in %.0f s; its shard moves to another", now - self.born[actor])
                self.drop(actor)
                self.submit(job, targets[-1])

    def close(self) -> None:
        for actor in list(self.born):
            self.drop(actor)


def execute(shards: list[Shard], out: str, config: IndexConfig, progress: ShardProgress,
             model_class: type[FaceModel] = FaceModel) -> tuple[list[dict], list[str]]:
    """Run every shard on a pool of ShardWorker actors; returns (stats per shard, failed shard ids).
    Ctrl-C kills the workers and raises Interrupted (committed shards stay)."""
    run = config.run
    ray = _start_ray(run)
    from ray.exceptions import RayError, RayTaskError

    # SPREAD: one worker per node first, as plain tasks were placed
    actor_cls = ray.remote(ShardWorker).options(
        num_cpus=run.cpus_per_worker, num_gpus=run.gpus_per_worker, max_restarts=0, max_task_retries=0,
        scheduling_strategy="SPREAD")
    args = (config.model.to_dict(), run.max_pixels, max(1, int(run.cpus_per_worker)), model_class)
    size = min(worker_count(run), len(shards))
    pool = _Pool(ray, actor_cls, args, size, out)
    queue = deque(_Job(s) for s in shards)
    isolated: dict[str, _Isolated] = {}
    done: list[dict] = []
    failed: list[str] = []
    start_failures, ever_started = 0, False

    def start_failed(actor, error: Exception) -> None:
        """A worker whose constructor failed (no model): its jobs go back, unharmed, to the queue."""
        nonlocal start_failures
        start_failures += 1
        why = str(error).strip().splitlines()[-1]  # Ray's message ends with the constructor's error
        queue.extendleft(pool.drop(actor))
        if start_failures > (TASK_RETRIES + 1) * (1 if not ever_started else size):
            raise RuntimeError(f"index workers cannot start (the last said: {why})") from error
        log.warning("an index worker failed to start (%s); starting another", why)
        pool.start()

    try:
        while queue or pool.running:
            while queue and pool.free:
                pool.submit(queue.popleft())
            if not queue:
                pool.reassign_stuck()
            event = pool.next()
            if event is None:
                continue
            ref, actor, job = event
            if job is None:  # an actor finished its constructor, or failed in it
                try:
                    ray.get(ref)
                    ever_started = True
                except Exception as e:
                    start_failed(actor, e)
                continue
            try:
                result = ray.get(ref)
            except RayTaskError as e:  # the code raised; the worker is fine
                pool.free.append(actor)
                cause = getattr(e, "cause", None) or e
                job.attempt += 1
                if job.ref is not None:  # keeps its own reason if it has one, else `failed`
                    reason = Reason.of(str(cause))
                    msg = str(cause).split(": ", 1)[-1] if reason else f"{type(cause).__name__}: {cause}"
                    log.error("%s: %s", job.ref.uri, msg)
                    _image_done(isolated, job, _error_tables(job.ref, job.shard.id, reason or Reason.FAILED, msg),
                                out, done, progress)
                elif job.attempt > TASK_RETRIES:
                    log.error("shard %s failed: %s", job.shard.id, cause)
                    failed.append(job.shard.id)
                else:
                    log.warning("shard %s raised (%s); retrying", job.shard.id, cause)
                    queue.append(job)
                continue
            except RayError as e:  # the worker process died (or was lost)
                if not pool.constructed(actor):  # ...in its constructor: not the job's fault
                    queue.appendleft(job)
                    start_failed(actor, e)
                    continue
                pool.drop(actor)
                pool.start()
                job.attempt += 1
                if job.ref is None and job.attempt > TASK_RETRIES:
                    log.warning("shard %s killed its worker %d times; retrying it image by image",
                                job.shard.id, job.attempt)
                    isolated[job.shard.id] = _Isolated(job.shard)
                    queue.extend(_Job(job.shard, r) for r in job.shard.refs)
                elif job.ref is not None and job.attempt > IMAGE_RETRIES:
                    msg = (f"the worker process died while processing this image ({job.attempt} attempts "
                           f"alone, after {TASK_RETRIES + 1} with its shard)")
                    log.error("%s: %s", job.ref.uri, msg)
                    _image_done(isolated, job, _error_tables(job.ref, job.shard.id, Reason.CRASH, msg),
                                out, done, progress)
                else:
                    log.info("a worker died (%s); retrying %s", type(e).__name__,
                             job.ref.uri if job.ref else f"shard {job.shard.id}")
                    queue.appendleft(job)
                continue
            pool.free.append(actor)
            if job.ref is not None:
                _image_done(isolated, job, result, out, done, progress)
            else:
                done.append(result)
                progress.update(result)
    except KeyboardInterrupt:  # committed shards stay; the next run does the rest
        progress.close()
        pool.close()  # first: a worker may commit the shard it had until it is killed
        parts = set(open_store(out).list(layout.IMAGES_DIR))
        committed = sum(layout.images_part(s.id) in parts for s in shards)
        raise Interrupted(f"{committed} of {len(shards)} shards done") from None
    finally:
        pool.close()
    return done, failed


def _image_done(isolated: dict[str, _Isolated], job: _Job, tables: tuple[pa.Table, pa.Table], out: str,
                done: list[dict], progress: ShardProgress) -> None:
    """Record one image of an isolated shard; commit the shard when it was the last one."""
    iso = isolated[job.shard.id]
    iso.tables[job.shard.refs.index(job.ref)] = tables
    if not iso.done():
        return
    images = pa.concat_tables([t[0] for t in iso.tables])
    faces = pa.concat_tables([t[1] for t in iso.tables])
    _write_shard(open_store(out), job.shard.id, images, faces)
    stats = _stats(images, faces, Counter(), "driver")
    done.append(stats)
    progress.update(stats)
    del isolated[job.shard.id]
