"""The sharded search index the reducer on Ray writes under OUT/index/ (no process holds every
face: each shard actor of facejob.reduce.ray_reduce saves its own graph), and searching it in
one process: `facejob search OUT PHOTO` loads only the shards its query faces visit.

    index/shard-<build>-<i>.hnsw         shard i's hnswlib graph (label j = row j of its ids table)
    index/shard-<build>-<i>.ids.parquet  its label table: face_id, uri, face_idx, left, top, right,
                                         bottom, deleted (as index/ids.parquet) and row (the face's
                                         row in the reduce that wrote it: one number per face, in
                                         every shard that holds it)
    index/shards.json                    the manifest, written last: format, layout "sharded", the
                                         hnswlib params (M, ef_construction, ef_search, seed), count
                                         (faces), replicas, probe, centroids (the cells' centres),
                                         shards [{hnsw, ids, count}], inputs (a digest of the
                                         settings and face ids: a rerun over the same faces keeps it)

The cells are facejob.reduce.partition's: each face is stored in the shards of its `replicas`
nearest centroids, a query visits its `probe` nearest, and the shards' answers merge by row
(partition.merge_answers), exactly as the reducer's own shard actors answer. <build> is new for
each write, so a crash before the manifest is written leaves the previous manifest and the
files it names whole; the files of any other build (and of the single-process layout,
facejob.reduce.hnsw) are deleted after it.
"""
from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass, field

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.contract.layout import PARAMS_FILE, SHARDS_MANIFEST, index_shard_files
from facejob.contract.schema import EMBEDDING_DIM, FACES
from facejob.io.storage import Store, read_parquet, write_parquet

from . import partition as pt
from . import saved
from .errors import NotIndexedError, ReduceError
from .hnsw import ID_COLUMNS, IndexParams, clear, ids_table, load_graph, saved_at

FORMAT = 1


def inputs_key(params: IndexParams, replicas: int, probe: int, shards: int, face_ids: pa.ChunkedArray) -> str:
    """What a sharded index is made of: its settings and the faces (by id, in row order)."""
    return saved.digest("sharded-index", FORMAT, dataclasses.asdict(params), replicas, probe, shards, face_ids)


def _manifest(store: Store) -> dict | None:
    try:
        meta = json.loads(store.read_bytes(SHARDS_MANIFEST))
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == FORMAT and meta.get("dim") == EMBEDDING_DIM else None


def is_sharded(store: Store) -> bool:
    return store.exists(SHARDS_MANIFEST)


def unchanged(store: Store, key: str) -> bool:
    """Whether OUT/index/ is a whole sharded index made of `key` (inputs_key) already."""
    meta = _manifest(store)
    return (meta is not None and meta.get("inputs") == key
            and all(store.exists(s["hnsw"]) and store.exists(s["ids"]) for s in meta["shards"]))


def begin(store: Store) -> str:
    """Start writing a sharded index: the single-process index is no longer trusted; a new build name."""
    store.delete(PARAMS_FILE)
    return f"{saved_at().replace('-', '').replace(':', '')}-{secrets.token_hex(3)}"


def save_labels(store: Store, build: str, shard: int, meta: pa.Table, rows: np.ndarray) -> int:
    """Shard `shard`'s label table: the faces at `rows` (sorted; its graph's labels in order) of `meta`."""
    t = ids_table(meta.take(pa.array(rows))).append_column("row", pa.array(np.asarray(rows, np.int64)))
    write_parquet(store, index_shard_files(build, shard)[1], t)
    return t.num_rows


def finish(store: Store, build: str, key: str, params: IndexParams, replicas: int, probe: int,
           centroids: np.ndarray, counts: list[int], faces: int) -> None:
    """The manifest of a build whose shard files are all written; then the other files go."""
    files = [index_shard_files(build, i) for i in range(len(counts))]
    meta = {"format": FORMAT, "layout": "sharded", "space": "l2", "dim": EMBEDDING_DIM, "count": faces,
            "live": faces, "saved_at": saved_at(), **dataclasses.asdict(params), "replicas": replicas,
            "probe": probe, "inputs": key, "centroids": np.asarray(centroids, np.float32).tolist(),
            "shards": [{"hnsw": h, "ids": i, "count": c} for (h, i), c in zip(files, counts)]}
    store.write_bytes(SHARDS_MANIFEST, json.dumps(meta).encode())
    clear(store, {SHARDS_MANIFEST, *(f for pair in files for f in pair)})


