"""The `facejob index` driver: list → plan → retire → save OUT/model.json → run the shards on
the Ray pool (pool.py) → progress → the catalog checkpoint → run.json.
"""
from __future__ import annotations

import json
import logging
import platform
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from facejob.config import CompactConfig, IndexConfig, ModelConfig, ModelMismatch, RunConfig, model_differences
from facejob.contract import layout
from facejob.contract.schema import IMAGES, Status
from facejob.indexing import plan as planning
from facejob.indexing.compact import CompactSummary, compact_store
from facejob.indexing.pipeline import FaceModel
from facejob.indexing.pool import execute, worker_count
from facejob.io import lock
from facejob.io.sources import Listing, list_images
from facejob.io.storage import Store, open_store, read_parts
from facejob.progress import Progress as ProgressBar

log = logging.getLogger("facejob")


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
    """Index progress in photos (with shards, faces, errors and megapixels/s alongside), via facejob.progress."""

    def __init__(self, total_shards: int, total_images: int, stream=None, enabled: bool = True,
                 start: float | None = None):
        self.total_shards = total_shards
        self.bar = ProgressBar("index", total_images, "photos", stream=stream, enabled=enabled, rates=("MP",),
                               start=start)

    def update(self, stats: dict[str, Any]) -> None:
        self.bar.advance(stats["images"], shards=1, faces=stats["faces"],
                         errors=stats["status"].get(Status.ERROR.value, 0), MP=stats.get("megapixels", 0.0))

    def close(self) -> None:
        self.bar.close()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("facejob", "dlib-bin", "face-recognition-models", "ray", "pyarrow", "numpy", "pillow", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def totals(store: Store) -> dict[str, int]:
    """Counts over everything the output holds now (all runs)."""
    images = read_parts(store, layout.IMAGES_DIR, IMAGES, ["status", "n_faces"])
    # Arrow counts, not Python lists: at archive scale a list of statuses is a GiB of str objects
    counted = pc.value_counts(images.column("status")) if images.num_rows else []
    statuses = {c["values"].as_py(): c["counts"].as_py() for c in counted}
    return {"images": images.num_rows, **{s.value: statuses.get(s.value, 0) for s in Status},
            "faces": int(pc.sum(images.column("n_faces")).as_py() or 0)}


def index(sources: list[str], out: str, config: IndexConfig | None = None, progress: bool = True,
          model_class: type[FaceModel] = FaceModel) -> RunSummary:
    """Index every photo under `sources` into the output folder or s3:// prefix `out`.

    Returns the run summary (also written to OUT/run.json). Photos already indexed in `out` with
    the same size and mtime/etag are not processed again unless `config.run.force`.
    `model_class` is the FaceModel the workers build (tests pass a subclass). Holds the output's
    writer lock throughout (facejob.io.lock.LockHeld if another run has it); refuses
    (plan.RetireRefused, nothing retired) a listing that would retire too much (see
    plan.check_retirement).
    """
    store = open_store(out)
    config = config or IndexConfig(saved_model(store) or ModelConfig(), RunConfig())
    new_folder = getattr(store, "path", None)
    new_folder = new_folder if new_folder is not None and not new_folder.exists() else None
    with lock.hold(store, "index"):
        try:
            return _index(sources, store, config, progress, model_class)
        except BaseException:
            if new_folder is not None:
                _remove_if_empty(new_folder)
            raise


def _remove_if_empty(folder: Path) -> None:
    """Remove an output folder this run created if it holds nothing but the lock file (the
    run failed before writing anything: a missing source, a wrong setting, Ctrl-C)."""
    if {p.name for p in folder.iterdir()} <= {layout.LOCK}:
        (folder / layout.LOCK).unlink(missing_ok=True)
        folder.rmdir()


def _index(sources: list[str], store: Store, config: IndexConfig, progress: bool,
           model_class: type[FaceModel]) -> RunSummary:
    out, run = store.root, config.run
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    _check_same_models(store, config)
    listing = Listing()
    listed = planning.listing_table(list_images(sources, run.extensions, listing))   # columns, not objects
    skipped = listing.skipped
    t_list = time.perf_counter()
    orphans = planning.remove_orphans(store)
    catalog = planning.read_catalog(store)
    plan = planning.make_plan(listed, catalog, planning.source_roots(sources), run.force, listing.unlisted,
                              skipped, retire_excluded=run.allow_retire)
    quarantined, parts_read = catalog.quarantined, catalog.parts_read
    del listed, catalog   # the driver's largest tables: gone before the run (save_checkpoint reads its own)
    planning.check_retirement(plan, run.max_retire_share, run.allow_retire)
    planning.retire(store, plan.retire)
    shards: list[planning.Shard] = []
    if plan.todo:
        size = run.shard_size or planning.auto_shard_size(len(plan.todo), worker_count(run))
        shards = planning.cut_shards(plan.todo, size)
    t_plan = time.perf_counter()
    log.info("listed %d photos (%d other files skipped by extension): %d new, %d changed, %d unchanged, "
             "%d deleted → %d shards", plan.listed, len(skipped), plan.new, plan.changed, plan.unchanged,
             plan.deleted, len(shards))
    if listing.unlisted:
        log.warning("%d folder(s) could not be listed; their %d indexed photos are kept: %s",
                    len(listing.unlisted), plan.unlisted, ", ".join(listing.unlisted[:5]))
    if plan.excluded:
        log.warning("kept %d indexed photos whose extension this run does not list (extensions: %s); "
                    "--allow-retire (allow_retire: true) retires them", plan.excluded, " ".join(run.extensions))
    bar = Progress(len(shards), len(plan.todo), enabled=progress, start=t_plan)
    config.model.save(store)  # before any part: every reader of faces/ builds the same FaceModel
    done, failed = execute(shards, out, config, bar, model_class) if shards else ([], [])
    if shards:
        bar.close()   # the last line, also when shards failed short of the total; stops the clock
    t_run = t_plan + bar.bar.elapsed  # the progress line's clock: it and the summary show one time
    compacted = _compact_if_many(store, run.compact_parts)
    t_save = time.perf_counter()
    planning.save_checkpoint(store)   # after every change to the parts: tomorrow's plan reads it, not them
    t_save = time.perf_counter() - t_save

    stage_s: Counter[str] = Counter()
    status: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    workers: dict[int, dict[str, Any]] = {}
    for s in done:
        stage_s.update(s["timings"])
        status.update(s["status"])
        nodes[s["node"]] += 1
        if "model_builds" in s:  # shards a worker process took, and how often it built its model
            w = workers.setdefault(s["pid"], {"node": s["node"], "pid": s["pid"], "shards": 0})
            w["shards"] += 1
            w["model_builds"] = s["model_builds"]
    processed = sum(s["images"] for s in done)
    megapixels = sum(s.get("megapixels", 0.0) for s in done)
    summary = RunSummary(out=store.root, failed_shards=failed)
    summary.counts = {
        "listed": plan.listed, "skipped_by_extension": len(skipped), "new": plan.new, "changed": plan.changed,
        "unchanged": plan.unchanged, "retried": plan.retried, "deleted": plan.deleted, "processed": processed,
        **{st.value: status.get(st.value, 0) for st in Status},
        "faces": sum(s["faces"] for s in done), "shards": len(shards), "failed_shards": len(failed),
        "orphan_parts_removed": orphans, "unlisted": plan.unlisted, "unlisted_folders": len(listing.unlisted),
        "kept_other_extension": plan.excluded,
        "quarantined_parts": len(quarantined), "duplicate_rows_removed": plan.duplicates,
        "catalog_parts_read": parts_read,
        "parts_merged": compacted.parts_before - compacted.parts_after,
    }
    summary.timings = {"list_s": t_list - t0, "plan_s": t_plan - t_list, "process_s": t_run - t_plan,
                       "compact_s": compacted.seconds, "checkpoint_s": t_save,
                       "total_s": time.perf_counter() - t0,
                       **{f"{k}_worker_s": round(v, 3) for k, v in sorted(stage_s.items())}}
    summary.report = {
        "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
        "sources": list(sources), "out": store.root, **config.to_dict(), "versions": _versions(),
        "counts": summary.counts, "totals": totals(store), "timings": summary.timings,
        "images_per_s": processed / max(t_run - t_plan, 1e-9) if processed else 0.0,
        "megapixels": round(megapixels, 1),
        "megapixels_per_s": megapixels / max(t_run - t_plan, 1e-9) if processed else 0.0,
        # the worst worker's peak resident memory (the bound to size machines by)
        "worker_peak_rss_mb": max((s.get("peak_rss_mb", 0.0) for s in done if s["node"] != "driver"), default=0.0),
        "nodes": dict(nodes), "workers": list(workers.values()), "failed_shards": failed, "skipped_examples": skipped[:20],
        "unlisted_folders": listing.unlisted[:20], "quarantined": quarantined,
    }
    _write_run_json(store, summary.report)
    return summary


def _compact_if_many(store: Store, limit: int) -> CompactSummary:
    """Merge small parts when the output holds more than `limit` (0: never). The run has just
    cleared orphans, quarantined damage and removed duplicates, so that is not done again."""
    if not limit or len(store.list(layout.IMAGES_DIR)) <= limit:
        return CompactSummary()
    return compact_store(store, CompactConfig(), healed=True)


def saved_model(store: Store) -> ModelConfig | None:
    """The model settings an output already holds faces of (None for a new or empty output).
    Reruns start from them, so an output indexed before a default changed keeps its detector."""
    if not store.list(layout.IMAGES_DIR):
        return None
    try:
        return ModelConfig.load(store)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _check_same_models(store: Store, config: IndexConfig) -> None:
    """Refuse to mix faces found or embedded differently into one output (unless redoing all)."""
    diff = {} if config.run.force else model_differences(store, config.model)
    if diff:
        raise ModelMismatch(store.root, diff, "use --force to redo every photo, or another --out")


def _write_run_json(store: Store, report: dict[str, Any]) -> None:
    """run.json holds the last run in full and a short history of earlier ones."""
    history: list[dict] = []
    if store.exists(layout.RUN_JSON):
        try:
            old = json.loads(store.read_bytes(layout.RUN_JSON))
            history = old.get("history", [])
            history.append({k: old[k] for k in ("started", "counts", "timings") if k in old})
        except (ValueError, KeyError):
            pass
    doc = {**report, "history": history[-50:]}
    store.write_bytes(layout.RUN_JSON, json.dumps(doc, indent=2, default=str).encode())
