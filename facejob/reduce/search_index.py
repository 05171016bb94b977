"""The search index step and searching it: OUT/index/ (hnswlib over every face of OUT/faces/,
one index or, written by the reducer on Ray, shards: facejob.reduce.shard_index), the nearest
archive faces of a photo's faces or of one archive face.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.config import ModelConfig
from facejob.contract.layout import CLUSTERS, PREDICTIONS
from facejob.contract.schema import EMBEDDING_DIM
from facejob.io.lock import writes_output
from facejob.io.storage import Store, open_store

from . import metric as lm
from . import saved
from . import shard_index as si
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


def search(out: str | Store, photo: str | bytes, k: int = 10, metric: str = "learned",
           address: str | None = None, shards: int = 0) -> list[QueryFace]:
    """The k nearest archive faces of every face in `photo` (a path, s3:// uri, or bytes); with
    `metric` "learned" and a metric head in OUT, by the learned distance. With `address`, the
    search service on that Ray cluster answers (facejob.reduce.search_service, `shards` actors)
    from OUT/faces/ as it is now; without, OUT/index/ is searched in this process (of a sharded
    index, only the shards the photo's faces visit are loaded)."""
    from facejob.io.sources import read_bytes, source_uri

    store = open_store(out)
    head = lm.head_for(store, metric)
    nearest = _service(store, address, shards).nearest if address else _open(store).nearest
    model, _ = face_model(store)
    data = photo if isinstance(photo, bytes) else read_bytes(source_uri(str(photo)))
    res = model.process_bytes(data)
    if res.error:
        raise ReduceError(f"cannot read the query photo: {res.error}")
    if not res.faces:
        return []
    emb = np.stack([f.embedding for f in res.faces])
    rows, dist = _query(nearest, emb, k, head)
    return [QueryFace(f.face_idx, (f.left, f.top, f.right, f.bottom), m)
            for f, m in zip(res.faces, _matches(store, rows, dist))]


def search_face(out: str | Store, face_id: str, k: int = 10, metric: str = "learned",
                address: str | None = None, shards: int = 0) -> QueryFace:
    """The k nearest other faces of an archive face, by its face_id (`address`, `shards`: as `search`)."""
    store = open_store(out)
    head = lm.head_for(store, metric)
    if address:
        svc = _service(store, address, shards)
        found, nearest = svc.vector(face_id), svc.nearest
    else:
        local = _open(store)
        found, nearest = local.vector(face_id), local.nearest
    if found is None:
        where = "OUT/faces/" if address else "the index"
        raise ReduceError(f"face_id {face_id!r} is not in {where} of {store.root}")
    vec, r = found
    rows, dist = _query(nearest, vec[None], k + 1, head)
    keep = np.flatnonzero(pc.not_equal(rows.column("face_id"), face_id).to_numpy(zero_copy_only=False))[:k]
    m = _matches(store, rows.take(pa.array(keep)), dist[:, keep])[0]
    return QueryFace(-1, (r["left"], r["top"], r["right"], r["bottom"]), m)


def stop_service(out: str | Store, address: str) -> int:
    """End OUT's search service on the Ray at `address`; how many shard actors it had."""
    from .search_service import stop

    return stop(out, address)


def _open(store: Store) -> _Local | si.ShardedIndex:
    """OUT/index/ for searching in this process: the sharded layout (a shard is loaded when a
    query first visits it) or the single index (loaded whole)."""
    return si.load(store) if si.is_sharded(store) else _Local(load_index(store))


def _service(store: Store, address: str, shards: int):
    from .search_service import SearchService

    return SearchService(store, address, shards)


# nearest(vectors, n, with_vectors) -> (rows of ids' columns, query-major; distances (m, n');
# embeddings (m, n', 128) or None), n' = min(n, live faces): what _query needs of an index.
Nearest = Callable[[np.ndarray, int, bool], tuple[pa.Table, np.ndarray, "np.ndarray | None"]]


@dataclass
class _Local:
    """OUT/index/ loaded into this process."""

    fi: FaceIndex

    def nearest(self, vectors: np.ndarray, n: int, with_vectors: bool = False
                ) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
        labels, dist = self.fi.query(vectors, n)
        flat = labels.reshape(-1)
        vecs = (np.asarray(self.fi.hnsw.get_items(flat), np.float32).reshape(*labels.shape, -1)
                if with_vectors and len(flat) else np.empty((*labels.shape, EMBEDDING_DIM), np.float32))
        return self.fi.ids.take(pa.array(flat)), dist, vecs if with_vectors else None

    def vector(self, face_id: str) -> tuple[np.ndarray, dict] | None:
        hit = pc.index(self.fi.ids.column("face_id"), face_id).as_py()
        if hit < 0 or self.fi.ids.column("deleted")[hit].as_py():
            return None
        return np.asarray(self.fi.hnsw.get_items([hit]), np.float32)[0], self.fi.ids.slice(hit, 1).to_pylist()[0]


def _query(nearest: Nearest, emb: np.ndarray, k: int, head: lm.Head | None) -> tuple[pa.Table, np.ndarray]:
    """The k nearest (rows, query-major, and distances (m, k')); with a metric head, the plain 4k
    nearest re-ranked by learned distance."""
    if head is None:
        rows, dist, _ = nearest(emb, k, False)
        return rows, dist
    rows, _, vecs = nearest(emb, 4 * k, True)
    width = vecs.shape[1]
    if width == 0:
        return rows, np.empty((len(emb), 0), np.float32)
    cand = head.apply(vecs.reshape(-1, EMBEDDING_DIM)).reshape(len(emb), width, -1)
    d = np.linalg.norm(cand - head.apply(emb)[:, None], axis=2)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    take = (np.arange(len(emb))[:, None] * width + order).reshape(-1)
    return rows.take(pa.array(take)), np.take_along_axis(d, order, 1).astype(np.float32)


def _matches(store: Store, rows: pa.Table, dist: np.ndarray) -> list[list[Match]]:
    recs = rows.to_pylist()
    ids = [r["face_id"] for r in recs]
    cid = _lookup(store, CLUSTERS, ids, ["cluster_id"])
    lab = _lookup(store, PREDICTIONS, ids, ["label", "probability"])
    ms = [Match(r["face_id"], r["uri"], r["face_idx"], (r["left"], r["top"], r["right"], r["bottom"]), float(d),
                cid.get(r["face_id"], {}).get("cluster_id"), lab.get(r["face_id"], {}).get("label"),
                lab.get(r["face_id"], {}).get("probability"))
          for r, d in zip(recs, dist.reshape(-1))]
    k = dist.shape[1]
    return [ms[i * k:(i + 1) * k] for i in range(len(dist))]


def _lookup(store: Store, rel: str, face_ids: list[str], columns: list[str]) -> dict[str, dict]:
    """face_id -> the requested columns of OUT/rel, for the matched faces only (reads only the
    row groups that can hold them; see saved.rows_by_key)."""
    if not store.exists(rel) or not face_ids:
        return {}
    t = saved.rows_by_key(store, rel, "face_id", face_ids, columns)
    return {r["face_id"]: r for r in t.to_pylist()}