@dataclass
class ShardedIndex:
    """A sharded OUT/index/ opened for searching: its shards are loaded when a query first visits
    them. `nearest` and `vector` answer as search_index's single-index reader does."""

    store: Store
    params: IndexParams
    probe: int
    centroids: np.ndarray
    shards: list[dict]
    loaded: dict[int, tuple[pa.Table, hnswlib.Index]] = field(default_factory=dict)

    def _shard(self, p: int) -> tuple[pa.Table, hnswlib.Index]:
        if p not in self.loaded:
            s = self.shards[p]
            ids = read_parquet(self.store, s["ids"])
            if ids.num_rows != s["count"]:
                raise ReduceError(f"{self.store.root}/index/ is inconsistent (shard {p}: ids {ids.num_rows} vs "
                                  f"manifest {s['count']}); it will be rebuilt")
            self.loaded[p] = ids, load_graph(self.store, s["hnsw"], s["count"], self.params)
        return self.loaded[p]

    def nearest(self, vectors: np.ndarray, n: int, with_vectors: bool = False
                ) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
        """The n nearest faces of each vector: their label rows (query-major), distances (m, n')
        and with `with_vectors` descriptors (m, n', 128); n' = min(n, faces found for every vector)."""
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, EMBEDDING_DIM)
        m = len(vectors)
        answers, where = [], []          # where: per answer, (its shard, labels) to find its faces again
        if m and n > 0 and len(self.centroids):
            for p, asked in enumerate(pt.probed(vectors, self.centroids, self.probe)):
                k = min(n, self.shards[p]["count"])
                if not len(asked) or k == 0:
                    continue
                ids, graph = self._shard(p)
                graph.set_ef(max(self.params.ef_search, k))
                lab, d2 = graph.knn_query(vectors[asked], k=k)
                lab = lab.astype(np.int64)
                answers.append((asked, ids.column("row").to_numpy()[lab], np.sqrt(np.maximum(d2, 0)).astype(np.float32)))
                where.append((p, lab))
        rows, dist = pt.merge_answers(m, answers, max(n, 0))
        width = int((rows >= 0).sum(1).min()) if m else 0
        rows, dist = rows[:, :width], dist[:, :width]
        # Each face found: a shard and label holding it (any: every copy is the same face).
        found = np.concatenate([a[1].reshape(-1) for a in answers]) if answers else np.empty(0, np.int64)
        shard = np.concatenate([np.full(lab.size, p) for p, lab in where]) if where else np.empty(0, np.int64)
        label = np.concatenate([lab.reshape(-1) for _, lab in where]) if where else np.empty(0, np.int64)
        uniq, first = np.unique(found, return_index=True)
        at = first[np.searchsorted(uniq, rows.reshape(-1))] if rows.size else np.empty(0, np.int64)
        pieces, order = [], []
        vecs = np.empty((rows.size, EMBEDDING_DIM), np.float32)
        for p in np.unique(shard[at]).tolist():
            sel = np.flatnonzero(shard[at] == p)
            ids, graph = self._shard(p)
            pieces.append(ids.select(ID_COLUMNS).take(pa.array(label[at[sel]])))
            order.append(sel)
            if with_vectors:
                vecs[sel] = np.asarray(graph.get_items(label[at[sel]]), np.float32)
        table = (pa.concat_tables(pieces).take(pa.array(np.argsort(np.concatenate(order)))) if pieces
                 else _empty_ids())
        return table, dist, vecs.reshape(m, width, EMBEDDING_DIM) if with_vectors else None

    def vector(self, face_id: str) -> tuple[np.ndarray, dict] | None:
        """The descriptor and label row of the face `face_id`, or None when the index has none
        (each shard's face ids are read until one holds it)."""
        for p, s in enumerate(self.shards):
            if p in self.loaded:
                col = self.loaded[p][0].column("face_id")
            else:
                col = read_parquet(self.store, s["ids"], columns=["face_id"]).column("face_id")
            hit = pc.index(col, face_id).as_py()
            if hit >= 0:
                ids, graph = self._shard(p)
                if not ids.column("deleted")[hit].as_py():
                    row = ids.select(ID_COLUMNS).slice(hit, 1).to_pylist()[0]
                    return np.asarray(graph.get_items([hit]), np.float32)[0], row
        return None


def _empty_ids() -> pa.Table:
    return ids_table(pa.schema([FACES.field(c) for c in ID_COLUMNS[:-1]]).empty_table())


def load(store: Store) -> ShardedIndex:
    """The sharded index of OUT (its manifest; shards load as queries visit them)."""
    if not store.exists(SHARDS_MANIFEST):
        raise NotIndexedError(f"no face index under {store.root}/index/; run `facejob reduce {store.root}` first")
    meta = _manifest(store)
    if meta is None:
        raise ReduceError(f"{store.root}/{SHARDS_MANIFEST}: unsupported index format; rebuild with "
                          "`facejob reduce --rebuild-index`")
    params = IndexParams(**{f.name: meta[f.name] for f in dataclasses.fields(IndexParams)})
    centroids = np.asarray(meta["centroids"], np.float32).reshape(-1, EMBEDDING_DIM)
    return ShardedIndex(store, params, int(meta["probe"]), centroids, meta["shards"])
