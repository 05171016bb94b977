"""The reducer's steps over an index output OUT (a folder or s3:// prefix): index, cluster,
label, dedup, search. Each reads what it needs from OUT and writes its result back atomically.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.config import EXTENSIONS, ModelConfig, ReduceConfig
from facejob.contract.layout import (
    CLUSTERS, CLUSTERS_JSON, DUPLICATES, EVENTS, LABEL_MODEL_JSON, LABELS_STORED, METRIC_JSON, PREDICTIONS,
    RUN_JSON,
)
from facejob.io.lock import writes_output
from facejob.contract.schema import EMBEDDING_DIM
from facejob.io.storage import Store, open_store, read_parquet, write_parquet

from . import corrections as corr
from . import duplicates as dd
from . import metric as lm
from . import svm as lb
from .embeddings import META_COLUMNS, Faces, read_faces, read_images
from .follow import follow
from .errors import LabelsError, NotIndexedError, ReduceError
from .graph import knn_graph
from .hnsw import FaceIndex, IndexParams, update_index
from .hnsw import load as load_index
from .labels_input import Labelled, read_csv, read_folder, too_few
from facejob.config import (
    CLUSTER_K, CLUSTER_MAX_EDGE, CLUSTER_PAIR_MARGIN, CLUSTER_THRESHOLD, MIN_QUALITY, LabelParams,
)
from .linkage import _components, agglomerate, attach, representatives
from .stable import assign_ids

log = logging.getLogger("facejob.reduce")

ALL_COLUMNS = (*META_COLUMNS, "sha256", "landmarks", "quality")   # what `reduce` reads once for every step

CLUSTERS_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("cluster_id", pa.int64()), ("cluster_size", pa.int64()),
    ("representative", pa.string()),      # face_id of the member nearest the cluster's mean
    ("uri", pa.string()), ("face_idx", pa.int32()),
])
EVENTS_SCHEMA = pa.schema([
    ("run_at", pa.string()), ("event", pa.string()),     # merge | split | gone
    ("cluster_id", pa.int64()), ("other_ids", pa.list_(pa.int64())), ("detail", pa.string()),
])
PREDICTIONS_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("label", pa.string()), ("probability", pa.float32()),
    ("labelled", pa.bool_()),             # named by the curator (label kept as given)
    ("uri", pa.string()), ("face_idx", pa.int32()),
    ("quality", pa.float32()),            # the face's quality (facejob.face.quality); null if unknown
])
LABELS_SCHEMA = pa.schema([
    ("name", pa.string()), ("face_id", pa.string()), ("source", pa.string()),
    ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
    # Where the face was when labelled: lets the label follow a moved or re-encoded photo
    # (facejob.reduce.follow). Null for faces of label photos that are not in the archive.
    ("uri", pa.string()), ("sha256", pa.string()),
    ("left", pa.int32()), ("top", pa.int32()), ("right", pa.int32()), ("bottom", pa.int32()),
])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _store(out: str | Store) -> Store:
    return open_store(out)


# ---------------------------------------------------------------------------------- index

@writes_output("reduce")
def index(out: str | Store, params: IndexParams = IndexParams(), rebuild: bool = False,
          faces: Faces | None = None) -> FaceIndex:
    """Build or extend OUT/index/ so it holds exactly the faces of OUT/faces/."""
    store = _store(out)
    faces = faces if faces is not None else read_faces(store)
    return update_index(store, faces, params, rebuild=rebuild, log=log.info)


# -------------------------------------------------------------------------------- cluster

@dataclass
class ClusterSummary:
    faces: int
    clusters: int
    singletons: int
    largest: int
    merges: int
    splits: int
    gone: int
    rounds: int
    edges: int
    timings: dict[str, float] = field(default_factory=dict)
    low_quality: int = 0       # faces below the quality floor: not cluster seeds, attached afterwards
    attached: int = 0          # of those, joined to the one cluster they are near (the rest: alone)


def above_floor(faces: Faces, min_quality: float) -> np.ndarray:
    """Per face: quality >= min_quality (unknown quality passes)."""
    if min_quality <= 0 or "quality" not in faces.meta.column_names:
        return np.ones(len(faces), bool)
    q = faces.meta.column("quality").to_numpy(zero_copy_only=False).astype(np.float64)  # null -> nan
    return ~(q < min_quality)


def _subset(faces: Faces, rows: np.ndarray) -> Faces:
    return Faces(meta=faces.meta.take(pa.array(rows)), embeddings=faces.embeddings[rows])


def cluster_faces(fi: FaceIndex, faces: Faces, threshold: float = CLUSTER_THRESHOLD, k: int = CLUSTER_K,
                  threads: int = -1, applied: corr.Applied | None = None,
                  seeds: np.ndarray | None = None, head: lm.Head | None = None,
                  pair_margin: float = CLUSTER_PAIR_MARGIN) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster label (a row of `faces`) per face of `faces`, and stats.

    The `seeds` faces (default: all) are clustered: the kNN graph then agglomeration. Faces of
    one photo (same uri) are cannot-link; `applied` corrections add must-link ("same person")
    and cannot-link ("not this person") pairs. Every other face then joins the one seed cluster
    it is near (`linkage.attach`) unless that cluster holds a face it cannot be; else it stays
    alone. With a metric `head`, distances are those of the learned descriptors (the kNN graph
    that proposes candidates still comes from the plain ones).
    """
    t0 = time.perf_counter()
    n = len(faces)
    seed_rows = np.arange(n) if seeds is None else np.flatnonzero(seeds)
    rest = np.setdiff1d(np.arange(n), seed_rows)
    sf = faces if len(rest) == 0 else _subset(faces, seed_rows)
    eu, ev, _ = knn_graph(fi, sf.embeddings, fi.rows_for(sf), k, max_dist=CLUSTER_MAX_EDGE, threads=threads)
    t1 = time.perf_counter()
    cannot = corr.photo_pairs(sf.meta.column("uri"))
    must = np.empty((0, 2), np.int64)
    if applied is not None:
        must = corr.rows_of(sf.face_ids, applied.must)
        cannot = np.concatenate([cannot, corr.rows_of(sf.face_ids, applied.cannot)])
    x = head.apply(faces.embeddings) if head is not None else faces.embeddings
    roots, rounds = agglomerate(x[seed_rows], eu, ev, threshold, must_link=must, cannot_link=cannot,
                                pair_margin=pair_margin)
    labels = np.arange(n)
    labels[seed_rows] = seed_rows[roots]
    attached = _attach_rest(fi, faces, x, labels, rest, seed_rows, threshold, k, applied, pair_margin)
    t2 = time.perf_counter()
    return labels, {"edges": len(eu), "rounds": rounds, "must_link": len(must), "cannot_link": len(cannot),
                    "attached": attached, "knn_s": round(t1 - t0, 2), "merge_s": round(t2 - t1, 2)}


