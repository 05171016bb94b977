"""The catalog checkpoint, OUT/catalog.parquet (layout.CATALOG): what planning needs of every
images part (schema.CATALOG's columns), read once instead of opening 10,000s of small parts.

It is a cache, never the truth. Its footer (layout.CATALOG_PARTS) names the parts its rows come
from, each with the version its images part had when it was read (Store.list_versions: inode,
size, mtime and ctime locally; ETag, size and time on S3). Planning (plan.gather) takes a part's
rows from the checkpoint only while that part is still committed under the same version and its
faces part is there; every other committed part is read as before. So a part retired (rewritten
or deleted), replaced by compaction, quarantined, or written after the checkpoint (a crash
between a shard's commit and the checkpoint's write) is read from the store, and a checkpoint
that cannot be read or does not check out is ignored whole. It is written whole (temp + rename,
one PUT) by the writers, after they change parts: `facejob index` and `facejob compact`.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facejob.contract.layout import CATALOG, CATALOG_PARTS
from facejob.contract.schema import CATALOG as SCHEMA
from facejob.io.storage import Store, parse_parquet

log = logging.getLogger(__name__)

FORMAT = 1   # bump when the meaning of the file changes: other formats are ignored


@dataclass
class Checkpoint:
    """Rows (SCHEMA) of the parts `parts`, (shard, images part version) that `part` indexes;
    `folders`: the versions of images/ and faces/ (Store.folder_version) when they were listed,
    empty when they could not be had."""

    table: pa.Table
    parts: list[tuple[str, str]]
    folders: dict[str, str] = field(default_factory=dict)


def load(store: Store) -> Checkpoint | None:
    """The checkpoint of `store`; None when there is none, or when it is damaged or of another
    format (logged: planning then reads every part). Storage errors propagate, as a part's do."""
    if not store.exists(CATALOG):
        return None
    try:
        data = store.read_bytes(CATALOG)
    except FileNotFoundError:
        return None
    try:
        table = parse_parquet(CATALOG, data)
        del data
        meta = table.schema.metadata or {}
        if CATALOG_PARTS not in meta:
            raise ValueError("its footer lists no parts")
        doc = json.loads(meta[CATALOG_PARTS])
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
        shards, versions = doc["shards"], doc["versions"]
        if len(shards) != len(versions) or not all(isinstance(x, str) for x in shards + versions):
            raise ValueError("its list of parts is damaged")
        parts = list(zip(shards, versions))
        if len({shard for shard, _ in parts}) != len(parts):
            raise ValueError("a part is named twice")
        folders = {str(k): str(v) for k, v in doc.get("folders", {}).items()}
        table = table.replace_schema_metadata(None)
        if not table.schema.equals(SCHEMA):
            raise ValueError(f"columns {table.schema.names} are not {SCHEMA.names}")
        if table.num_rows:
            lo, hi = pc.min_max(table.column("part")).values()
            if lo.as_py() < 0 or hi.as_py() >= len(parts) or table.column("part").null_count:
                raise ValueError("a row names no part")
    except Exception as e:   # whatever is wrong with it, the parts themselves are the truth
        log.warning("ignoring the catalog checkpoint %s/%s (%s); reading every part", store.root, CATALOG, e)
        return None
    return Checkpoint(table, parts, folders)


def save(store: Store, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` whole (the caller holds the writer lock)."""
    doc = {"format": FORMAT, "shards": [s for s, _ in checkpoint.parts],
           "versions": [v for _, v in checkpoint.parts], "folders": checkpoint.folders}
    table = checkpoint.table.select(SCHEMA.names).cast(SCHEMA)
    buf = io.BytesIO()   # the list of parts in the footer only: write_parquet's Arrow schema would hold it twice
    with pq.ParquetWriter(buf, SCHEMA, compression="zstd") as writer:
        writer.write_table(table, row_group_size=max(table.num_rows, 1))   # one chunk a column when read
        writer.add_key_value_metadata({CATALOG_PARTS: json.dumps(doc).encode()})
    store.write_bytes(CATALOG, buf.getvalue())
