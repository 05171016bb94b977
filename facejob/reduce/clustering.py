"""The cluster step: every face of OUT into identities → OUT/clusters.parquet, ids kept across runs.

Faces at or above the quality floor seed the clusters (kNN graph, then average linkage, less a
term for how strongly the graph ties two clusters, with the curator's must- and cannot-link
pairs); every other face then joins the one cluster it is near.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.config import (CLUSTER_K, CLUSTER_LINK_WEIGHT, CLUSTER_MAX_EDGE, CLUSTER_PAIR_MARGIN, CLUSTER_THRESHOLD,
                            MIN_QUALITY)
from facejob.contract.layout import CLUSTERS, CLUSTERS_JSON, EVENTS, LABELS_STORED
from facejob.io.lock import writes_output
from facejob.io.storage import Store, open_store, read_parquet, write_parquet

from . import corrections as corr
from . import metric as lm
from . import saved
from .embeddings import META_COLUMNS, Faces, read_faces, take_rows
from .graph import knn_graph
from .hnsw import FaceIndex, update_index
from .linkage import GraphClusterer, in_sorted, representatives
from .stable import assign_ids

if TYPE_CHECKING:   # the Ray path, imported only when asked for (it imports Ray)
    from .ray_reduce import RayReducer

log = logging.getLogger("facejob.reduce")

CLUSTERS_SCHEMA = pa.schema([
    ("face_id", pa.string()), ("cluster_id", pa.int64()), ("cluster_size", pa.int64()),
    ("representative", pa.string()),      # face_id of the member nearest the cluster's mean
    ("uri", pa.string()), ("face_idx", pa.int32()),
])
EVENTS_SCHEMA = pa.schema([
    ("run_at", pa.string()), ("event", pa.string()),     # merge | split | gone
    ("cluster_id", pa.int64()), ("other_ids", pa.list_(pa.int64())), ("detail", pa.string()),
])


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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


def cluster_faces(fi: FaceIndex | None, faces: Faces, threshold: float = CLUSTER_THRESHOLD, k: int = CLUSTER_K,
                  threads: int = -1, applied: corr.Applied | None = None,
                  seeds: np.ndarray | None = None, head: lm.Head | None = None,
                  pair_margin: float = CLUSTER_PAIR_MARGIN, engine: RayReducer | None = None,
                  link_weight: float = CLUSTER_LINK_WEIGHT) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster label (a row of `faces`) per face of `faces`, and stats.

    The `seeds` faces (default: all) are clustered: the kNN graph then agglomeration. Faces of
    one photo (same uri) are cannot-link; `applied` corrections add must-link ("same person")
    and cannot-link ("not this person") pairs. Every other face then joins the one seed cluster
    it is near (`linkage.attach`) unless that cluster holds a face it cannot be; else it stays
    alone. With a metric `head`, distances are those of the learned descriptors (the kNN graph
    that proposes candidates still comes from the plain ones). An `engine`
    (facejob.reduce.ray_reduce.RayReducer, built over `faces`) searches its shards, builds the
    graph and agglomerates on Ray instead; `fi` is then not used (None is fine).
    """
    t0 = time.perf_counter()
    n = len(faces)
    seed_rows = np.arange(n) if seeds is None else np.flatnonzero(seeds)
    rest = np.setdiff1d(np.arange(n), seed_rows)
    seed_pos = np.full(n + 1, -1, np.int64)      # face row -> row among the seeds; [-1] -> -1
    seed_pos[seed_rows] = np.arange(len(seed_rows))
    # The seeds are rows of `faces` looked up by position, never a copy of its columns (10M faces:
    # ~1.6 GiB of ids, paths and hashes).
    seed_x = faces.embeddings if len(rest) == 0 else take_rows(faces.embeddings, seed_rows)
    if engine is None:
        rows_of_label = fi.rows_for(faces)
        eu, ev = knn_graph(fi, seed_x, seed_pos[rows_of_label], k, max_dist=CLUSTER_MAX_EDGE, threads=threads)
        def nearest(v: np.ndarray, m: int, ef: int) -> np.ndarray:
            # hnsw labels -> face rows; the trailing -1: "fewer found"
            return np.append(rows_of_label, -1)[fi.query(v, m, ef=ef, threads=threads)[0]]
    else:
        eu, ev = engine.knn_graph(seed_x, seed_rows, n, k, max_dist=CLUSTER_MAX_EDGE)
        def nearest(v: np.ndarray, m: int, ef: int) -> np.ndarray:
            return engine.query(v, m, ef=ef)[0]      # its answers are face rows
    t1 = time.perf_counter()
    photo = corr.photo_codes(faces.meta.column("uri"))
    cannot = corr.photo_pairs(photo[seed_rows])
    must = not_same = np.empty((0, 2), np.int64)     # face rows the curator linked, or said differ
    if applied is not None:
        must = _seed_pairs(seed_pos, corr.rows_of(faces.face_ids, applied.must))
        not_same = corr.rows_of(faces.face_ids, applied.cannot)
        cannot = np.concatenate([cannot, _seed_pairs(seed_pos, not_same)])
    x = lm.MetricLearner.from_head(head).transform(faces.embeddings)
    gc = GraphClusterer(threshold, pair_margin, link_weight=link_weight)
    agg = None
    if engine is not None:     # its tasks fetch the seeds' descriptors from its shards, not from x
        agg = partial(engine.agglomerate, rows=seed_rows, transform=None if head is None else head.apply)
    gc.fit(x if len(rest) == 0 else take_rows(x, seed_rows), (eu, ev), must_link=must, cannot_link=cannot, agglomerate_with=agg)
    labels = np.arange(n)
    labels[seed_rows] = seed_rows[gc.labels_]
    attached = _attach_rest(nearest, faces, x, labels, rest, seed_rows, seed_pos, k, not_same, gc, photo)
    t2 = time.perf_counter()
    return labels, {"edges": len(eu), "rounds": gc.rounds_, "must_link": len(must), "cannot_link": len(cannot),
                    "attached": attached, "knn_s": round(t1 - t0, 2), "merge_s": round(t2 - t1, 2)}