def _attach_rest(fi: FaceIndex, faces: Faces, x: np.ndarray, labels: np.ndarray, rest: np.ndarray,
                 seed_rows: np.ndarray, threshold: float, k: int, applied: corr.Applied | None,
                 pair_margin: float) -> int:
    """Give the non-seed faces `rest` the cluster label they unambiguously belong to (in place);
    how many got one. A cluster holding a face of the same photo, or one the curator said this
    face is not, is out; two faces of one photo never join one cluster (the nearer one does)."""
    if len(rest) == 0 or len(seed_rows) == 0:
        return 0
    seed_pos = np.full(len(faces) + 1, -1, np.int64)      # face row -> row among the seeds; [-1] -> -1
    seed_pos[seed_rows] = np.arange(len(seed_rows))
    lab, _ = fi.query(faces.embeddings[rest], 2 * k, ef=max(4 * k, 64))
    cand = fi.rows_for(faces)[lab]
    cand[seed_pos[cand] < 0] = -1
    uri = faces.meta.column("uri").combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False)
    photo_in = set(zip(uri[seed_rows].tolist(), labels[seed_rows].tolist()))
    no = {}
    if applied is not None:
        for a, b in corr.rows_of(faces.face_ids, applied.cannot).tolist():
            no.setdefault(a, set()).add(int(labels[b]))
            no.setdefault(b, set()).add(int(labels[a]))
    cl = labels[np.maximum(cand, 0)]
    blocked = np.array([[(uri[r], c) in photo_in or c in no.get(int(r), ()) for c in row]
                        for r, row in zip(rest.tolist(), cl.tolist())], bool).reshape(cand.shape)
    to, dist = attach(x[seed_rows], labels[seed_rows], x[rest], seed_pos[cand], threshold, blocked, pair_margin)
    # One face per photo in a cluster: among extra faces of one photo aiming at one cluster, the nearest joins.
    taken: set[tuple[int, int]] = set()
    joined = 0
    for i in np.argsort(dist, kind="stable").tolist():
        key = (int(uri[rest[i]]), int(to[i]))
        if to[i] >= 0 and key not in taken:
            taken.add(key)
            labels[rest[i]] = to[i]
            joined += 1
    return joined


@writes_output("cluster")
def cluster(out: str | Store, threshold: float | None = None, k: int | None = None,
            faces: Faces | None = None, fi: FaceIndex | None = None,
            min_quality: float = MIN_QUALITY, metric: str = "learned") -> ClusterSummary:
    """Cluster every face of OUT into identities → OUT/clusters.parquet, keeping earlier ids.

    Faces at or above the quality floor seed the clusters; each face below it then joins the
    one cluster it is near, or stays alone. `threshold` and `k` are kept in OUT/clusters.json;
    left out (None), the kept ones are used (else CLUSTER_THRESHOLD and CLUSTER_K), so a
    threshold given once holds for later runs. Reuses the saved index (extending it first if
    faces were added). Merges and splits of earlier clusters are appended to
    OUT/cluster_events.parquet. The corrections stored in OUT/labels/corrections.json are kept
    (see facejob.reduce.corrections). `metric`: "learned" uses the metric head when OUT has one.
    """
    store = _store(out)
    kept = saved_cluster_params(store)
    threshold = kept[0] if threshold is None else threshold
    k = kept[1] if k is None else k
    head = _metric_head(store, metric)
    faces = faces if faces is not None else read_faces(store, (*META_COLUMNS, "quality"))
    fi = fi if fi is not None else update_index(store, faces, log=log.info)
    applied = corr.resolve(_corrections(store, faces))
    seeds = above_floor(faces, min_quality)
    # A face the curator put with others is a seed whatever its quality: the curator's word wins.
    seeds[corr.rows_of(faces.face_ids, applied.must).reshape(-1)] = True
    t0 = time.perf_counter()
    roots, stats = cluster_faces(fi, faces, threshold, k, applied=applied, seeds=seeds, head=head)
    prev_id, next_id, old_ids = _previous_clusters(store, faces)
    a = assign_ids(roots, prev_id, next_id)
    gone = np.setdiff1d(old_ids, np.concatenate([prev_id[prev_id >= 0], [-1]]))
    uroots, size, rep = representatives(faces.embeddings, roots)
    # Per face: its cluster's size and representative face.
    ci = np.searchsorted(uroots, roots)
    ids = faces.face_ids
    table = pa.table({
        "face_id": ids, "cluster_id": pa.array(a.cluster_id), "cluster_size": pa.array(size[ci]),
        "representative": ids.take(pa.array(rep[ci])), "uri": faces.meta.column("uri"),
        "face_idx": faces.meta.column("face_idx"),
    }, schema=CLUSTERS_SCHEMA)
    write_parquet(store, CLUSTERS, table)
    now = _now()
    events = [{"run_at": now, "event": e["event"], "cluster_id": e["cluster_id"],
               "other_ids": e.get("from") or e.get("into") or [],
               "detail": ("merged into this cluster" if e["event"] == "merge" else "faces moved to other_ids")}
              for e in a.events]
    events += [{"run_at": now, "event": "gone", "cluster_id": int(g), "other_ids": [], "detail": "all its photos are gone"}
               for g in gone]
    if events:
        old = read_parquet(store, EVENTS) if store.exists(EVENTS) else EVENTS_SCHEMA.empty_table()
        write_parquet(store, EVENTS, pa.concat_tables([old, pa.Table.from_pylist(events, schema=EVENTS_SCHEMA)]))
    summary = ClusterSummary(
        faces=len(faces), clusters=len(uroots), singletons=int((size == 1).sum()),
        largest=int(size.max()) if len(size) else 0, merges=sum(e["event"] == "merge" for e in events),
        splits=sum(e["event"] == "split" for e in events), gone=len(gone), rounds=stats["rounds"],
        edges=stats["edges"], timings={"knn_s": stats["knn_s"], "merge_s": stats["merge_s"],
                                       "total_s": round(time.perf_counter() - t0, 2)},
        low_quality=int((~seeds).sum()), attached=stats["attached"])
    store.write_bytes(CLUSTERS_JSON, json.dumps({"next_id": a.next_id, "threshold": threshold, "k": k,
                                                 "updated_at": now, **asdict(summary)}, indent=2).encode())
    log.info("cluster: %d faces -> %d clusters (%d singletons, largest %d); %d merges, %d splits recorded; "
             "%d faces below quality %.2f (%d joined a cluster); %d must-link, %d cannot-link pairs", summary.faces,
             summary.clusters, summary.singletons, summary.largest, summary.merges, summary.splits,
             summary.low_quality, min_quality, summary.attached, stats["must_link"], stats["cannot_link"])
    return summary


