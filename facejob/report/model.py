"""What the review page shows, computed from OUT: people (clusters) in order, their faces most
doubtful first, the photos behind them, duplicates and the run summary. Pure numpy/Arrow work
over tables read once; no images are touched here (see facejob/report/thumbs.py).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.contract.layout import CLUSTERS, CLUSTERS_JSON, DUPLICATES, PREDICTIONS, RUN_JSON
from facejob.reduce.embeddings import Faces, read_faces, read_images
from facejob.reduce.errors import NotIndexedError
from facejob.reduce.graph import GRAPH_EF
from facejob.reduce.hnsw import IndexParams, build, load as load_index
from facejob.io.storage import Store, read_parquet

log = logging.getLogger("facejob.report")

NEIGHBOURS = 10        # kNN per face for "nearest same-cluster / nearest other" distances
CARD_THUMBS = 5        # faces shown on a person's card
NAME_SHARE = 0.5       # a cluster takes a predicted name held by at least this share of its faces
HIST_BINS = np.round(np.arange(0.0, 1.2001, 0.025), 3)


@dataclass
class People:
    """Faces in page order: person by person (largest first), each person cluster by cluster
    (largest first), each cluster most doubtful first.

    A person is the clusters that carry one name (the curator's or the predicted one): the
    clusterer may split someone, the page shows them once. An unnamed cluster is a person alone.
    """

    faces: Faces                   # rows = faces of OUT (read order)
    order: np.ndarray              # page position -> face row
    cluster_of: np.ndarray         # per face row: cluster position (0 = largest)
    cluster_ids: np.ndarray        # per cluster position: its stable cluster_id
    starts: np.ndarray             # per cluster position: first page position of its faces
    sizes: np.ndarray              # per cluster position: faces
    doubt: np.ndarray              # per face row: distance to its cluster's mean face
    flagged: np.ndarray            # per face row: bool, least certain members
    near_same: np.ndarray          # per face row: distance to the nearest face of its person (nan: none found)
    near_other: np.ndarray         # per face row: ... of another person (clusters of its name are not others)
    label: list[str | None]        # per face row: predicted name or None
    prob: np.ndarray               # per face row: probability of that name (nan: none)
    labelled: np.ndarray           # per face row: named by the curator
    names: list[str | None] = field(default_factory=list)   # per cluster position
    name_conf: list[float | None] = field(default_factory=list)
    name_given: list[bool] = field(default_factory=list)     # the curator named (some of) it
    person_of: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # per cluster position: person
    person_starts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # per person: first cluster pos

    def clusters_of(self, person: int) -> range:
        """The cluster positions of a person (contiguous, largest first)."""
        end = self.person_starts[person + 1] if person + 1 < len(self.person_starts) else len(self.sizes)
        return range(int(self.person_starts[person]), int(end))


def read_people(store: Store) -> People:
    """Read faces, clusters and predictions of OUT and put them in page order."""
    faces = read_faces(store, ["face_id", "uri", "face_idx", "left", "top", "right", "bottom", "landmarks"])
    if not store.exists(CLUSTERS):
        raise NotIndexedError(f"{store.root}/{CLUSTERS} not found; run `facejob reduce {store.root}` first")
    cl = read_parquet(store, CLUSTERS, ["face_id", "cluster_id"])
    pos = pc.index_in(faces.face_ids, cl.column("face_id")).fill_null(-1).to_numpy().astype(np.int64)
    # Only clustered faces are people: faces indexed after the last clustering wait for the next
    # `facejob reduce` (every face in clusters.parquet, low-quality ones included, is shown).
    keep = pos >= 0
    if not keep.all():
        faces = Faces(meta=faces.meta.filter(pa.array(keep)), embeddings=faces.embeddings[keep])
        pos = pos[keep]
    cid = cl.column("cluster_id").to_numpy()[pos] if len(pos) else np.empty(0, np.int64)
    n = len(faces)
    label: list[str | None] = [None] * n
    prob = np.full(n, np.nan, np.float32)
    labelled = np.zeros(n, bool)
    if store.exists(PREDICTIONS):
        pr = read_parquet(store, PREDICTIONS, ["face_id", "label", "probability", "labelled"])
        ppos = pc.index_in(faces.face_ids, pr.column("face_id")).fill_null(-1).to_numpy().astype(np.int64)
        plab = pr.column("label").to_pylist()
        pprob = pr.column("probability").to_numpy(zero_copy_only=False)
        plabd = pr.column("labelled").to_numpy(zero_copy_only=False)
        for r in np.flatnonzero(ppos >= 0).tolist():
            p = ppos[r]
            label[r] = None if plab[p] == "unknown" else plab[p]
            prob[r], labelled[r] = pprob[p], plabd[p]

    uroots, inv, size = np.unique(cid, return_inverse=True, return_counts=True)
    by = np.argsort(inv, kind="stable")
    mean = np.add.reduceat(faces.embeddings[by].astype(np.float64), np.r_[0, np.cumsum(size)[:-1]]) / size[:, None] \
        if n else np.zeros((0, faces.embeddings.shape[1]))
    doubt = np.linalg.norm(faces.embeddings - mean[inv].astype(np.float32), axis=1) if n else np.empty(0, np.float32)
    names, conf, given = _cluster_names(inv, len(uroots), label, prob, labelled)
    # Persons: clusters sharing a name are one; an unnamed cluster is one alone.
    key = {}
    person = np.array([key.setdefault(nm if nm is not None else (c,), len(key)) for c, nm in enumerate(names)],
                      np.int64)
    psize = np.bincount(person, weights=size, minlength=len(key)).astype(np.int64)
    near_same, near_other = _nearest(store, faces, person[inv])

    # Order: persons largest first, then their clusters largest first; ties by cluster id (stable
    # from run to run).
    first_id = np.full(len(key), np.iinfo(np.int64).max)
    np.minimum.at(first_id, person, uroots)
    pord = np.lexsort((first_id, -psize))
    prank = np.empty(len(key), np.int64)
    prank[pord] = np.arange(len(key))
    corder = np.lexsort((uroots, -size, prank[person]))
    cpos = np.empty(len(uroots), np.int64)
    cpos[corder] = np.arange(len(uroots))
    cluster_of = cpos[inv]
    person_of = prank[person[corder]]
    person_starts = np.flatnonzero(np.r_[True, np.diff(person_of) != 0]) if len(corder) else np.empty(0, np.int64)
    # Doubtful: a face of another person is nearer than any of its own person's (none of its
    # own among the neighbours counts as farther).
    flagged = (psize[person[inv]] > 1) & np.isfinite(near_other) & ~(near_same <= near_other)
    # A face whose name differs from its cluster's is doubtful too.
    cname = np.array(names, object)[inv] if n else np.empty(0, object)
    flagged |= np.array([lab is not None and cn is not None and lab != cn for lab, cn in zip(label, cname)], bool)
    # Page order: cluster position, flagged first, then farthest from the cluster's mean first.
    order = np.lexsort((-doubt, ~flagged, cluster_of))
    sizes = size[corder]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    names, conf, given = [names[c] for c in corder], [conf[c] for c in corder], [given[c] for c in corder]
    return People(faces=faces, order=order, cluster_of=cluster_of, cluster_ids=uroots[corder], starts=starts,
                  sizes=sizes, doubt=doubt.astype(np.float32), flagged=flagged, near_same=near_same,
                  near_other=near_other, label=label, prob=prob, labelled=labelled, names=names,
                  name_conf=conf, name_given=given, person_of=person_of, person_starts=person_starts)


def _cluster_names(cluster_of: np.ndarray, n_clusters: int, label: list[str | None], prob: np.ndarray,
                   labelled: np.ndarray) -> tuple[list[str | None], list[float | None], list[bool]]:
    """Per cluster: the curator's name if some members carry one, else the predicted name most of
    its faces share (with their mean probability), else None."""
    votes: list[Counter] = [Counter() for _ in range(n_clusters)]
    given: list[Counter] = [Counter() for _ in range(n_clusters)]
    psum: list[dict[str, float]] = [{} for _ in range(n_clusters)]
    size = np.bincount(cluster_of, minlength=n_clusters)
    for r in np.flatnonzero([lab is not None for lab in label]).tolist():
        c, lab = int(cluster_of[r]), label[r]
        votes[c][lab] += 1
        psum[c][lab] = psum[c].get(lab, 0.0) + float(prob[r])
        if labelled[r]:
            given[c][lab] += 1
    names, conf, is_given = [], [], []
    for c in range(n_clusters):
        if given[c]:
            name = given[c].most_common(1)[0][0]
            names.append(name); conf.append(1.0); is_given.append(True)
        elif votes[c] and votes[c].most_common(1)[0][1] >= NAME_SHARE * size[c]:
            name, k = votes[c].most_common(1)[0]
            names.append(name); conf.append(round(psum[c][name] / k, 3)); is_given.append(False)
        else:
            names.append(None); conf.append(None); is_given.append(False)
    return names, conf, is_given


def _nearest(store: Store, faces: Faces, cluster: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per face: distance to its nearest face in the same group (`cluster`: per face), and in
    another one (nan if none among its NEIGHBOURS nearest), from OUT's search index (or a
    throwaway one)."""
    n = len(faces)
    same = np.full(n, np.nan, np.float32)
    other = np.full(n, np.nan, np.float32)
    if n < 2:
        return same, other
    try:
        fi = load_index(store)
        rows = fi.rows_for(faces)
        complete = int((rows >= 0).sum()) == n
    except (NotIndexedError, OSError, ValueError, KeyError) as e:
        log.info("report: no usable search index in %s (%s); building one in memory", store.root, e)
        complete = False
    if complete:
        labels, dist = fi.query(faces.embeddings, NEIGHBOURS + 1, ef=GRAPH_EF)
        j = rows[labels]
    else:
        index = build(faces.embeddings, IndexParams())
        index.set_ef(max(GRAPH_EF, NEIGHBOURS + 1))
        j, d2 = index.knn_query(faces.embeddings, k=min(NEIGHBOURS + 1, n))
        j, dist = j.astype(np.int64), np.sqrt(np.maximum(d2, 0)).astype(np.float32)
    i = np.arange(n)[:, None]
    valid = (j >= 0) & (j != i)
    is_same = valid & (cluster[np.maximum(j, 0)] == cluster[:, None])
    is_other = valid & ~is_same
    ds = np.where(is_same, dist, np.inf).min(1)
    do = np.where(is_other, dist, np.inf).min(1)
    same[np.isfinite(ds)] = ds[np.isfinite(ds)]
    other[np.isfinite(do)] = do[np.isfinite(do)]
    return same, other


def histogram(people: People, threshold: float | None) -> dict[str, Any]:
    """Counts of nearest same-person and nearest other-person distances per bin."""
    s = people.near_same[np.isfinite(people.near_same)]
    o = people.near_other[np.isfinite(people.near_other)]
    return {"edges": HIST_BINS.tolist(), "same": np.histogram(s, HIST_BINS)[0].tolist(),
            "other": np.histogram(o, HIST_BINS)[0].tolist(), "threshold": threshold}


def file_name(uri: str) -> str:
    """A photo's folder and file name, the last two parts of its path or S3 key (what the page
    shows and searches; the whole path is in the tooltip)."""
    p = PurePosixPath(uri.replace("\\", "/"))
    return f"{p.parent.name}/{p.name}" if p.parent.name else (p.name or uri)


# ---------------------------------------------------------------------------- run summary

def run_summary(store: Store, max_errors: int = 1000) -> dict[str, Any]:
    """Counts, errors with reasons, timings and per-stage throughput of OUT's runs."""
    images = read_images(store, ["uri", "status", "error", "n_faces"])
    status = Counter(images.column("status").to_pylist())
    err = images.filter(pc.equal(images.column("status"), "error"))
    errors = err.column("error").to_pylist()
    reasons = Counter((e or "unknown").split(":", 1)[0] for e in errors)
    run = json.loads(store.read_bytes(RUN_JSON)) if store.exists(RUN_JSON) else {}
    clusters = json.loads(store.read_bytes(CLUSTERS_JSON)) if store.exists(CLUSTERS_JSON) else {}
    t = run.get("timings") or {}
    processed = (run.get("counts") or {}).get("processed", 0)
    stages = [(k[:-len("_worker_s")], float(v)) for k, v in t.items() if k.endswith("_worker_s") and v]
    return {
        "images": images.num_rows, "status": dict(status),
        "faces": int(pc.sum(images.column("n_faces")).as_py() or 0),
        "errors_by_reason": dict(reasons.most_common()), "errors_total": len(errors),
        "errors": [[u, e] for u, e in zip(err.column("uri").to_pylist()[:max_errors], errors[:max_errors])],
        "last_run": {k: run.get(k) for k in ("started", "finished", "sources", "counts", "images_per_s", "nodes")},
        "timings": {k: round(float(v), 2) for k, v in t.items() if isinstance(v, (int, float))},
        # Worker seconds per stage, summed over workers: images per worker-second of that stage.
        "throughput": [[name, round(processed / s, 2) if processed else 0.0, round(s, 2)] for name, s in stages],
        "cluster": {k: clusters.get(k) for k in ("faces", "clusters", "singletons", "largest", "merges", "splits",
                                                   "threshold", "updated_at", "timings")},
        "history": [{"started": h.get("started"), "processed": (h.get("counts") or {}).get("processed"),
                     "total_s": (h.get("timings") or {}).get("total_s")} for h in run.get("history", [])[-20:]],
    }


def duplicate_groups(store: Store) -> list[dict[str, Any]]:
    """Groups of copies from OUT/duplicates.parquet, kept copy first."""
    if not store.exists(DUPLICATES):
        return []
    t = read_parquet(store, DUPLICATES).to_pylist()
    groups: dict[int, list[dict]] = {}
    for r in t:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for g, rows in sorted(groups.items()):
        rows.sort(key=lambda r: (not r["keep"], r["uri"]))
        out.append({"group": g, "kind": rows[0]["kind"], "photos": rows})
    return out


def photo_info(store: Store) -> dict[str, tuple[int, int, str | None]]:
    """uri -> (width, height after EXIF rotation, sha256), for every photo of OUT."""
    t = read_images(store, ["uri", "width", "height", "sha256"])
    return {u: (w or 0, h or 0, sha) for u, w, h, sha in
            zip(*(t.column(c).to_pylist() for c in ("uri", "width", "height", "sha256")))}
