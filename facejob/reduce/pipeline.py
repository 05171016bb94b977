"""`reduce`: every step after indexing, in order (index, metric head, cluster, label, dedup), over
faces read once; `reduce_with` takes its settings from a facejob.config.ReduceConfig.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from facejob.config import MIN_QUALITY, ReduceConfig
from facejob.contract.layout import LABELS_STORED
from facejob.io.lock import writes_output
from facejob.io.storage import Store, open_store

from . import corrections as corr
from .clustering import ClusterSummary, cluster
from .deduping import DedupSummary, dedup
from .embeddings import ALL_COLUMNS, read_faces
from .hnsw import update_index
from .labelling import LabelSummary, add_labels, label, refresh_metric, saved_label_params

if TYPE_CHECKING:   # the Ray path, imported only when asked for (it imports Ray)
    from .ray_reduce import RayReducer

log = logging.getLogger("facejob.reduce")

LATE_COLUMNS = ("landmarks", "sha256")    # on Ray, read by the steps that use them


@dataclass
class ReduceSummary:
    faces: int
    index_s: float
    cluster: ClusterSummary | None
    label: LabelSummary | None
    dedup: DedupSummary | None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)   # seconds per step
    ray_work: dict[str, int] | None = None     # on Ray: tasks and actors per node id


@writes_output("reduce")
def reduce(out: str | Store, rebuild_index: bool = False, threshold: float | None = None,
           k: int | None = None, min_quality: float = MIN_QUALITY, corrections: str | Path | None = None,
           progress: bool = False, labels: str | Path | None = None,
           label_threshold: float | None = None, metric: str = "learned",
           engine: RayReducer | None = None) -> ReduceSummary:
    """Everything after indexing: index, cluster, label (when labels are stored or given), dedup.
    Faces below `min_quality` do not seed clusters or train the SVMs, but every face is
    clustered and named; `threshold` and `k` left out are the kept ones (see cluster),
    `label_threshold` left out the saved one.

    `corrections` (a file from the report page) is first added to the ones stored in OUT; all
    stored corrections apply to the clustering and the labels. `labels` (CSV or folder) are
    added to the stored labels first (checked: a LabelsError stores nothing), so tonight's
    metric head and clusters use them too. `progress` shows the steps done. An `engine`
    (facejob.reduce.ray_reduce.RayReducer) reads the faces and runs the kNN graph, clustering
    and predictions on Ray; the outputs are those of the single-process path.
    """
    from facejob.progress import Progress

    store = open_store(out)
    t0 = time.perf_counter()
    # On Ray the driver reads no descriptors: its Faces fetch them from the engine's shards by row.
    # Nor the columns only some steps use (landmarks: dedup; sha256: dedup, and the label steps
    # when OUT is named), which those steps read again (10M faces: ~1 GiB less in the other steps).
    faces = (read_faces(store, ALL_COLUMNS) if engine is None
             else engine.read_faces(store, [c for c in ALL_COLUMNS if c not in LATE_COLUMNS], embeddings=False))
    t_read = time.perf_counter() - t0
    if corrections is not None:
        corr.add(store, corrections)
    bar = Progress("reduce", 4, "steps", enabled=progress)
    t0 = time.perf_counter()
    if engine is None:
        fi = update_index(store, faces, rebuild=rebuild_index, log=log.info)
    else:
        fi = None
        engine.build()      # its shards: filled from the parts it read, not from `faces`
        engine.save_index(store, faces, rebuild=rebuild_index, log=log.info)    # they are OUT/index/
    t_index = time.perf_counter() - t0
    bar.advance(1, faces=len(faces))
    steps = {"read_s": t_read, "index_s": t_index}
    t0 = time.perf_counter()
    if labels is not None:      # stored before the metric head and clusters, which then use them too
        add_labels(store, labels, faces)     # (on Ray its descriptors come from the shards, built above)
    named = store.exists(LABELS_STORED) or bool(corr.resolve(corr.load(store)).names)
    if named and metric == "learned":
        refresh_metric(store, faces)      # before clustering, so stored labels shape tonight's clusters
    steps["metric_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    cs = cluster(store, threshold, k, faces=faces, fi=fi, min_quality=min_quality, metric=metric, engine=engine)
    bar.advance(1, clusters=cs.clusters)
    steps["cluster_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    params = saved_label_params(store)
    if label_threshold is not None:
        params = dataclasses.replace(params, threshold=label_threshold)
    ls = (label(store, None, params, faces=faces, min_quality=min_quality, metric=metric, engine=engine)
          if named else None)
    bar.advance(1)
    steps["label_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    n_faces = len(faces)
    if engine is not None:     # dedup reads its own columns: these are not held into it
        faces = None
    ds = dedup(store, faces=faces, fi=fi, engine=engine)
    bar.advance(1, duplicates=ds.duplicates)
    steps["dedup_s"] = time.perf_counter() - t0
    return ReduceSummary(n_faces, round(t_index, 2), cs, ls, ds, {k: round(v, 2) for k, v in steps.items()},
                         dict(engine.work) if engine is not None else None)


def reduce_with(out: str | Store, cfg: ReduceConfig, progress: bool = False) -> ReduceSummary:
    """`reduce` with the settings of a facejob.config.ReduceConfig (the `facejob reduce` flags,
    the nightly job's `reduce:` keys); labels and corrections may be s3:// keys. With an
    address or workers, the heavy parts run on Ray (facejob.reduce.ray_reduce)."""
    import tempfile
    from contextlib import nullcontext

    if cfg.address or cfg.workers:
        from .ray_reduce import RayReducer

        engine = RayReducer(cfg.address, cfg.workers, cfg.shards)
    else:
        engine = None
    with tempfile.TemporaryDirectory() as tmp, (engine or nullcontext()):
        return reduce(out, rebuild_index=cfg.rebuild_index, threshold=cfg.cluster_threshold, k=cfg.cluster_k,
                      min_quality=cfg.min_quality, corrections=_local(cfg.corrections, tmp), progress=progress,
                      labels=_local(cfg.labels, tmp), label_threshold=cfg.label_threshold, metric=cfg.metric,
                      engine=engine)


def _local(uri: str | None, tmp: str) -> str | None:
    """A local path for a labels or corrections file given as an s3:// key (read locally)."""
    if uri is None or not uri.startswith("s3://"):
        return uri
    from facejob.io import s3

    path = Path(tmp) / Path(s3.split_uri(uri)[1]).name
    path.write_bytes(s3.read_bytes(uri))
    return str(path)