def saved_cluster_params(out: str | Store) -> tuple[float, int]:
    """(threshold, k) of the last clustering (OUT/clusters.json), else the defaults."""
    store = _store(out)
    try:
        doc = json.loads(store.read_bytes(CLUSTERS_JSON)) if store.exists(CLUSTERS_JSON) else {}
    except ValueError:  # unreadable: the defaults (the file is rewritten by the next clustering)
        doc = {}
    return float(doc.get("threshold", CLUSTER_THRESHOLD)), int(doc.get("k", CLUSTER_K))


def _previous_clusters(store: Store, faces: Faces) -> tuple[np.ndarray, int, np.ndarray]:
    """Per current face its earlier cluster id (-1 if new), the next unused id, all earlier ids."""
    if not store.exists(CLUSTERS):
        return np.full(len(faces), -1, np.int64), 0, np.empty(0, np.int64)
    old = read_parquet(store, CLUSTERS, columns=["face_id", "cluster_id"])
    pos = pc.index_in(faces.face_ids, old.column("face_id")).fill_null(-1).to_numpy().astype(np.int64)
    old_cid = old.column("cluster_id").to_numpy()
    prev = np.where(pos >= 0, old_cid[np.maximum(pos, 0)] if len(old_cid) else -1, -1).astype(np.int64)
    next_id = int(old_cid.max()) + 1 if len(old_cid) else 0
    if store.exists(CLUSTERS_JSON):
        next_id = max(next_id, int(json.loads(store.read_bytes(CLUSTERS_JSON)).get("next_id", 0)))
    return prev, next_id, np.unique(old_cid)


# ---------------------------------------------------------------------------------- label

@dataclass
class LabelSummary:
    people: int
    labelled: int
    background: int
    faces: int
    named: int
    unknown: int
    per_person: dict[str, int] = field(default_factory=dict)
    followed: int = 0        # labels moved to the new face id of a moved or re-encoded photo
    gone: list[dict] = field(default_factory=list)   # labels on deleted photos: still training examples
    low_quality: int = 0     # faces below the quality floor: named too, but they do not train the SVMs
    low_quality_named: int = 0


def read_labels(out: str | Store, labels: str | Path, faces: Faces | None = None) -> Labelled:
    """Resolve a labels CSV or a folder-per-person tree against OUT's faces (validates it)."""
    store = _store(out)
    faces = faces if faces is not None else read_faces(store, ["face_id", "uri", "face_idx", "left", "top", "right", "bottom"])
    path = Path(labels)
    if path.is_dir():
        model, _ = _face_model(store)
        shas = read_faces(store, ["face_id", "sha256"], embeddings=False).meta.column("sha256")
        # Every format facejob reads, not the last run's list (an older or narrower one would
        # silently skip the curator's AVIF or raw reference photos).
        return read_folder(path, faces, shas, _photo_embedder(model), EXTENSIONS)
    if not path.is_file():
        raise LabelsError(f"labels file not found: {labels}")
    return read_csv(path.read_text(encoding="utf-8-sig"), faces, source=path.name)


def _stored_labels(store: Store) -> pa.Table:
    if not store.exists(LABELS_STORED):
        return LABELS_SCHEMA.empty_table()
    t = read_parquet(store, LABELS_STORED)
    # Labels stored before the location columns existed: they get nulls (and cannot follow).
    return pa.table({f.name: t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type)
                     for f in LABELS_SCHEMA}, schema=LABELS_SCHEMA)


def _corrections(store: Store, faces: Faces, shas: pa.Array | None = None) -> list[dict]:
    """The stored corrections, their faces followed to moved or re-encoded photos."""
    entries = corr.load(store)
    return corr.follow_faces(store, entries, faces, shas if shas is not None else _shas(store, faces)) if entries else []


