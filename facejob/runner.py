"""Running an index job on Ray: one task per shard, models loaded once per worker process.

Driver: list → plan → retire → submit shards (at most `workers` in flight) → progress → run.json.
Worker: `Pipeline.process_shard` → faces part, then images part (the commit marker), each written
atomically. Tasks are retried when a worker dies; a shard that keeps killing its worker is split
into one task per image, so a single poisoned photo fails alone with an `error: crash` row.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import resource
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from facejob import decode, plan as planning, schema
from facejob.config import ConfigError, IndexConfig
from facejob.pipeline import Pipeline, shard_tables, ImageResult
from facejob.sources import ImageRef, list_images
from facejob.storage import Store, open_store, write_parquet

log = logging.getLogger("facejob")

TASK_RETRIES = 3          # a dead worker process is retried this many times per shard
IMAGE_RETRIES = 1         # ...and, after a shard keeps crashing, each image alone this many times

_pipelines: dict[str, Pipeline] = {}


def _pipeline(config: IndexConfig) -> Pipeline:
    """The worker process's Pipeline for this config; models load on first use only."""
    key = json.dumps(config.to_dict(), sort_keys=True)
    if key not in _pipelines:
        _pipelines.clear()
        if config.embedder == "torch" or config.detector == "cnn":
            import torch

            torch.set_num_threads(max(1, int(config.cpus_per_worker)))  # one worker per core
        _pipelines[key] = Pipeline(config)
    return _pipelines[key]


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return socket.gethostname()


def _write_shard(store: Store, shard: str, images: pa.Table, faces: pa.Table) -> None:
    write_parquet(store, planning.FACES_DIR + planning.part_name(shard), faces)
    write_parquet(store, planning.IMAGES_DIR + planning.part_name(shard), images)


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
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


def run_shard(shard: planning.Shard, out: str, config: IndexConfig) -> dict[str, Any]:
    """Process one shard and commit its parts. Pure apart from the two writes; Ray wraps it."""
    pipe = _pipeline(config)
    pipe.timings.clear()
    images, faces = pipe.process_shard(shard.refs, shard.id)
    t = time.perf_counter()
    _write_shard(open_store(out), shard.id, images, faces)
    pipe.timings["write"] += time.perf_counter() - t
    return _stats(images, faces, pipe.timings, _node_id())


def run_image(ref: ImageRef, shard: str, config: IndexConfig) -> tuple[pa.Table, pa.Table]:
    """One image alone (the fallback for a shard that kills its worker): its images and faces rows."""
    pipe = _pipeline(config)
    return shard_tables([ref], [pipe.process_ref(ref)], shard, pipe.detector.name, pipe.embedder.name)


@dataclass
class RunSummary:
    """What `index` did; also written to OUT/run.json."""

    out: str
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    failed_shards: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed_shards


class Progress:
    """One status line on a terminal (rewritten in place), a log line every 10 s otherwise."""

    def __init__(self, total_shards: int, total_images: int, stream=sys.stderr, enabled: bool = True):
        self.total_shards, self.total_images = total_shards, total_images
        self.shards = self.images = self.faces = self.errors = 0
        self.megapixels = 0.0
        self.t0 = time.perf_counter()
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self._last = 0.0

    def update(self, stats: dict[str, Any]) -> None:
        self.shards += 1
        self.images += stats["images"]
        self.faces += stats["faces"]
        self.errors += stats["status"].get(schema.STATUS_ERROR, 0)
        self.megapixels += stats.get("megapixels", 0.0)
        now = time.perf_counter()
        if not self.enabled or (not self.tty and now - self._last < 10 and self.shards < self.total_shards):
            return
        self._last = now
        elapsed = max(now - self.t0, 1e-9)
        line = (f"shards {self.shards}/{self.total_shards}  images {self.images}/{self.total_images}  "
                f"faces {self.faces}  errors {self.errors}  {self.images / elapsed:.1f} photos/s  "
                f"{self.megapixels / elapsed:.1f} MP/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.shards == self.total_shards else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("facejob", "dlib-bin", "face-recognition-models", "ray", "pyarrow", "numpy", "pillow", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _worker_env() -> dict[str, str]:
    """Settings the workers need from this process (never credentials: workers use their own chain)."""
    from facejob import s3

    env = {k: v for k, v in os.environ.items() if k.startswith("FACEJOB_")}
    env.update(s3.worker_env())
    # OpenMP's default busy-waiting makes multi-threaded torch crawl when cores are shared.
    env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    # Under `ray job submit --runtime-env-json`, Ray refuses to merge a key the job already sets.
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
        taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        taken = set()
    return {k: v for k, v in env.items() if k not in taken}


def _start_ray(config: IndexConfig):
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                                  runtime_env={"env_vars": _worker_env()})
    address = config.address or os.environ.get("RAY_ADDRESS")  # set inside `ray job submit`
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Ray starts workers at niceness 15 by default; on our own local Ray the workers *are*
        # the job, and at 15 any other busy process on the machine starves them.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=config.workers or os.cpu_count(), **kwargs)
    return ray


