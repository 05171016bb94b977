"""The search index step and searching it: OUT/index/ (hnswlib over every face of OUT/faces/),
the nearest archive faces of a photo's faces or of one archive face.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.config import ModelConfig
from facejob.contract.layout import CLUSTERS, PREDICTIONS
from facejob.io.lock import writes_output
from facejob.io.storage import Store, open_store

from . import metric as lm
from . import saved
from .embeddings import Faces, read_faces
from .errors import NotIndexedError, ReduceError
from .hnsw import FaceIndex, IndexParams, update_index
from .hnsw import load as load_index

log = logging.getLogger("facejob.reduce")


@writes_output("reduce")
def index(out: str | Store, params: IndexParams = IndexParams(), rebuild: bool = False,
          faces: Faces | None = None) -> FaceIndex:
    """Build or extend OUT/index/ so it holds exactly the faces of OUT/faces/."""
    store = open_store(out)
    faces = faces if faces is not None else read_faces(store)
    return update_index(store, faces, params, rebuild=rebuild, log=log.info)


def face_model(store: Store):
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

    store = open_store(out)
    head = lm.head_for(store, metric)
    fi = load_index(store)
    model, _ = face_model(store)
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
    store = open_store(out)
    head = lm.head_for(store, metric)
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
    """face_id -> the requested columns of OUT/rel, for the matched faces only (reads only the
    row groups that can hold them; see saved.rows_by_key)."""
    if not store.exists(rel) or not face_ids:
        return {}
    t = saved.rows_by_key(store, rel, "face_id", face_ids, columns)
    return {r["face_id"]: r for r in t.to_pylist()}
