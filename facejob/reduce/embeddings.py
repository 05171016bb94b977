"""Streaming reader of OUT/faces/: the embeddings as one float32 matrix, plus the columns asked for.

Parts are read one at a time in record batches, and only the columns a step needs, so the peak
memory is the embedding matrix (n x 128 x 4 bytes) plus one batch. Local parts are opened in
place (their footers give the row count, so the matrix is allocated once); parts on other
stores are fetched one at a time.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facejob.contract.layout import FACES_DIR, IMAGES_DIR, RUN_JSON
from facejob.contract.schema import EMBEDDING_DIM, FACES, IMAGES
from facejob.io.storage import Store, committed_parts, parquet_file

from .errors import NotIndexedError, ReduceError
from .saved import Chunks

META_COLUMNS = ("face_id", "uri", "face_idx", "left", "top", "right", "bottom")
ALL_COLUMNS = (*META_COLUMNS, "sha256", "landmarks", "quality")   # what `reduce` reads once for every step
# Columns added to faces/ later: parts written before them read as nulls (unknown).
OPTIONAL_COLUMNS = {"sharpness": pa.float32(), "quality": pa.float32()}
BATCH_ROWS = 65_536
FETCH_ROWS = 65_536     # rows fetched at a time when Descriptors are read in order (32 MiB)


class Descriptors(Chunks):
    """The (n, 128) float32 descriptors of n faces held elsewhere (the Ray reducer's shards),
    read like an array by row: `x[rows]` and `x[lo:hi]` fetch just those rows, `chunks()`
    gives them all in order a batch at a time (a `saved.Chunks`: `saved.digest` hashes it as
    the whole array), `take` and `map` make views that fetch nothing yet. The steps run on
    it as on the matrix, so a driver never holds all descriptors (10M faces: 4.8 GiB).

    `fetch(rows)`: the descriptors of those rows of the underlying faces (any order, repeats);
    `stream()`: all of them in order, in chunks (e.g. read again from OUT/faces/), else
    fetched FETCH_ROWS at a time."""

    def __init__(self, n: int, fetch: Callable[[np.ndarray], np.ndarray],
                 stream: Callable[[], Iterable[np.ndarray]] | None = None, rows: np.ndarray | None = None,
                 fn: Callable[[np.ndarray], np.ndarray] | None = None):
        self._fetch, self._stream, self._rows, self._fn = fetch, stream, rows, fn
        super().__init__((n if rows is None else len(rows), EMBEDDING_DIM), np.float32, self._chunks)

    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice | np.ndarray) -> np.ndarray:
        if isinstance(key, slice):
            at = np.arange(*key.indices(len(self)))
        else:
            at = np.asarray(key)
            if at.ndim == 0 and np.issubdtype(at.dtype, np.integer):     # one row: a 1-D descriptor
                return self[at.reshape(1)][0]
            if at.dtype == bool:
                at = np.flatnonzero(at)
            if at.ndim != 1 or not np.issubdtype(at.dtype, np.integer):
                raise TypeError("Descriptors are read by a slice or an array of rows")
            at = np.where(at < 0, at + len(self), at).astype(np.int64)
        if len(at) and (at.min() < 0 or at.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} descriptors")
        x = self._fetch(at if self._rows is None else self._rows[at]) if len(at) else \
            np.empty((0, EMBEDDING_DIM), np.float32)
        return x if self._fn is None else self._fn(x)

    def _chunks(self) -> Iterator[np.ndarray]:
        if self._rows is None and self._stream is not None:
            for x in self._stream():
                yield x if self._fn is None else self._fn(x)
            return
        for lo in range(0, len(self), FETCH_ROWS):
            yield self[lo:lo + FETCH_ROWS]

    def take(self, rows: np.ndarray) -> Descriptors:
        """The descriptors at `rows`, in that order (fetched when read)."""
        rows = np.asarray(rows, np.int64)
        return Descriptors(0, self._fetch, self._stream, rows if self._rows is None else self._rows[rows], self._fn)

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Descriptors:
        """These descriptors through `fn` (row-wise, e.g. the metric head), applied as they are read."""
        then = fn if self._fn is None else (lambda x, f=self._fn: fn(f(x)))
        return Descriptors(len(self), self._fetch, self._stream, self._rows, then)


def take_rows(x: np.ndarray | Descriptors, rows: np.ndarray) -> np.ndarray | Descriptors:
    """x[rows]; of Descriptors a view that fetches nothing yet."""
    return x.take(rows) if isinstance(x, Descriptors) else x[rows]


@dataclass
class Faces:
    """Every face of an index output, in read order (row i of `meta` is row i of `embeddings`)."""

    meta: pa.Table            # the requested columns, e.g. face_id, uri, face_idx, bbox
    # (n, 128) float32, C-contiguous; on the Ray path Descriptors, read from its shards by row
    # (facejob.reduce.ray_reduce.RayReducer.read_faces): its driver holds no matrix
    embeddings: np.ndarray | Descriptors | None

    def __len__(self) -> int:
        return self.meta.num_rows

    @property
    def face_ids(self) -> pa.Array:
        return whole(self.meta.column("face_id"))

    def take(self, rows: np.ndarray) -> Faces:
        """The faces at `rows`, in that order."""
        return Faces(meta=self.meta.take(pa.array(rows)),
                     embeddings=None if self.embeddings is None else take_rows(self.embeddings, rows))


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
    return _file_batches(open_part(store, rel), columns, f"{store.root}/{rel}")


def _file_batches(f: pq.ParquetFile, columns: Sequence[str], where: str) -> Iterator[pa.RecordBatch]:
    names = f.schema_arrow.names
    missing = [c for c in columns if c not in names and c not in OPTIONAL_COLUMNS]
    if missing:
        raise ReduceError(f"{where} lacks column(s) {missing}; was it written by facejob index?")
    present = [c for c in columns if c in names]
    for b in f.iter_batches(batch_size=BATCH_ROWS, columns=present):
        if len(present) < len(columns):
            b = pa.RecordBatch.from_arrays(
                [b.column(c) if c in names else pa.nulls(b.num_rows, OPTIONAL_COLUMNS[c]) for c in columns],
                names=list(columns))
        yield b


def read_rows(store: Store, rels: Sequence[str], columns: Sequence[str], rows: np.ndarray) -> pa.Table:
    """`columns` of the rows `rows` (any order, repeats allowed) of the parts `rels` read in
    order (row r: the r-th row they hold, a face read twice included), in the order of `rows`.
    Only those rows are held: the parts are read a batch at a time, and parts with none of them
    are not read (a step that needs the paths and landmarks of a few faces of 10M)."""
    rows = np.asarray(rows, np.int64)
    order = np.argsort(rows, kind="stable")
    want = rows[order]
    got: list[pa.RecordBatch] = []
    start = 0
    for rel in rels:
        if start > (want[-1] if len(want) else -1):
            break
        f = open_part(store, rel)
        if want[np.searchsorted(want, start)] >= start + f.metadata.num_rows:    # none of its rows
            start += f.metadata.num_rows
            continue
        for b in _file_batches(f, columns, f"{store.root}/{rel}"):
            lo, hi = np.searchsorted(want, [start, start + b.num_rows])
            if hi > lo:
                got.append(b.take(pa.array(want[lo:hi] - start)))
            start += b.num_rows
    table = one_chunk(got, pa.schema([FACES.field(c) for c in columns]))
    if table.num_rows != len(rows):
        raise ReduceError(f"rows {want[table.num_rows:][:5].tolist()} are past the {start} rows of the faces parts")
    return table if np.array_equal(order, np.arange(len(order))) else table.take(pa.array(np.argsort(order)))


def _row_count(store: Store, rels: list[str]) -> int | None:
    if store.local_path() is None:
        return None
    return sum(open_part(store, rel).metadata.num_rows for rel in rels)


def whole(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one array: its only chunk as it is (`combine_chunks` copies even one chunk:
    10M face ids, 240 MB a call)."""
    if isinstance(col, pa.Array):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def batch_embeddings(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_list<float32>[128] column as an (n, 128) float32 array."""
    col = whole(col)
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
    meta = one_chunk(metas, pa.schema([FACES.field(c) for c in cols]))
    if embeddings:
        if emb is None:
            emb = np.concatenate(emb_chunks) if emb_chunks else np.empty((0, EMBEDDING_DIM), np.float32)
        emb = emb[:row]
    else:
        emb = np.empty((0, EMBEDDING_DIM), np.float32)
    faces = Faces(meta=meta, embeddings=emb)
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


def rows_by(col: pa.Array | pa.ChunkedArray, keys: set[str]) -> dict[str, list[int]]:
    """Rows of `col` holding each of `keys` (only those: the archive may have millions of faces)."""
    if not keys:
        return {}
    hit = np.flatnonzero(pc.fill_null(pc.is_in(col, value_set=pa.array(sorted(keys), pa.string())), False)
                         .to_numpy(zero_copy_only=False))
    out: dict[str, list[int]] = {}
    for j, v in zip(hit.tolist(), pc.take(col, pa.array(hit)).to_pylist()):
        out.setdefault(v, []).append(j)
    return out


def face_shas(store: Store, faces: Faces) -> pa.Array:
    """The sha256 of each face's photo: from `faces` when read with it, else read from OUT."""
    if "sha256" in faces.meta.column_names:
        return whole(faces.meta.column("sha256"))
    return whole(read_faces(store, ["face_id", "sha256"], embeddings=False).meta.column("sha256"))


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
    return one_chunk(tables, pa.schema([IMAGES.field(c) for c in [*columns, *optional]]))


def one_chunk(pieces: list[pa.RecordBatch] | list[pa.Table], schema: pa.Schema) -> pa.Table:
    """The record batches or tables `pieces` (emptied: they are the table's now) as one table
    with each column in one chunk, combined a column at a time, each column's pieces let go as
    its copy is made: `Table.combine_chunks` holds a copy of every column at once (at 10M faces
    a second GiB of ids and paths). `schema`: the empty table's, when there are no pieces."""
    if not pieces:
        return schema.empty_table()
    table = pa.Table.from_batches(pieces) if isinstance(pieces[0], pa.RecordBatch) else pa.concat_tables(pieces)
    pieces.clear()
    kept, combined = table.schema, []
    while table.num_columns:
        combined.append(table.column(0).combine_chunks())
        table = table.remove_column(0)
    return pa.Table.from_arrays(combined, schema=kept)