def _worker_count(config: IndexConfig) -> int:
    if config.workers:
        return config.workers
    resources = _start_ray(config).cluster_resources()
    if config.gpus_per_worker:
        return max(1, int(resources.get("GPU", 0) / config.gpus_per_worker))
    return max(1, int(resources.get("CPU", 1) / config.cpus_per_worker))


def _execute(shards: list[planning.Shard], out: str, config: IndexConfig, progress: Progress
             ) -> tuple[list[dict], list[str]]:
    ray = _start_ray(config)
    from ray.exceptions import RayTaskError

    resources = dict(num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker)
    shard_task = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=True, **resources)(run_shard)
    workers = _worker_count(config)
    pending = list(reversed(shards))
    running: dict[Any, planning.Shard] = {}
    done: list[dict] = []
    crashed: list[planning.Shard] = []
    failed: list[str] = []
    while pending or running:
        while pending and len(running) < workers:
            shard = pending.pop()
            running[shard_task.remote(shard, out, config)] = shard
        ready, _ = ray.wait(list(running), num_returns=1)
        shard = running.pop(ready[0])
        try:
            stats = ray.get(ready[0])
        except RayTaskError as e:  # the code raised, on every retry
            log.error("shard %s failed: %s", shard.id, e.cause if hasattr(e, "cause") else e)
            failed.append(shard.id)
            continue
        except Exception as e:  # the worker process died on every retry
            log.warning("shard %s killed its worker %d times (%s); retrying image by image",
                        shard.id, TASK_RETRIES + 1, type(e).__name__)
            crashed.append(shard)
            continue
        done.append(stats)
        progress.update(stats)
    for shard in crashed:
        stats = _execute_image_by_image(ray, shard, out, config, resources)
        done.append(stats)
        progress.update(stats)
    return done, failed


def _execute_image_by_image(ray, shard: planning.Shard, out: str, config: IndexConfig, resources: dict) -> dict:
    image_task = ray.remote(max_retries=IMAGE_RETRIES, retry_exceptions=False, **resources)(run_image)
    tasks = [image_task.remote(ref, shard.id, config) for ref in shard.refs]
    results = []
    for ref, task in zip(shard.refs, tasks):
        try:
            results.append(ray.get(task))
        except Exception:
            msg = (f"{decode.CRASH}: the worker process died while processing this image "
                   f"({IMAGE_RETRIES + 1} attempts alone, after {TASK_RETRIES + 1} with its shard)")
            log.error("%s: %s", ref.uri, msg)
            results.append(shard_tables([ref], [ImageResult(schema.STATUS_ERROR, msg)], shard.id, "", ""))
    images = pa.concat_tables([r[0] for r in results])
    faces = pa.concat_tables([r[1] for r in results])
    _write_shard(open_store(out), shard.id, images, faces)
    return _stats(images, faces, Counter(), "driver")


def totals(store: Store) -> dict[str, int]:
    """Counts over everything the output holds now (all runs)."""
    from facejob.storage import read_parts

    images = read_parts(store, planning.IMAGES_DIR, schema.IMAGES, ["status", "n_faces"])
    statuses = Counter(images.column("status").to_pylist())
    return {"images": images.num_rows, "ok": statuses.get("ok", 0), "no_face": statuses.get("no_face", 0),
            "error": statuses.get("error", 0), "faces": int(sum(images.column("n_faces").to_pylist()))}


