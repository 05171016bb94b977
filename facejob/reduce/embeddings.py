"""Streaming reader of OUT/faces/: the embeddings as one float32 matrix, plus the columns asked for.

Parts are read one at a time in record batches, and only the columns a step needs, so the peak
memory is the embedding matrix (n x 128 x 4 bytes) plus one batch. Local parts are opened in
place (their footers give the row count, so the matrix is allocated once); parts on other
stores are fetched one at a time.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facejob.contract.layout import FACES_DIR, IMAGES_DIR, RUN_JSON
from facejob.contract.schema import EMBEDDING_DIM, FACES, IMAGES
from facejob.io.storage import Store, committed_parts, parquet_file

from .errors import NotIndexedError, ReduceError

META_COLUMNS = ("face_id", "uri", "face_idx", "left", "top", "right", "bottom")
ALL_COLUMNS = (*META_COLUMNS, "sha256", "landmarks", "quality")   # what `reduce` reads once for every step
# Columns added to faces/ later: parts written before them read as nulls (unknown).
OPTIONAL_COLUMNS = {"sharpness": pa.float32(), "quality": pa.float32()}
BATCH_ROWS = 65_536


@dataclass
class Faces:
    """Every face of an index output, in read order (row i of `meta` is row i of `embeddings`)."""

    meta: pa.Table            # the requested columns, e.g. face_id, uri, face_idx, bbox
    # (n, 128) float32, C-contiguous; None on the Ray path, whose driver holds no descriptors
    # (facejob.reduce.ray_reduce.RayReducer: `vectors` and `embedding_chunks` give them)
    embeddings: np.ndarray | None

    def __len__(self) -> int:
        return self.meta.num_rows

    @property
    def face_ids(self) -> pa.Array:
        return self.meta.column("face_id").combine_chunks()

    def take(self, rows: np.ndarray) -> Faces:
        """The faces at `rows`, in that order."""
        return Faces(meta=self.meta.take(pa.array(rows)),
                     embeddings=None if self.embeddings is None else self.embeddings[rows])


def parts(store: Store, prefix: str) -> list[str]:
    """The committed parts under `prefix`: a faces part counts only once its images part (the
    commit marker, written last) exists; a faces part without one is a crashed or running shard.
    Parts a merged part replaces (`facejob compact`) count for nothing (storage.committed_parts)."""
    return committed_parts(store, prefix)


def open_part(store: Store, rel: str) -> pq.ParquetFile:
    """One part as a ParquetFile: opened in place when local, else fetched whole."""
    local = store.local_path(rel)
    if local is not None:
        return pq.ParquetFile(local)
    return parquet_file(store.read_bytes(rel))


def part_batches(store: Store, rel: str, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` of one part (optional columns it lacks come back null)."""
    f = open_part(store, rel)
    names = f.schema_arrow.names
    missing = [c for c in columns if c not in names and c not in OPTIONAL_COLUMNS]
    if missing:
        raise ReduceError(f"{store.root}/{rel} lacks column(s) {missing}; was it written by facejob index?")
    present = [c for c in columns if c in names]
    for b in f.iter_batches(batch_size=BATCH_ROWS, columns=present):
        if len(present) < len(columns):
            b = pa.RecordBatch.from_arrays(
                [b.column(c) if c in names else pa.nulls(b.num_rows, OPTIONAL_COLUMNS[c]) for c in columns],
                names=list(columns))
        yield b


def _row_count(store: Store, rels: list[str]) -> int | None:
    if store.local_path() is None:
        return None
    return sum(open_part(store, rel).metadata.num_rows for rel in rels)


def batch_embeddings(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list<float32>[128] column as an (n, 128) float32 array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise ReduceError("faces/ has rows without an embedding")
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, EMBEDDING_DIM)


def require_indexed(store: Store) -> None:
    if not parts(store, FACES_DIR) and not parts(store, IMAGES_DIR):
        if store.exists(RUN_JSON):  # indexed, but its sources held no photos
            raise NotIndexedError(f"{store.root} holds no photos yet: `facejob index` found none under its "
                                  f"sources; index a folder with photos first")
        raise NotIndexedError(f"no index output under {store.root} (no faces/ or images/ parts); run `facejob index` first")