def _seed_pairs(seed_pos: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Face row pairs as pairs of rows among the seeds, less those with a face that is no seed."""
    p = seed_pos[pairs]
    return p[(p >= 0).all(1)]


def _attach_rest(nearest, faces: Faces, x: np.ndarray, labels: np.ndarray, rest: np.ndarray,
                 seed_rows: np.ndarray, seed_pos: np.ndarray, k: int, not_same: np.ndarray,
                 gc: GraphClusterer, photo: np.ndarray) -> int:
    """Give the non-seed faces `rest` the cluster label they unambiguously belong to (in place),
    by `gc` (fitted on the seeds); how many got one. `nearest(vectors, m, ef)`: the face rows of
    the m nearest faces of each vector (-1: fewer found); `seed_pos`: per face row (and a last
    -1) its row among the seeds, -1 for none; `not_same`: face row pairs the curator said are
    different people; `photo`: each face's corrections.photo_codes. A cluster holding a face of
    the same photo, or one the curator said this face is not, is out; two faces of one photo
    never join one cluster (the nearer one does). (Photo and cluster pairs are one int64 each,
    photo * (n + 1) + cluster, in sorted arrays: a set of Python tuples of every seed was GBs at
    millions of faces.)"""
    if len(rest) == 0 or len(seed_rows) == 0:
        return 0
    n = len(faces)
    cand = nearest(faces.embeddings[rest], 2 * k, max(4 * k, 64))
    cand[seed_pos[cand] < 0] = -1
    cl = labels[np.maximum(cand, 0)]
    blocked = in_sorted(photo[rest, None] * (n + 1) + cl, np.unique(photo[seed_rows] * (n + 1) + labels[seed_rows]))
    if len(not_same):
        a, b = not_same.T
        no = np.unique(np.concatenate([a * (n + 1) + labels[b], b * (n + 1) + labels[a]]))
        blocked |= in_sorted(rest[:, None] * (n + 1) + cl, no)
    to, dist = gc.predict(x[rest], seed_pos[cand], blocked)
    to = np.where(to >= 0, seed_rows[np.maximum(to, 0)], -1)     # a cluster's smallest seed -> its face row
    # One face per photo in a cluster: among extra faces of one photo aiming at one cluster, the nearest joins.
    order = np.argsort(dist, kind="stable")
    order = order[to[order] >= 0]
    _, first = np.unique(photo[rest[order]] * (n + 1) + to[order], return_index=True)
    join = order[first]
    labels[rest[join]] = to[join]
    return len(join)

@writes_output("cluster")
def cluster(out: str | Store, threshold: float | None = None, k: int | None = None,
            faces: Faces | None = None, fi: FaceIndex | None = None,
            min_quality: float = MIN_QUALITY, metric: str = "learned",
            engine: RayReducer | None = None) -> ClusterSummary:
    """Cluster every face of OUT into identities → OUT/clusters.parquet, keeping earlier ids.

    Faces at or above the quality floor seed the clusters; each face below it then joins the
    one cluster it is near, or stays alone. `threshold` and `k` are kept in OUT/clusters.json;
    left out (None), the kept ones are used (else CLUSTER_THRESHOLD and CLUSTER_K), so a
    threshold given once holds for later runs. Reuses the saved index (extending it first if
    faces were added). Merges and splits of earlier clusters are appended to
    OUT/cluster_events.parquet. The corrections stored in OUT/labels/corrections.json are kept
    (see facejob.reduce.corrections). `metric`: "learned" uses the metric head when OUT has one.
    `engine`: see cluster_faces.
    """
    store = open_store(out)
    kept = saved_cluster_params(store)
    threshold = kept[0] if threshold is None else threshold
    k = kept[1] if k is None else k
    GraphClusterer(threshold)      # a bad threshold fails here, before the index is read or extended
    head = lm.head_for(store, metric)
    faces = faces if faces is not None else read_faces(store, (*META_COLUMNS, "quality"))
    if fi is None and engine is None:   # an engine searches its own shards
        fi = update_index(store, faces, log=log.info)
    applied = _with_names(store, corr.resolve(corr.followed(store, faces)))
    seeds = above_floor(faces, min_quality)
    # A face the curator put with others is a seed whatever its quality: the curator's word wins.
    seeds[corr.rows_of(faces.face_ids, applied.must).reshape(-1)] = True
    t0 = time.perf_counter()
    key = _inputs_digest(faces, seeds, applied, head, threshold, k)
    kept_summary = _unchanged(store, key)
    if kept_summary is not None:
        log.info("cluster: faces, corrections and settings unchanged since the last run; its %d clusters kept",
                 kept_summary.clusters)
        kept_summary.timings = {"knn_s": 0.0, "merge_s": 0.0, "total_s": round(time.perf_counter() - t0, 2)}
        return kept_summary
    roots, stats = cluster_faces(fi, faces, threshold, k, applied=applied, seeds=seeds, head=head, engine=engine)
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
    # Sorted by face_id in small row groups: `facejob search` reads the few groups of its matches.
    saved.write(store, CLUSTERS, table, key, saved.LOOKUP_ROWS, sort_by="face_id")
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
                                                 "link_weight": CLUSTER_LINK_WEIGHT,
                                                 "updated_at": now, "inputs": key, **asdict(summary)},
                                                indent=2).encode())
    log.info("cluster: %d faces -> %d clusters (%d singletons, largest %d); %d merges, %d splits recorded; "
             "%d faces below quality %.2f (%d joined a cluster); %d must-link, %d cannot-link pairs", summary.faces,
             summary.clusters, summary.singletons, summary.largest, summary.merges, summary.splits,
             summary.low_quality, min_quality, summary.attached, stats["must_link"], stats["cannot_link"])
    return summary


def _with_names(store: Store, applied: corr.Applied) -> corr.Applied:
    """`applied` plus the curator's names (stored labels and the corrections' names) as
    must-link and cannot-link pairs: the labels say who is one person and who is not, and
    they win over distances as the page's "same person" does (on LFW with 5 labelled photos of
    each of 158 people, BCubed F 0.935 -> 0.938; bench/lfw_reduce.py)."""
    stored = {}
    if store.exists(LABELS_STORED):
        t = read_parquet(store, LABELS_STORED, columns=["face_id", "name"])
        stored = {f: n for f, n in zip(t.column("face_id").to_pylist(), t.column("name").to_pylist()) if f is not None}
    must, cannot = corr.name_pairs(stored, applied)
    return replace(applied, must=applied.must + must, cannot=applied.cannot + cannot)


def _inputs_digest(faces: Faces, seeds: np.ndarray, applied: corr.Applied, head: lm.Head | None,
                   threshold: float, k: int) -> str:
    """Everything the clustering is a function of: faces (ids, photos, descriptors), which seed,
    the corrections, the metric head and the settings. (The previous ids only name the clusters:
    the same clustering inherits them unchanged.)"""
    arrays = [] if head is None else [head.arrays[n] for n in sorted(head.arrays)]
    return saved.digest("clusters", 2, threshold, k, CLUSTER_MAX_EDGE, CLUSTER_PAIR_MARGIN, CLUSTER_LINK_WEIGHT,
                        faces.face_ids, faces.meta.column("uri"), faces.embeddings, seeds, sorted(applied.must),
                        sorted(applied.cannot), *arrays)


def _unchanged(store: Store, key: str) -> ClusterSummary | None:
    """The last clustering's summary (merges, splits and gone zeroed: nothing moved) when it was
    made from inputs with digest `key` and both its files say so; else None."""
    try:
        doc = json.loads(store.read_bytes(CLUSTERS_JSON)) if store.exists(CLUSTERS_JSON) else {}
    except ValueError:
        return None
    if doc.get("inputs") != key:
        return None
    if not saved.stamped(store, CLUSTERS, key):   # written before clusters.json: after a crash between them they disagree
        return None
    fields = {f: doc[f] for f in ClusterSummary.__dataclass_fields__ if f in doc}
    return ClusterSummary(**{**fields, "merges": 0, "splits": 0, "gone": 0})


def saved_cluster_params(out: str | Store) -> tuple[float, int]:
    """(threshold, k) of the last clustering (OUT/clusters.json), else the defaults. A threshold
    kept by a clustering with another link weight (none recorded: made before the link term)
    bounds another distance, so the default threshold replaces it."""
    store = open_store(out)
    try:
        doc = json.loads(store.read_bytes(CLUSTERS_JSON)) if store.exists(CLUSTERS_JSON) else {}
    except ValueError:  # unreadable: the defaults (the file is rewritten by the next clustering)
        doc = {}
    threshold = float(doc.get("threshold", CLUSTER_THRESHOLD))
    if "threshold" in doc and doc.get("link_weight", 0.0) != CLUSTER_LINK_WEIGHT:
        log.info("cluster: the kept threshold %.3f was set for link weight %s, not %s; using the default %.3f",
                 threshold, doc.get("link_weight", 0.0), CLUSTER_LINK_WEIGHT, CLUSTER_THRESHOLD)
        threshold = CLUSTER_THRESHOLD
    return threshold, int(doc.get("k", CLUSTER_K))


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
