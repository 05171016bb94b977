"""The hnswlib index of all face embeddings, saved under OUT/index/.

    index/faces.hnsw     the hnswlib graph (label i = row i of ids.parquet)
    index/ids.parquet    label -> face_id, uri, face_idx, bbox, deleted
    index/params.json    build parameters and counts; written last, so a crash mid-save leaves
                         files whose counts disagree and the next run rebuilds

This is the layout of the single-process reducer; the reducer on Ray writes a sharded one
(facejob.reduce.shard_index). Each writer first removes the other layout's last-written file
(its mark of completeness) and, once its own is written, the other layout's files: OUT/index/
holds at most one trusted index.

A later run extends the saved index: new faces are added, faces whose photos are gone are
marked deleted (never returned), and existing labels keep their meaning.

Distances are Euclidean, the units of dlib's 0.6 same-person threshold (hnswlib's "l2" space
returns squared distances; we take the root).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.contract.layout import IDS_FILE, INDEX_DIR, INDEX_FILE, PARAMS_FILE, SHARDS_MANIFEST
from facejob.contract.schema import EMBEDDING_DIM
from facejob.io.storage import Store, publish, read_parquet, write_parquet

from .embeddings import Faces
from .errors import NotIndexedError, ReduceError

FORMAT = 1


@dataclass(frozen=True)
class IndexParams:
    """hnswlib settings. M and ef_construction fix the graph; ef_search trades speed for recall."""

    # Measured on 1M synthetic face descriptors (bench/reduce_scale.py, 2 cores): M=32 with a
    # short ef_construction builds as fast as M=16 / ef_construction=100 (~2 min), and its graph
    # gives recall@10 0.984 at ef_search 192 (~3,000 queries/s), where M=16 stalls near 0.97.
    M: int = 32
    ef_construction: int = 64
    ef_search: int = 192
    seed: int = 100

    def graph_settings(self) -> dict:
        return {"M": self.M, "ef_construction": self.ef_construction, "seed": self.seed}


@dataclass
class FaceIndex:
    """A loaded or freshly built index: the hnswlib graph plus its label -> face table."""

    hnsw: hnswlib.Index
    ids: pa.Table          # row = hnsw label; columns face_id, uri, face_idx, left, top, right, bottom, deleted
    params: IndexParams

    @property
    def live(self) -> int:
        return self.ids.num_rows - int(pc.sum(self.ids.column("deleted")).as_py() or 0)

    def query(self, vectors: np.ndarray, k: int, ef: int | None = None, threads: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest faces of each vector: (labels (m, k) int64, Euclidean distances (m, k) float32).

        k is capped at the number of live faces; with none, both arrays have 0 columns.
        """
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, EMBEDDING_DIM)
        k = min(k, self.live)
        if k <= 0 or len(vectors) == 0:
            return np.empty((len(vectors), max(k, 0)), np.int64), np.empty((len(vectors), max(k, 0)), np.float32)
        self.hnsw.set_ef(max(ef or self.params.ef_search, k))
        labels, d2 = self.hnsw.knn_query(vectors, k=k, num_threads=threads)
        return labels.astype(np.int64), np.sqrt(np.maximum(d2, 0)).astype(np.float32)

    def rows_for(self, faces: Faces) -> np.ndarray:
        """For each hnsw label, the row of `faces` holding that face (-1 for deleted faces)."""
        return pc.index_in(self.ids.column("face_id"), faces.face_ids).fill_null(-1).to_numpy().astype(np.int64)


def build(embeddings: np.ndarray, params: IndexParams, threads: int = -1) -> hnswlib.Index:
    """A new hnswlib index over `embeddings`, label i = row i."""
    n = len(embeddings)
    index = hnswlib.Index(space="l2", dim=EMBEDDING_DIM)
    index.init_index(max_elements=max(n, 1), ef_construction=params.ef_construction, M=params.M, random_seed=params.seed)
    if n:
        index.add_items(np.ascontiguousarray(embeddings, np.float32), np.arange(n), num_threads=threads)
    index.set_ef(params.ef_search)
    return index


ID_COLUMNS = ["face_id", "uri", "face_idx", "left", "top", "right", "bottom", "deleted"]


def ids_table(meta: pa.Table) -> pa.Table:
    """The label table of faces (their meta columns): what a search answers of a label."""
    t = meta.select(ID_COLUMNS[:-1])
    return t.append_column("deleted", pa.array(np.zeros(t.num_rows, bool)))


def update_index(store: Store, faces: Faces, params: IndexParams = IndexParams(), rebuild: bool = False,
                 threads: int = -1, log=print) -> FaceIndex:
    """Bring OUT/index/ up to date with `faces` and save it; returns the index.

    Extends the saved index when its graph settings match (adds new faces, marks removed ones
    deleted); builds a new one when there is none, it is unreadable, its settings differ, or
    `rebuild` is set.
    """
    old = None if rebuild else _load_or_none(store, log)
    if old is not None and old.params.graph_settings() != params.graph_settings():
        log("index: graph settings changed; rebuilding")
        old = None
    t0 = time.perf_counter()
    if old is None:
        fi = FaceIndex(build(faces.embeddings, params, threads), ids_table(faces.meta), params)
        log(f"index: built {len(faces)} faces in {time.perf_counter() - t0:.1f}s")
    else:
        fi = _extend(old, faces, params, threads)
        if (old.params == params and fi.ids.num_rows == old.ids.num_rows
                and fi.ids.column("deleted").equals(old.ids.column("deleted"))):
            log(f"index: unchanged, {fi.live} live faces")
            return fi      # nothing added, deleted or back: the saved files are this index already
        log(f"index: extended to {fi.live} live faces in {time.perf_counter() - t0:.1f}s")
    save(store, fi)
    return fi


