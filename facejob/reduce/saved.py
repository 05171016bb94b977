"""Work a reduce saves for the next one, trusted only for the same inputs: a digest of what a
result was computed from (settings, face ids, embeddings) travels in the result's own Parquet
metadata, so a file is used only when its digest matches tonight's, never after a crash left it
beside files of another run (see facejob.contract)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facejob.io.storage import DamagedPart, Store, read_parquet, write_parquet

KEY = b"facejob.inputs"


def digest(*parts: object) -> str:
    """A hex digest of settings (anything JSON can write), Arrow arrays and NumPy arrays, in order."""
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"nd{p.dtype}{p.shape}".encode())
            h.update(np.ascontiguousarray(p).data)
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


def write(store: Store, rel: str, table: pa.Table, key: str) -> None:
    """`table` to OUT/rel (whole or not at all), stamped with the digest `key` of its inputs."""
    write_parquet(store, rel, table.replace_schema_metadata({**(table.schema.metadata or {}), KEY: key.encode()}))


def read(store: Store, rel: str, key: str) -> pa.Table | None:
    """OUT/rel if it exists, is whole and was computed from inputs with the digest `key`; else None."""
    if not store.exists(rel):
        return None
    try:
        t = read_parquet(store, rel)
    except (DamagedPart, OSError):
        return None
    return t if (t.schema.metadata or {}).get(KEY) == key.encode() else None


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