def _shas(store: Store, faces: Faces) -> pa.Array:
    if "sha256" in faces.meta.column_names:
        return faces.meta.column("sha256").combine_chunks()
    return read_faces(store, ["face_id", "sha256"], embeddings=False).meta.column("sha256").combine_chunks()


def _combine(stored: pa.Table, new: Labelled, faces: Faces, shas: pa.Array) -> pa.Table:
    """Stored labels updated with the new ones (a face named again takes its new name)."""
    ids = faces.face_ids
    rows = new.row.tolist()
    new_ids = [ids[r].as_py() if r >= 0 else None for r in rows]

    def at(col: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> pa.Array:
        return pa.array([col[r].as_py() if r >= 0 else None for r in rows], typ)

    m = faces.meta
    t = pa.table({"name": new.name, "face_id": pa.array(new_ids, pa.string()), "source": new.source,
                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(new.embedding.reshape(-1)), EMBEDDING_DIM),
                  "uri": at(m.column("uri"), pa.string()), "sha256": at(shas, pa.string()),
                  **{c: at(m.column(c), pa.int32()) for c in ("left", "top", "right", "bottom")}},
                 schema=LABELS_SCHEMA)
    if stored.num_rows:
        renamed = pc.is_in(stored.column("face_id"), value_set=pa.array([i for i in new_ids if i], pa.string()))
        keep = ~pc.fill_null(renamed, False).to_numpy(zero_copy_only=False) & ~_given_again(stored, new)
        t = pa.concat_tables([stored.filter(pa.array(keep)), t])
    return t


def _given_again(stored: pa.Table, new: Labelled) -> np.ndarray:
    """Per stored label: is it a photo outside the archive (no face id) that `new` gives again
    (the same descriptor, to float noise)? The nightly job passes the same labels folder every
    night; without this its reference photos would pile up as copies of themselves."""
    outside = stored.column("face_id").is_null().to_numpy(zero_copy_only=False)
    again = np.zeros(stored.num_rows, bool)
    mine = new.row < 0
    if not outside.any() or not mine.any():
        return again
    emb = _emb(stored.column("embedding"))
    for i in np.flatnonzero(outside):
        d = np.linalg.norm(new.embedding[mine] - emb[i], axis=1)
        again[i] = bool((d < 1e-3).any())
    return again


def saved_label_params(out: str | Store) -> LabelParams:
    """The label settings saved with the last models (labels/model.json), else the defaults."""
    store = _store(out)
    if not store.exists(LABEL_MODEL_JSON):
        return LabelParams()
    return lb.load_model(store).params


@writes_output("label")
def label(out: str | Store, labels: str | Path | None = None, params: LabelParams | None = None,
          replace: bool = False, faces: Faces | None = None, min_quality: float = MIN_QUALITY,
          corrections: str | Path | None = None, metric: str = "learned") -> LabelSummary:
    """Train per-person SVMs from the curator's labels and name every face → OUT/predictions.parquet.
    Faces below the quality floor are named too (with their quality) but are not background or
    extra positives; a labelled face below it still teaches its person.

    `labels` (CSV or folder tree) is added to the labels stored in OUT/labels/ (or replaces them
    with `replace`); without it the stored labels are used again (after new photos came in).
    `params` default to the ones saved with the last models (e.g. an earlier `--threshold`).
    `corrections` (a file the report page downloaded) is added to OUT/labels/corrections.json;
    the names stored there are labels too, and a face marked "not this person" is a negative
    for that person and never gets that name. The metric head is retrained first when the
    labels changed; with `metric` "learned" the SVMs work on its descriptors when there is one.
    """
    store = _store(out)
    params = params if params is not None else saved_label_params(store)
    every = faces if faces is not None else read_faces(store, (*META_COLUMNS, "quality"))
    shas = _shas(store, every)
    if corrections is not None:
        corr.add(store, corrections)
    applied = corr.resolve(_corrections(store, every, shas))
    stored, followed = follow(LABELS_SCHEMA.empty_table() if replace else _stored_labels(store), every, shas)
    if labels is not None:
        stored = _combine(stored, read_labels(store, labels, every), every, shas)
    table = _with_corrections(stored, applied, every, shas)
    if not table.num_rows:
        raise LabelsError(f"no labels stored in {store.root}/labels/; give some with --labels LABELS.csv "
                          f"or name people on the report page (--corrections)")
    # A whole cluster named on the page is a deliberate choice, even when it holds one face.
    src = table.column("source").to_pylist()
    given = [(n, w) for n, w in zip(table.column("name").to_pylist(), src) if w != corr.SOURCE]
    few = too_few([n for n, _ in given], [w for _, w in given])
    if few:
        raise LabelsError("labels: " + "; ".join(few))
    write_parquet(store, LABELS_STORED, stored)
    head = _refresh_metric(store, every) if metric == "learned" else _metric_head(store, metric)

    good = above_floor(every, min_quality)
    faces = _subset(every, np.flatnonzero(good)) if not good.all() else every   # what the SVMs learn from
    names = table.column("name").to_pylist()
    xl = _emb(table.column("embedding"))
    rows = pc.index_in(table.column("face_id"), faces.face_ids).fill_null(-1).to_numpy().astype(np.int64)
    clusters = _cluster_rows(store, faces)
    negatives = pc.index_in(pa.array(sorted(applied.not_faces), pa.string()), faces.face_ids)
    negatives = np.setdiff1d(negatives.drop_null().to_numpy().astype(np.int64), rows)
    learned = (lambda v: head.apply(v)) if head is not None else (lambda v: v)
    model, fit = lb.fit_archive(learned(faces.embeddings), rows, learned(xl), names, clusters, params,
                                negatives=negatives)
    model.info["metric"] = "learned" if head is not None else "plain"
    lb.save_model(store, model)
    # Every face gets a prediction, below the quality floor too (its quality is shown beside it).
    ids = every.face_ids.to_pylist()
    pred, prob = model.predict(learned(every.embeddings), {r: applied.not_names[f] for r, f in enumerate(ids)
                                                  if f in applied.not_names})
    mine = pc.index_in(table.column("face_id"), every.face_ids).fill_null(-1).to_numpy().astype(np.int64)
    labelled = np.zeros(len(every), bool)
    labelled[mine[mine >= 0]] = True
    pred[mine[mine >= 0]] = np.array(names, object)[mine >= 0]
    prob[mine[mine >= 0]] = 1.0
    quality = (every.meta.column("quality") if "quality" in every.meta.column_names
               else pa.nulls(len(every), pa.float32()))
    write_parquet(store, PREDICTIONS, pa.table({
        "face_id": every.face_ids, "label": pa.array(pred.tolist(), pa.string()), "probability": pa.array(prob),
        "labelled": pa.array(labelled), "uri": every.meta.column("uri"), "face_idx": every.meta.column("face_idx"),
        "quality": quality,
    }, schema=PREDICTIONS_SCHEMA))
    named = pred != lb.UNKNOWN
    per = dict(zip(*np.unique(pred[named].astype(str), return_counts=True))) if named.any() else {}
    low = ~good
    s = LabelSummary(people=len(model.classes), labelled=len(names), background=len(fit["pool"]), faces=len(every),
                     named=int(named.sum()), unknown=int((~named).sum()), per_person={k: int(v) for k, v in per.items()},
                     followed=followed.moved + followed.reencoded,
                     gone=[{k: g[k] for k in ("name", "face_id", "uri", "source")} for g in followed.gone],
                     low_quality=int(low.sum()), low_quality_named=int((named & low).sum()))
    if s.followed or s.gone:
        log.info("label: %d labels followed their photo (%d moved, %d re-encoded); %d on photos no longer in "
                 "the archive, kept as training examples", s.followed, followed.moved, followed.reencoded, len(s.gone))
    log.info("label: %d people from %d labelled faces (+%d background); %d of %d faces named (%d of the %d "
             "below quality %.2f, which do not train)", s.people, s.labelled, s.background, s.named, s.faces,
             s.low_quality_named, s.low_quality, min_quality)
    return s