def _extend(old: FaceIndex, faces: Faces, params: IndexParams, threads: int) -> FaceIndex:
    cur_ids = faces.face_ids
    old_ids = old.ids.column("face_id")
    still_there = pc.is_in(old_ids, value_set=cur_ids).to_numpy(zero_copy_only=False)
    deleted = old.ids.column("deleted").to_numpy(zero_copy_only=False)
    for label in np.flatnonzero(still_there & deleted):
        old.hnsw.unmark_deleted(int(label))  # a photo that came back
    for label in np.flatnonzero(~still_there & ~deleted):
        old.hnsw.mark_deleted(int(label))
    new_rows = np.flatnonzero(~pc.is_in(cur_ids, value_set=old_ids).to_numpy(zero_copy_only=False))
    start = old.ids.num_rows
    if len(new_rows):
        old.hnsw.resize_index(start + len(new_rows))
        old.hnsw.add_items(faces.embeddings[new_rows], np.arange(start, start + len(new_rows)), num_threads=threads)
    ids = old.ids.set_column(old.ids.schema.get_field_index("deleted"), "deleted", pa.array(~still_there))
    if len(new_rows):
        ids = pa.concat_tables([ids, ids_table(faces.meta.take(new_rows))])
    old.hnsw.set_ef(params.ef_search)
    return FaceIndex(old.hnsw, ids.combine_chunks(), params)


def save(store: Store, fi: FaceIndex) -> None:
    store.delete(SHARDS_MANIFEST)        # a sharded index there is no longer trusted
    save_graph(store, INDEX_FILE, fi.hnsw)
    write_parquet(store, IDS_FILE, fi.ids)
    meta = {"format": FORMAT, "space": "l2", "dim": EMBEDDING_DIM, "count": fi.ids.num_rows, "live": fi.live,
            "saved_at": saved_at(), **dataclasses.asdict(fi.params)}
    store.write_bytes(PARAMS_FILE, json.dumps(meta, indent=2).encode())
    clear(store, {INDEX_FILE, IDS_FILE, PARAMS_FILE})


def saved_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def clear(store: Store, keep: set[str]) -> None:
    """Delete every file under OUT/index/ but `keep` (another layout's or an older build's)."""
    for rel in store.list(INDEX_DIR):
        if rel not in keep:
            store.delete(rel)


def save_graph(store: Store, rel: str, index: hnswlib.Index) -> None:
    """An hnswlib graph to OUT/rel, whole or not at all."""
    dest = store.local_path(rel)
    if dest is not None:
        # Straight to a temp file next to the destination, then rename: no copy of the bytes in memory.
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        try:
            index.save_index(tmp)
            publish(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    with tempfile.TemporaryDirectory() as d:
        index.save_index(f"{d}/graph.hnsw")
        store.write_bytes(rel, Path(f"{d}/graph.hnsw").read_bytes())


def load_graph(store: Store, rel: str, n: int, params: IndexParams) -> hnswlib.Index:
    """The hnswlib graph of OUT/rel, which must hold `n` faces (else ReduceError: rebuilt next run)."""
    index = hnswlib.Index(space="l2", dim=EMBEDDING_DIM)
    local = store.local_path(rel)
    if local is not None:
        index.load_index(str(local), max_elements=max(n, 1))
    else:
        with tempfile.TemporaryDirectory() as d:
            Path(f"{d}/graph.hnsw").write_bytes(store.read_bytes(rel))
            index.load_index(f"{d}/graph.hnsw", max_elements=max(n, 1))
    if index.element_count != n:
        raise ReduceError(f"{store.root}/index/ is inconsistent (graph {index.element_count} vs ids {n}); "
                          "it will be rebuilt")
    index.set_ef(params.ef_search)
    return index


def load(store: Store) -> FaceIndex:
    """The saved index of OUT; NotIndexedError when there is none (run `facejob reduce` first)."""
    if not store.exists(PARAMS_FILE):
        if store.exists(SHARDS_MANIFEST):
            raise NotIndexedError(f"{store.root}/index/ is sharded (written by `facejob reduce --workers`); "
                                  "facejob.reduce.shard_index reads it")
        raise NotIndexedError(f"no face index under {store.root}/index/; run `facejob reduce {store.root}` first")
    meta = json.loads(store.read_bytes(PARAMS_FILE))
    if meta.get("format") != FORMAT or meta.get("dim") != EMBEDDING_DIM:
        raise ReduceError(f"{store.root}/{PARAMS_FILE}: unsupported index format; rebuild with `facejob reduce --rebuild-index`")
    params = IndexParams(**{f.name: meta[f.name] for f in dataclasses.fields(IndexParams)})
    ids = read_parquet(store, IDS_FILE)
    n = ids.num_rows
    if n != meta["count"]:
        raise ReduceError(f"{store.root}/index/ is inconsistent (ids {n} vs params {meta['count']}); it will be rebuilt")
    return FaceIndex(load_graph(store, INDEX_FILE, n, params), ids, params)


def _load_or_none(store: Store, log) -> FaceIndex | None:
    if not store.exists(PARAMS_FILE):
        return None
    try:
        return load(store)
    except (ReduceError, RuntimeError, OSError, KeyError, TypeError, ValueError) as e:
        log(f"index: saved index unusable ({e}); rebuilding")
        return None
