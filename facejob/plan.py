"""What a run has to do: diff the listing against the catalog of earlier runs, cut shards.

The catalog is the union of `OUT/images/part-*.parquet`: an images part is written last, so a
shard counts as done exactly when its images part exists. Photos that changed or disappeared
since the last run are retired (their rows removed from the parts that hold them) *before* new
work starts, so a crash at any point leaves either the old rows or nothing for a photo, never
both, and the next run redoes whatever is missing.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from facejob.layout import FACES_DIR, IMAGES_DIR, part_name, shard_of
from facejob.schema import Reason
from facejob.sources import ImageRef, is_s3, local_path
from facejob.storage import Store, read_parquet, write_parquet

log = logging.getLogger(__name__)

@dataclass
class Shard:
    id: str
    refs: list[ImageRef]


@dataclass
class Plan:
    todo: list[ImageRef]
    listed: int
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    retried: int = 0
    deleted: int = 0
    retire: dict[str, set[str]] = field(default_factory=dict)  # shard → uris to remove from its parts


def shard_id(refs: list[ImageRef]) -> str:
    """Deterministic: the same photos in the same versions always make the same shard id."""
    h = hashlib.blake2b(digest_size=8)
    for r in refs:
        h.update(f"{r.uri}\0{r.version()}\n".encode())
    return h.hexdigest()


@dataclass
class CatalogEntry:
    version: tuple
    shard: str
    retry: bool = False


def read_catalog(store: Store) -> dict[str, CatalogEntry]:
    """uri → (version, shard) of every photo a committed part accounts for."""
    catalog: dict[str, CatalogEntry] = {}
    for rel in store.list(IMAGES_DIR):
        if not rel.endswith(".parquet"):
            continue
        t = read_parquet(store, rel, ["uri", "size", "mtime", "etag", "error"]).to_pydict()
        shard = shard_of(rel)
        for uri, size, mtime, etag, error in zip(t["uri"], t["size"], t["mtime"], t["etag"], t["error"]):
            reason = Reason.of(error)
            retry = reason is not None and reason.retryable  # transient: retried next run
            catalog[uri] = CatalogEntry(ImageRef(uri, size, mtime, etag).version(), shard, retry)
    return catalog


def remove_orphans(store: Store) -> int:
    """Delete faces parts whose images part was never written (a crash between the two writes)."""
    done = {shard_of(r) for r in store.list(IMAGES_DIR)}
    orphans = [r for r in store.list(FACES_DIR) if shard_of(r) not in done]
    for rel in orphans:
        log.info("removing uncommitted part %s", rel)
        store.delete(rel)
    return len(orphans)


def _under(uri: str, roots: list[str]) -> bool:
    return any(uri == r or uri.startswith(r.rstrip("/") + "/") for r in roots)


def make_plan(refs: Iterable[ImageRef], catalog: dict[str, CatalogEntry], source_roots: list[str],
              force: bool = False) -> Plan:
    """The photos that are new or changed (all of them with `force`), plus what to retire.

    Photos whose last attempt failed for a possibly transient reason (unavailable, crash) are
    tried again.
    A catalogued photo under one of `source_roots` that the listing no longer has counts as
    deleted; photos outside those roots (another folder indexed into the same output) are left alone.
    """
    seen: set[str] = set()
    plan = Plan(todo=[], listed=0)
    for ref in refs:
        plan.listed += 1
        seen.add(ref.uri)
        old = catalog.get(ref.uri)
        if old is None:
            plan.new += 1
        elif old.version == ref.version() and not force and not old.retry:
            plan.unchanged += 1
            continue
        else:
            if old.version != ref.version():
                plan.changed += 1
            elif old.retry:
                plan.retried += 1
            else:
                plan.changed += 1  # forced
            plan.retire.setdefault(old.shard, set()).add(ref.uri)
        plan.todo.append(ref)
    for uri, entry in catalog.items():
        if uri not in seen and _under(uri, source_roots):
            plan.deleted += 1
            plan.retire.setdefault(entry.shard, set()).add(uri)
    return plan


def cut_shards(todo: list[ImageRef], shard_size: int) -> list[Shard]:
    """Consecutive runs of `shard_size` photos, each named by its content (see shard_id)."""
    return [Shard(shard_id(todo[i:i + shard_size]), todo[i:i + shard_size])
            for i in range(0, len(todo), shard_size)]


def auto_shard_size(n_images: int, workers: int) -> int:
    """About four shards per worker (so the last ones finish together), 10 to 500 images each."""
    return max(10, min(500, -(-n_images // (4 * max(workers, 1)))))


def retire(store: Store, retire: dict[str, set[str]]) -> None:
    """Remove rows of the given uris from their parts: faces first, then images (the commit marker)."""
    for shard, uris in retire.items():
        drop = pa.array(sorted(uris), pa.string())
        for rel in (FACES_DIR + part_name(shard), IMAGES_DIR + part_name(shard)):
            if not store.exists(rel):
                continue
            table = read_parquet(store, rel)
            kept = table.filter(pc.invert(pc.is_in(table["uri"], value_set=drop)))
            if kept.num_rows == 0:
                store.delete(rel)
            elif kept.num_rows != table.num_rows:
                write_parquet(store, rel, kept)


def source_roots(sources: list[str]) -> list[str]:
    return [s if is_s3(s) else str(local_path(s)) for s in sources]