def _refresh_metric(out: str | Store, faces: Faces | None = None, params: lm.MetricParams | None = None
                   ) -> lm.Head | None:
    """Train (or keep) the metric head on the stored labels and corrections; None when OUT has
    too few named people or the head does not beat the plain descriptors (any old head is
    dropped then). Retrains only when what it learns from changed (its fingerprint)."""
    store = _store(out)
    params = params or lm.MetricParams()
    faces = faces if faces is not None else read_faces(store, META_COLUMNS)
    x, people, cannot = _metric_examples(store, faces)
    fp = lm.fingerprint(x, people, cannot, params)
    if fp == lm.saved_fingerprint(store):
        return lm.load(store)
    head, check = lm.fit(x, people, params, cannot)
    if head is None:
        lm.drop(store)
        # Remember the examples it was tried on, so the same labels are not tried again every night.
        store.write_bytes(METRIC_JSON, json.dumps({"format": lm.FORMAT, "kind": "none", "fingerprint": fp,
                                                   "check": check}, indent=2).encode())
        log.info("metric: no learned head (%s); the plain descriptors are used", check.get("why"))
        return None
    lm.save(store, head, fp)
    log.info("metric: learned head kept (held-out people: nearest-neighbour %.4f -> %.4f, pairs %.4f -> %.4f)",
             check["nn_plain"], check["nn_learned"], check["pairs_plain"], check["pairs_learned"])
    return head


