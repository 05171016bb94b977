"""Work a reduce saves for the next one, trusted only for the same inputs: a digest of what a
result was computed from (settings, face ids, embeddings) travels in the result's own Parquet
metadata, so a file is used only when its digest matches tonight's, never after a crash left it
beside files of another run (see facejob.contract)."""
from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facejob.io.storage import DamagedPart, Store, parquet_file, read_parquet, write_parquet, writing

KEY = b"facejob.inputs"
LOOKUP_ROWS = 8192     # rows per row group of files looked up by face id (a search reads ~1 group per match)
SORTED_ROWS = 1 << 20  # rows taken at a time when a file is written sorted without row groups asked for


class Chunks:
    """A NumPy array given as its row chunks in order (`chunks()` makes them again, e.g. read
    from OUT/faces/): `digest` hashes it exactly as the whole array, without holding it."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, chunks: Callable[[], Iterable[np.ndarray]]):
        self.shape, self.dtype, self.chunks = tuple(shape), np.dtype(dtype), chunks


def digest(*parts: object) -> str:
    """A hex digest of settings (anything JSON can write), Arrow arrays and NumPy arrays (or
    their `Chunks`), in order."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"nd{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).data)
        elif isinstance(p, Chunks):
            h.update(f"nd{p.dtype}{p.shape}".encode())
            rows = 0
            for c in p.chunks():
                h.update(np.ascontiguousarray(c, p.dtype).data)
                rows += len(c)
            if rows != p.shape[0]:
                raise ValueError(f"digest: {rows} rows came of an array of {p.shape[0]}")
        elif isinstance(p, (pa.Array, pa.ChunkedArray)):
            chunks = p.chunks if isinstance(p, pa.ChunkedArray) else [p]
            h.update(f"pa{p.type}{len(p)}".encode())
            for c in chunks:
                h.update(f"@{c.offset}:{len(c)}".encode())
                for buf in c.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()


def write(store: Store, rel: str, table: pa.Table, key: str, row_group_size: int | None = None,
          sort_by: str | None = None) -> None:
    """`table` to OUT/rel (whole or not at all), stamped with the digest `key` of its inputs;
    `row_group_size` rows per row group (small groups let a reader fetch a few rows by key).
    `sort_by` a column: rows written in its order, taken one row group at a time, so the sorted
    copy of the table is never held (10M faces' clusters: ~1.2 GiB of strings)."""
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), KEY: key.encode()})
    if row_group_size is None and sort_by is None:
        return write_parquet(store, rel, table)
    rows = row_group_size or SORTED_ROWS
    order = None if sort_by is None else pc.sort_indices(table.column(sort_by))
    with writing(store, rel) as f, pq.ParquetWriter(f, table.schema, compression="zstd") as w:
        for lo in range(0, max(table.num_rows, 1), rows):
            w.write_table(table.slice(lo, rows) if order is None else table.take(order.slice(lo, rows)),
                          row_group_size=rows)


def read(store: Store, rel: str, key: str) -> pa.Table | None:
    """OUT/rel if it exists, is whole and was computed from inputs with the digest `key`; else None."""
    if not store.exists(rel):
        return None
    try:
        t = read_parquet(store, rel)
    except (DamagedPart, OSError):
        return None
    return t if (t.schema.metadata or {}).get(KEY) == key.encode() else None


def rows_by_key(store: Store, rel: str, column: str, keys: list[str], columns: list[str]) -> pa.Table:
    """The rows of OUT/rel whose `column` is one of `keys` (`column` and `columns`), reading only
    the row groups whose min/max statistics can hold one: for a file sorted by `column` (as
    clusters.parquet and predictions.parquet are) that is a few groups, not the whole file."""
    local = store.local_path(rel)
    f = pq.ParquetFile(local) if local is not None else parquet_file(store.read_bytes(rel))
    want = sorted(set(keys))
    groups = row_groups_for(f, column, want)
    t = f.read_row_groups(groups, columns=[column, *columns]) if groups else \
        pa.schema([f.schema_arrow.field(c) for c in (column, *columns)]).empty_table()
    return t.filter(pc.is_in(t.column(column), pa.array(want, pa.string())))


def row_groups_for(f: pq.ParquetFile, column: str, want: list[str]) -> list[int]:
    """The row groups of `f` whose `column` statistics (min/max) may hold one of `want` (sorted)."""
    meta = f.metadata
    groups: list[int] = []
    if not meta.num_row_groups:
        return groups
    first = meta.row_group(0)
    at = [first.column(i).path_in_schema for i in range(first.num_columns)].index(column)
    for g in range(meta.num_row_groups):
        st = meta.row_group(g).column(at).statistics
        if st is None or not st.has_min_max:
            groups.append(g)
            continue
        lo = bisect.bisect_left(want, st.min)
        if lo < len(want) and want[lo] <= st.max:
            groups.append(g)
    return groups


def metadata(store: Store, rel: str) -> dict[bytes, bytes] | None:
    """The schema metadata of OUT/rel (locally from the footer alone), or None when it is missing
    or not whole Parquet."""
    if not store.exists(rel):
        return None
    try:
        local = store.local_path(rel)
        schema = pq.read_schema(local) if local is not None else read_parquet(store, rel).schema
    except (DamagedPart, OSError, ValueError):
        return None
    return schema.metadata or {}


def stamped(store: Store, rel: str, key: str) -> bool:
    """Whether OUT/rel exists, is whole and is stamped with the digest `key`."""
    return (metadata(store, rel) or {}).get(KEY) == key.encode()