def index(sources: list[str], out: str, config: IndexConfig | None = None, progress: bool = True
          ) -> RunSummary:
    """Index every photo under `sources` into the output folder or s3:// prefix `out`.

    Returns the run summary (also written to OUT/run.json). Photos already indexed in `out` with
    the same size and mtime/etag are not processed again unless `config.force`.
    """
    config = config or IndexConfig()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    store = open_store(out)
    _check_same_models(store, config)
    skipped: list[str] = []
    refs = list(list_images(sources, config.extensions, skipped))
    t_list = time.perf_counter()
    orphans = planning.remove_orphans(store)
    catalog = planning.read_catalog(store)
    plan = planning.make_plan(refs, catalog, planning.source_roots(sources), config.force)
    planning.retire(store, plan.retire)
    shards: list[planning.Shard] = []
    if plan.todo:
        size = config.shard_size or planning.auto_shard_size(len(plan.todo), _worker_count(config))
        shards = planning.cut_shards(plan.todo, size)
    t_plan = time.perf_counter()
    log.info("listed %d photos (%d other files skipped by extension): %d new, %d changed, %d unchanged, "
             "%d deleted → %d shards", plan.listed, len(skipped), plan.new, plan.changed, plan.unchanged,
             plan.deleted, len(shards))
    bar = Progress(len(shards), len(plan.todo), enabled=progress)
    done, failed = _execute(shards, out, config, bar) if shards else ([], [])
    t_run = time.perf_counter()

    stage_s: Counter[str] = Counter()
    status: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for s in done:
        stage_s.update(s["timings"])
        status.update(s["status"])
        nodes[s["node"]] += 1
    processed = sum(s["images"] for s in done)
    megapixels = sum(s.get("megapixels", 0.0) for s in done)
    summary = RunSummary(out=store.root, failed_shards=failed)
    summary.counts = {
        "listed": plan.listed, "skipped_by_extension": len(skipped), "new": plan.new, "changed": plan.changed,
        "unchanged": plan.unchanged, "retried": plan.retried, "deleted": plan.deleted, "processed": processed,
        "ok": status.get("ok", 0), "no_face": status.get("no_face", 0), "error": status.get("error", 0),
        "faces": sum(s["faces"] for s in done), "shards": len(shards), "failed_shards": len(failed),
        "orphan_parts_removed": orphans,
    }
    summary.timings = {"list_s": t_list - t0, "plan_s": t_plan - t_list, "process_s": t_run - t_plan,
                       "total_s": time.perf_counter() - t0,
                       **{f"{k}_worker_s": round(v, 3) for k, v in sorted(stage_s.items())}}
    summary.report = {
        "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
        "sources": list(sources), "out": store.root, "config": config.to_dict(), "versions": _versions(),
        "counts": summary.counts, "totals": totals(store), "timings": summary.timings,
        "images_per_s": processed / max(t_run - t_plan, 1e-9) if processed else 0.0,
        "megapixels": round(megapixels, 1),
        "megapixels_per_s": megapixels / max(t_run - t_plan, 1e-9) if processed else 0.0,
        # the worst worker's peak resident memory (the bound to size machines by)
        "worker_peak_rss_mb": max((s.get("peak_rss_mb", 0.0) for s in done if s["node"] != "driver"), default=0.0),
        "nodes": dict(nodes), "failed_shards": failed, "skipped_examples": skipped[:20],
    }
    _write_run_json(store, summary.report)
    return summary


def _check_same_models(store: Store, config: IndexConfig) -> None:
    """Refuse to mix faces found or embedded differently into one output (unless redoing all)."""
    if config.force or not store.exists("run.json") or not store.list(planning.IMAGES_DIR):
        return
    try:
        old = IndexConfig.from_dict(json.loads(store.read_bytes("run.json"))["config"]).model_fingerprint()
    except (ValueError, KeyError, TypeError):
        return
    new = config.model_fingerprint()
    diff = {k: (old[k], new[k]) for k in new if old.get(k) != new[k]}
    if diff:
        what = ", ".join(f"{k}={b!r} (output has {a!r})" for k, (a, b) in diff.items())
        raise ConfigError(f"{store.root} was indexed with other settings: {what}; "
                          f"use --force to redo every photo, or another --out")


def _write_run_json(store: Store, report: dict[str, Any]) -> None:
    """run.json holds the last run in full and a short history of earlier ones."""
    history: list[dict] = []
    if store.exists("run.json"):
        try:
            old = json.loads(store.read_bytes("run.json"))
            history = old.get("history", [])
            history.append({k: old[k] for k in ("started", "counts", "timings") if k in old})
        except (ValueError, KeyError):
            pass
    doc = {**report, "history": history[-50:]}
    store.write_bytes("run.json", json.dumps(doc, indent=2, default=str).encode())