def _metric_examples(store: Store, faces: Faces) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head's training examples: every named face (stored labels and corrections' names;
    faces put together with "same person" are one person too) with a person id, and
    "not this person" faces (person -1) with cannot-link pairs to the faces of that name."""
    applied = corr.resolve(_corrections(store, faces))
    table = _with_corrections(_stored_labels(store), applied, faces, _shas(store, faces))
    names = table.column("name").to_pylist()
    x = [_emb(table.column("embedding"))]
    ids = table.column("face_id").to_pylist()
    row_of = {f: i for i, f in enumerate(ids) if f is not None}
    extra = sorted({f for p in applied.must for f in p} | set(applied.not_faces))
    frows = pc.index_in(pa.array(extra, pa.string()), faces.face_ids).fill_null(-1).to_numpy().astype(np.int64)
    for f, r in zip(extra, frows.tolist()):
        if f not in row_of and r >= 0:
            row_of[f] = len(names)
            names.append(None)
            x.append(faces.embeddings[r:r + 1])
    x = np.concatenate(x) if len(x) > 1 else x[0]
    # People: one per name; "same person" pairs join faces (and names) into one.
    n = len(names)
    by_name: dict[str, list[int]] = {}
    for i, nm in enumerate(names):
        if nm is not None:
            by_name.setdefault(nm, []).append(i)
    pairs = [(g[0], j) for g in by_name.values() for j in g[1:]]
    pairs += [(row_of[a], row_of[b]) for a, b in applied.must if a in row_of and b in row_of]
    comp = _components(np.array(pairs, np.int64).reshape(-1, 2), n) if n else np.empty(0, np.int64)
    size = np.bincount(comp, minlength=n) if n else np.empty(0, np.int64)
    people = np.where((size[comp] > 1) | np.array([nm is not None for nm in names], bool), comp, -1) if n else comp
    cannot = [(row_of[f], j) for f, bad in applied.not_names.items() if f in row_of
              for nm in bad for j in by_name.get(nm, [])]
    cannot += [(row_of[a], row_of[b]) for a, b in applied.cannot if a in row_of and b in row_of]
    return x.astype(np.float32), people.astype(np.int64), np.array(cannot, np.int64).reshape(-1, 2)


def _metric_head(store: Store, how: str) -> lm.Head | None:
    """The head `cluster`, `label` and `search` use: the saved one with how="learned", else none."""
    if how not in lm.METRICS:
        raise ReduceError(f"--metric must be one of {', '.join(lm.METRICS)}, got {how!r}")
    return lm.load(store) if how == "learned" else None


def _with_corrections(stored: pa.Table, applied: corr.Applied, faces: Faces, shas: pa.Array) -> pa.Table:
    """Stored labels plus the names from corrections (which win for the faces they name); a
    label a face was later said not to be ("not this person") is dropped."""
    if applied.not_names and stored.num_rows:
        keep_stored = [name not in applied.not_names.get(f, ()) for f, name in
                       zip(stored.column("face_id").to_pylist(), stored.column("name").to_pylist())]
        stored = stored.filter(pa.array(keep_stored))
    rows = pc.index_in(pa.array(list(applied.names), pa.string()), faces.face_ids).fill_null(-1).to_numpy()
    keep = rows >= 0
    if not keep.any():
        return stored
    r = rows[keep].astype(np.int64)
    named = Labelled(list(np.array(list(applied.names.values()), object)[keep]), r, faces.embeddings[r],
                     [corr.SOURCE] * len(r))
    return _combine(stored, named, faces, shas)


def _emb(col: pa.ChunkedArray) -> np.ndarray:
    from .embeddings import batch_embeddings

    return batch_embeddings(col) if len(col) else np.empty((0, EMBEDDING_DIM), np.float32)


def _cluster_rows(store: Store, faces: Faces) -> np.ndarray | None:
    """Cluster id per face from OUT/clusters.parquet (-1 for faces it does not know), or None."""
    if not store.exists(CLUSTERS):
        return None
    t = read_parquet(store, CLUSTERS, columns=["face_id", "cluster_id"])
    pos = pc.index_in(faces.face_ids, t.column("face_id")).fill_null(-1).to_numpy().astype(np.int64)
    cid = t.column("cluster_id").to_numpy()
    # Faces the clustering has not seen get unique negative ids, so they share no cluster.
    return np.where(pos >= 0, cid[np.maximum(pos, 0)] if len(cid) else 0, -1 - np.arange(len(faces)))


def _face_model(store: Store):
    """The FaceModel the output was indexed with (from OUT/model.json), and its last run config."""
    from facejob.config import load_run_config
    from facejob.indexing.pipeline import FaceModel

    try:
        model, run = ModelConfig.load(store), load_run_config(store)
    except FileNotFoundError as e:
        raise NotIndexedError(str(e)) from None
    except ValueError as e:
        raise ReduceError(f"{store.root}: {e}") from None
    return FaceModel.shared(model, run.max_pixels), run


def _photo_embedder(model):
    """path -> [(face area, embedding)] with the archive's own FaceModel."""
    def embed(path: Path) -> list[tuple[float, np.ndarray]]:
        return [(f.area, f.embedding) for f in model.process_bytes(Path(path).read_bytes()).faces]
    return embed


# ---------------------------------------------------------------------------------- dedup

@dataclass
class DedupSummary:
    photos: int
    groups: int
    identical_groups: int
    near_groups: int
    duplicates: int          # photos that are not the kept copy
    candidates: int          # photo pairs with faces whose pixels were compared
    faceless_candidates: int = 0  # photo pairs without faces (similar perceptual hash) compared


@writes_output("dedup")
def dedup(out: str | Store, faces: Faces | None = None, fi: FaceIndex | None = None) -> DedupSummary:
    """Find byte-identical and near-duplicate photos → OUT/duplicates.parquet."""
    store = _store(out)
    images = read_images(store, ["uri", "sha256", "size", "width", "height", "status"], optional=["phash"])
    if faces is None or any(c not in faces.meta.column_names for c in ALL_COLUMNS):
        faces = read_faces(store, ALL_COLUMNS)
    fi = fi if fi is not None else update_index(store, faces, log=log.info)
    cand = _near_candidates(fi, faces)
    by_sha = _faces_by_sha(faces, {s for pair in cand for s in pair})
    first = {}
    for u, sh, w, h in zip(*(images.column(c).to_pylist() for c in ("uri", "sha256", "width", "height"))):
        first.setdefault(sh, (u, (w or 0, h or 0)))
    from facejob.config import DEFAULT_MAX_PIXELS, load_run_config

    max_pixels = load_run_config(store).max_pixels if store.exists(RUN_JSON) else DEFAULT_MAX_PIXELS
    load = _picture_loader(first, max_pixels)
    near = dd.near_pairs(by_sha, cand, load, lambda sha: first[sha][1])
    faceless = _faceless_candidates(images)
    near += dd.faceless_pairs(faceless, load, lambda sha: first[sha][1])
    table = dd.groups_table(images, near)
    write_parquet(store, DUPLICATES, table)
    groups = pc.count_distinct(table.column("group")).as_py() if table.num_rows else 0
    ident_groups = len(set(table.filter(pc.equal(table.column("kind"), "identical")).column("group").to_pylist()))
    s = DedupSummary(photos=images.num_rows, groups=groups, identical_groups=ident_groups,
                     near_groups=groups - ident_groups, duplicates=int(table.num_rows - groups), candidates=len(cand),
                     faceless_candidates=len(faceless))
    log.info("dedup: %d groups (%d identical, %d near), %d duplicate photos; %d pairs with faces and %d "
             "without compared", s.groups, s.identical_groups, s.near_groups, s.duplicates, s.candidates,
             s.faceless_candidates)
    return s


def _faceless_candidates(images: pa.Table) -> list[tuple[str, str]]:
    """Content pairs with a photo without faces whose perceptual hashes are close (outputs indexed
    before the phash column have none: their faceless photos are only matched by bytes)."""
    rows = images.filter(pc.is_valid(images.column("phash")))
    sha = rows.column("sha256").to_pylist()
    hashes = rows.column("phash").to_numpy(zero_copy_only=False).astype(np.int64)
    faceless = np.asarray(pc.equal(rows.column("status"), "no_face").to_numpy(zero_copy_only=False), bool)
    return dd.phash_candidates(sha, hashes, faceless)


