"""`facejob compact OUT`: merge small parts into large ones, with a run's crash-safety.

Every nightly run adds a few small parts; planning, the reducer and S3 listings pay per part.
Merging shards A, B, ... into one merged shard M (id `merged-<hash of A, B, ...>`) goes:

1. faces/part-M is written. It has no images part yet, so no reader counts it; a crash here
   leaves an orphan that the next writer deletes (plan.remove_orphans).
2. images/part-M is written, its footer naming A, B, ... (layout.SUPERSEDES). Its appearance (one
   rename, or one PUT on S3) is the switch: from then on every reader counts M and not A, B, ...
   (storage.committed_parts), even while they are still on disk.
3. The parts of A, B, ... are deleted, each images part first. A crash here leaves replaced
   parts that count for nothing and that the next writer deletes (plan.remove_orphans).

So at every moment the committed rows are exactly the uncompacted ones. Rows are copied as they
are: their `shard` column keeps naming the shard that wrote them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from facejob.config import CompactConfig
from facejob.contract.layout import IMAGES_DIR, MERGED, SUPERSEDES, faces_part, images_part, shard_of
from facejob.contract.schema import FACES, IMAGES
from facejob.indexing import plan as planning
from facejob.io import lock
from facejob.io.storage import Store, committed_parts, open_store, read_footer, read_parquet, write_parquet

log = logging.getLogger(__name__)


@dataclass
class CompactSummary:
    """What a compaction did: committed parts before and after, merged parts written, photos moved."""

    parts_before: int = 0
    parts_after: int = 0
    merged: int = 0
    photos_moved: int = 0
    healed: int = 0          # uncommitted, replaced or damaged parts cleared first, duplicate rows removed
    seconds: float = 0.0


def plan_merges(sizes: list[tuple[str, int]], part_photos: int) -> list[list[str]]:
    """Groups of shards to merge, from (shard, photos) in listing order: consecutive parts with
    fewer than `part_photos` photos are gathered until a group holds at least that many; groups
    of one stay as they are. Larger parts are never rewritten."""
    groups: list[list[str]] = []
    group: list[str] = []
    rows = 0
    for shard, n in sizes:
        if n >= part_photos:
            continue
        group.append(shard)
        rows += n
        if rows >= part_photos:
            groups.append(group)
            group, rows = [], 0
    groups.append(group)
    return [g for g in groups if len(g) > 1]


def merged_id(shards: list[str]) -> str:
    """Deterministic: the same parts always merge into the same name (a crashed merge's orphan
    is overwritten or removed, never joined by a second one)."""
    h = hashlib.blake2b("\n".join(shards).encode(), digest_size=8)
    return MERGED + h.hexdigest()


def _conform(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """One table of `tables`, with every column of `schema` in its order (parts written before a
    column existed get nulls in it, as readers give them) and no Parquet metadata of its own."""
    t = pa.concat_tables([x.replace_schema_metadata(None) for x in tables], promote_options="default")
    for f in schema:
        if f.name not in t.column_names:
            t = t.append_column(f, pa.nulls(t.num_rows, f.type))
    names = [f.name for f in schema] + [n for n in t.column_names if n not in schema.names]
    return t.select(names)


def merge(store: Store, shards: list[str]) -> str:
    """Merge the committed shards `shards` into one (steps 1-3 of the module docstring); returns its id.
    Parts are read and deleted side by side (S3 answers in tens of ms each); writes keep their order."""
    merged = merged_id(shards)
    with ThreadPoolExecutor(planning.READ_THREADS) as pool:
        def read(rels: list[str]) -> list[pa.Table]:
            return list(pool.map(lambda rel: read_parquet(store, rel, threads=False), rels))

        faces = _conform(read([faces_part(s) for s in shards]), FACES)
        write_parquet(store, faces_part(merged), faces)
        del faces
        images = _conform(read([images_part(s) for s in shards]), IMAGES)
        write_parquet(store, images_part(merged),
                      images.replace_schema_metadata({SUPERSEDES: json.dumps(shards).encode()}))
        # After the switch: replaced parts count for nothing, so their order no longer matters.
        list(pool.map(store.delete, [rel for s in shards for rel in (images_part(s), faces_part(s))]))
    return merged


def part_sizes(store: Store) -> list[tuple[str, int]]:
    """(shard, photos) of every committed part, from their footers, read side by side."""
    rels = committed_parts(store, IMAGES_DIR)
    with ThreadPoolExecutor(planning.READ_THREADS) as pool:
        rows = list(pool.map(lambda rel: read_footer(store, rel).num_rows, rels))
    return [(shard_of(rel), n) for rel, n in zip(rels, rows)]


def heal(store: Store) -> int:
    """What an index run does before trusting the output: clear uncommitted and replaced parts,
    quarantine damaged ones, remove rows a photo has in a second part. Returns how much it did."""
    done = planning.remove_orphans(store)
    catalog = planning.read_catalog(store)
    planning.retire(store, catalog.duplicates)
    return done + len(catalog.quarantined) + sum(map(len, catalog.duplicates.values()))


def compact_store(store: Store, config: CompactConfig, healed: bool = False) -> CompactSummary:
    """Compact `store`, whose writer lock the caller holds. `healed`: the caller has just done
    what heal() does (an index run, before its shards), so it is not done again."""
    t0 = time.perf_counter()
    summary = CompactSummary(healed=0 if healed else heal(store))
    sizes = part_sizes(store)
    summary.parts_before = len(sizes)
    photos = dict(sizes)
    groups = plan_merges(sizes, config.part_photos)
    for group in groups:
        merge(store, group)
        summary.photos_moved += sum(photos[s] for s in group)
    summary.merged = len(groups)
    summary.parts_after = summary.parts_before - sum(map(len, groups)) + len(groups)
    summary.seconds = time.perf_counter() - t0
    if groups:
        log.info("compacted %s: %d parts → %d (%d photos moved into %d merged parts)", store.root,
                 summary.parts_before, summary.parts_after, summary.photos_moved, len(groups))
    return summary


def compact(out: str | Store, config: CompactConfig | None = None) -> CompactSummary:
    """Merge the small parts of the index output `out` (folder or s3:// prefix) under its writer
    lock (LockHeld if another run has it). An output without parts is left as it is."""
    store = open_store(out)
    with lock.hold(store, "compact", create=False):
        if not store.list(IMAGES_DIR):
            return CompactSummary()
        summary = compact_store(store, config or CompactConfig())
        planning.save_checkpoint(store)   # as an index run does after changing parts
        return summary