def read_faces(store: Store, columns: Sequence[str] = META_COLUMNS, embeddings: bool = True,
               rels: Sequence[str] | None = None, drop_repeated: bool = True) -> Faces:
    """All faces of OUT, streamed part by part; `columns` must include face_id.

    Rows whose face_id was already seen (a part written twice) are dropped, first one wins
    (kept with `drop_repeated` False: see `first_rows`). `rels`: these parts, in this order,
    instead of the committed parts listed now (a caller that reads them again later).
    """
    require_indexed(store)
    cols = list(dict.fromkeys(["face_id", *columns]))
    rels = parts(store, FACES_DIR) if rels is None else list(rels)
    n_total = _row_count(store, rels) if embeddings else None
    emb = np.empty((n_total, EMBEDDING_DIM), np.float32) if n_total is not None else None
    emb_chunks: list[np.ndarray] = []
    metas: list[pa.RecordBatch] = []
    row = 0
    read_cols = cols + (["embedding"] if embeddings else [])
    for batch in (b for rel in rels for b in part_batches(store, rel, read_cols)):
        if embeddings:
            e = batch_embeddings(batch.column("embedding"))
            if emb is not None:
                emb[row:row + len(e)] = e
            else:
                emb_chunks.append(e)
            batch = batch.select(cols)
        metas.append(batch)
        row += batch.num_rows
    if metas:
        meta = pa.Table.from_batches(metas)
    else:
        meta = pa.schema([FACES.field(c) for c in cols]).empty_table()
    if embeddings:
        if emb is None:
            emb = np.concatenate(emb_chunks) if emb_chunks else np.empty((0, EMBEDDING_DIM), np.float32)
        emb = emb[:row]
    else:
        emb = np.empty((0, EMBEDDING_DIM), np.float32)
    faces = Faces(meta=meta.combine_chunks(), embeddings=emb)
    return _drop_repeated(faces) if drop_repeated else faces


def first_rows(ids: pa.Array) -> np.ndarray | None:
    """The rows to keep of faces whose ids are `ids`: each id's first row, in order; None when
    every id is distinct (keep all)."""
    if len(ids) == 0 or pc.count_distinct(ids).as_py() == len(ids):
        return None
    # Rare path (a part written twice): keep each id's first row.
    rows = pa.table({"id": ids, "row": pa.array(np.arange(len(ids)))})
    return np.sort(rows.group_by("id").aggregate([("row", "min")]).column("row_min").to_numpy())


def _drop_repeated(faces: Faces) -> Faces:
    idx = first_rows(faces.face_ids)
    if idx is None:
        return faces
    return Faces(meta=faces.meta.take(idx), embeddings=faces.embeddings[idx] if len(faces.embeddings) else faces.embeddings)


def face_shas(store: Store, faces: Faces) -> pa.Array:
    """The sha256 of each face's photo: from `faces` when read with it, else read from OUT."""
    if "sha256" in faces.meta.column_names:
        return faces.meta.column("sha256").combine_chunks()
    return read_faces(store, ["face_id", "sha256"], embeddings=False).meta.column("sha256").combine_chunks()


def read_images(store: Store, columns: Sequence[str], optional: Sequence[str] = ()) -> pa.Table:
    """The requested columns of OUT/images/ (one row per input photo). `optional` columns that
    older outputs lack (e.g. phash) come back as nulls for their parts."""
    tables = []
    for rel in parts(store, IMAGES_DIR):
        f = open_part(store, rel)
        missing = [c for c in columns if c not in f.schema_arrow.names]
        if missing:
            raise ReduceError(f"{store.root}/{rel} lacks column(s) {missing}; was it written by facejob index?")
        have = [c for c in optional if c in f.schema_arrow.names]
        t = f.read(columns=[*columns, *have])
        for c in optional:
            if c not in have:
                t = t.append_column(IMAGES.field(c), pa.nulls(t.num_rows, IMAGES.field(c).type))
        tables.append(t)
    if not tables:
        return pa.schema([IMAGES.field(c) for c in [*columns, *optional]]).empty_table()
    return pa.concat_tables(tables).combine_chunks()