def _near_candidates(fi: FaceIndex, faces: Faces, k: int = 8) -> list[tuple[str, str]]:
    """Content pairs (sha_a < sha_b) with a face pair under NEAR_MAX_DIST and the same landmark shape."""
    n = len(faces)
    if n < 2:
        return []
    rows = fi.rows_for(faces)
    sha = faces.meta.column("sha256").to_numpy(zero_copy_only=False)
    shape = dd.shape_vector(_landmarks(faces))
    out: set[tuple[str, str]] = set()
    for lo in range(0, n, 100_000):
        labels, d = fi.query(faces.embeddings[lo:lo + 100_000], k)
        i = np.broadcast_to(np.arange(lo, lo + len(labels))[:, None], labels.shape)
        j = rows[labels]
        ok = (j >= 0) & (d <= dd.NEAR_MAX_DIST)
        i, j = i[ok], j[ok]
        ok = (sha[i] != sha[j]) & (dd.shape_diff(shape[i], shape[j]) <= dd.SHAPE_TOL)
        for a, b in zip(sha[i[ok]], sha[j[ok]]):
            out.add((a, b) if a < b else (b, a))
    return sorted(out)


def _landmarks(faces: Faces) -> np.ndarray:
    col = faces.meta.column("landmarks").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    per = (len(flat) // max(len(col), 1)) if len(col) else 10
    return flat.reshape(len(col), per // 2, 2).astype(np.float64)


def _boxes(faces: Faces) -> np.ndarray:
    return np.stack([faces.meta.column(c).to_numpy() for c in ("left", "top", "right", "bottom")], 1).astype(np.float64)


def _faces_by_sha(faces: Faces, wanted: set[str]) -> dict[str, dd.PhotoFaces]:
    """The faces of one photo per wanted content (identical bytes give identical faces)."""
    sha = faces.meta.column("sha256").to_pylist()
    uri = faces.meta.column("uri").to_pylist()
    rows: dict[str, list[int]] = {}
    first_uri: dict[str, str] = {}
    for r, (s, u) in enumerate(zip(sha, uri)):
        if s in wanted and first_uri.setdefault(s, u) == u:
            rows.setdefault(s, []).append(r)
    if not rows:
        return {}
    lm, box = _landmarks(faces), _boxes(faces)
    return {s: dd.PhotoFaces(faces.embeddings[r], lm[r], box[r]) for s, r in rows.items()}


def _picture_loader(first: dict[str, tuple[str, tuple[int, int]]], max_pixels: int):
    """sha256 -> its photo (one path holding those bytes) as a reduced grey Picture, cached."""
    from facejob.io.sources import read_bytes

    @functools.lru_cache(maxsize=64)
    def load(sha: str) -> dd.Picture | None:
        uri, size = first[sha]
        try:
            return dd.load_picture(read_bytes(uri), size, max_pixels)
        except Exception as e:  # a photo gone or unreadable since indexing: skip its pairs
            log.warning("dedup: cannot read %s (%s); its near-duplicate check is skipped", uri, e)
            return None
    return load


# --------------------------------------------------------------------------------- search

@dataclass
class Match:
    face_id: str
    uri: str
    face_idx: int
    box: tuple[int, int, int, int]     # left, top, right, bottom
    distance: float                     # Euclidean, same units as dlib's 0.6 threshold
    cluster_id: int | None = None
    label: str | None = None
    probability: float | None = None


@dataclass
class QueryFace:
    face_idx: int                       # in the query photo (or -1 for a query by face_id)
    box: tuple[int, int, int, int]
    matches: list[Match]


def search(out: str | Store, photo: str | bytes, k: int = 10, metric: str = "learned") -> list[QueryFace]:
    """The k nearest archive faces of every face in `photo` (a path, s3:// uri, or bytes); with
    `metric` "learned" and a metric head in OUT, by the learned distance."""
    from facejob.io.sources import read_bytes, source_uri

    store = _store(out)
    head = _metric_head(store, metric)
    fi = load_index(store)
    model, _ = _face_model(store)
    data = photo if isinstance(photo, bytes) else read_bytes(source_uri(str(photo)))
    res = model.process_bytes(data)
    if res.error:
        raise ReduceError(f"cannot read the query photo: {res.error}")
    if not res.faces:
        return []
    emb = np.stack([f.embedding for f in res.faces])
    labels, dist = _query(fi, emb, k, head)
    return [QueryFace(f.face_idx, (f.left, f.top, f.right, f.bottom), m)
            for f, m in zip(res.faces, _matches(store, fi, labels, dist))]


def search_face(out: str | Store, face_id: str, k: int = 10, metric: str = "learned") -> QueryFace:
    """The k nearest other faces of an archive face, by its face_id."""
    store = _store(out)
    head = _metric_head(store, metric)
    fi = load_index(store)
    hit = pc.index(fi.ids.column("face_id"), face_id).as_py()
    if hit < 0 or fi.ids.column("deleted")[hit].as_py():
        raise ReduceError(f"face_id {face_id!r} is not in the index of {store.root}")
    vec = np.asarray(fi.hnsw.get_items([hit]), np.float32)
    labels, dist = _query(fi, vec, k + 1, head)
    keep = labels[0] != hit
    m = _matches(store, fi, labels[:, keep][:, :k], dist[:, keep][:, :k])[0]
    r = fi.ids.slice(hit, 1).to_pylist()[0]
    return QueryFace(-1, (r["left"], r["top"], r["right"], r["bottom"]), m)


def _query(fi: FaceIndex, emb: np.ndarray, k: int, head: lm.Head | None) -> tuple[np.ndarray, np.ndarray]:
    """The index's k nearest; with a metric head, the plain 4k nearest re-ranked by learned distance."""
    if head is None:
        return fi.query(emb, k)
    labels, _ = fi.query(emb, 4 * k)
    if labels.shape[1] == 0:
        return labels[:, :k], np.empty((len(emb), 0), np.float32)
    cand = head.apply(np.asarray(fi.hnsw.get_items(labels.reshape(-1)), np.float32)).reshape(*labels.shape, -1)
    d = np.linalg.norm(cand - head.apply(emb)[:, None], axis=2)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(labels, order, 1), np.take_along_axis(d, order, 1).astype(np.float32)


def _matches(store: Store, fi: FaceIndex, labels: np.ndarray, dist: np.ndarray) -> list[list[Match]]:
    rows = fi.ids.take(pa.array(labels.reshape(-1))).to_pylist()
    ids = [r["face_id"] for r in rows]
    cid = _lookup(store, CLUSTERS, ids, ["cluster_id"])
    lab = _lookup(store, PREDICTIONS, ids, ["label", "probability"])
    ms = [Match(r["face_id"], r["uri"], r["face_idx"], (r["left"], r["top"], r["right"], r["bottom"]), float(d),
                cid.get(r["face_id"], {}).get("cluster_id"), lab.get(r["face_id"], {}).get("label"),
                lab.get(r["face_id"], {}).get("probability"))
          for r, d in zip(rows, dist.reshape(-1))]
    k = labels.shape[1]
    return [ms[i * k:(i + 1) * k] for i in range(len(labels))]


def _lookup(store: Store, rel: str, face_ids: list[str], columns: list[str]) -> dict[str, dict]:
    if not store.exists(rel) or not face_ids:
        return {}
    t = read_parquet(store, rel, ["face_id", *columns])
    t = t.filter(pc.is_in(t.column("face_id"), pa.array(face_ids, pa.string())))
    return {r["face_id"]: r for r in t.to_pylist()}


# --------------------------------------------------------------------------------- reduce

@dataclass
class ReduceSummary:
    faces: int
    index_s: float
    cluster: ClusterSummary | None
    label: LabelSummary | None
    dedup: DedupSummary | None


@writes_output("reduce")
def reduce(out: str | Store, rebuild_index: bool = False, threshold: float | None = None,
           k: int | None = None, min_quality: float = MIN_QUALITY, corrections: str | Path | None = None,
           progress: bool = False, labels: str | Path | None = None,
           label_threshold: float | None = None, metric: str = "learned") -> ReduceSummary:
    """Everything after indexing: index, cluster, label (when labels are stored or given), dedup.
    Faces below `min_quality` do not seed clusters or train the SVMs, but every face is
    clustered and named; `threshold` and `k` left out are the kept ones (see cluster),
    `label_threshold` left out the saved one.

    `corrections` (a file from the report page) is first added to the ones stored in OUT; all
    stored corrections apply to the clustering and the labels. `labels` (CSV or folder) are
    added to the stored labels. `progress` shows the steps done.
    """
    from facejob.progress import Progress

    store = _store(out)
    faces = read_faces(store, ALL_COLUMNS)
    if corrections is not None:
        corr.add(store, corrections)
    bar = Progress("reduce", 4, "steps", enabled=progress)
    t0 = time.perf_counter()
    fi = update_index(store, faces, rebuild=rebuild_index, log=log.info)
    t_index = time.perf_counter() - t0
    bar.advance(1, faces=len(faces))
    named = labels is not None or store.exists(LABELS_STORED) or bool(corr.resolve(corr.load(store)).names)
    if named and metric == "learned":
        _refresh_metric(store, faces)      # before clustering, so stored labels shape tonight's clusters
    cs = cluster(store, threshold, k, faces=faces, fi=fi, min_quality=min_quality, metric=metric)
    bar.advance(1, clusters=cs.clusters)
    params = saved_label_params(store)
    if label_threshold is not None:
        params = dataclasses.replace(params, threshold=label_threshold)
    ls = (label(store, labels, params, faces=faces, min_quality=min_quality, metric=metric)
          if named else None)
    bar.advance(1)
    ds = dedup(store, faces=faces, fi=fi)
    bar.advance(1, duplicates=ds.duplicates)
    return ReduceSummary(len(faces), round(t_index, 2), cs, ls, ds)


def reduce_with(out: str | Store, cfg: ReduceConfig, progress: bool = False) -> ReduceSummary:
    """`reduce` with the settings of a facejob.config.ReduceConfig (the `facejob reduce` flags,
    the nightly job's `reduce:` keys); labels and corrections may be s3:// keys."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return reduce(out, rebuild_index=cfg.rebuild_index, threshold=cfg.cluster_threshold, k=cfg.cluster_k,
                      min_quality=cfg.min_quality, corrections=_local(cfg.corrections, tmp), progress=progress,
                      labels=_local(cfg.labels, tmp), label_threshold=cfg.label_threshold, metric=cfg.metric)


def _local(uri: str | None, tmp: str) -> str | None:
    """A local path for a labels or corrections file given as an s3:// key (read locally)."""
    if uri is None or not uri.startswith("s3://"):
        return uri
    from facejob.io import s3

    path = Path(tmp) / Path(s3.split_uri(uri)[1]).name
    path.write_bytes(s3.read_bytes(uri))
    return str(path)


__all__ = [
    "ClusterSummary",
    "DedupSummary",
    "LabelSummary",
    "LabelsError",
    "Match",
    "NotIndexedError",
    "QueryFace",
    "ReduceError",
    "ReduceSummary",
    "cluster",
    "cluster_faces",
    "dedup",
    "index",
    "label",
    "read_labels",
    "reduce",
    "reduce_with",
    "search",
    "search_face",
]
