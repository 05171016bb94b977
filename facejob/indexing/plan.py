"""What a run has to do: diff the listing against the catalog of earlier runs, cut shards.

The catalog is the union of `OUT/images/part-*.parquet`: an images part is written last, so a
shard counts as done exactly when its images part exists. Photos that changed or disappeared
since the last run are retired (their rows removed from the parts that hold them) *before* new
work starts, so a crash at any point leaves either the old rows or nothing for a photo, never
both, and the next run redoes whatever is missing.

Damage is healed, not trusted: a part that cannot be read is moved to OUT/quarantine/ (with
its shard's other part) and its photos are redone; a photo found in two parts keeps one row.
A listing that would retire more than a bounded share of a source's photos (an unmounted
share, a failed listing) is refused unless the user allows it (`check_retirement`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from facejob.config import RETIRE_FLOOR
from facejob.contract.layout import FACES_DIR, IMAGES_DIR, QUARANTINE_DIR, part_name, shard_of
from facejob.contract.schema import Reason
from facejob.io.sources import ImageRef, SourceError, is_s3, local_path, path_to_uri, uri_to_path
from facejob.io.storage import DamagedPart, Store, check_parquet, read_parquet, write_parquet

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
    unlisted: int = 0        # catalogued photos in folders that could not be listed: kept
    excluded: int = 0        # catalogued photos still there, left out by this run's extensions: kept
    duplicates: int = 0      # extra rows of a photo found in two parts: removed
    retire: dict[str, set[str]] = field(default_factory=dict)  # shard → uris to remove from its parts
    roots: dict[str, "RootCounts"] = field(default_factory=dict)


@dataclass
class RootCounts:
    """Per source root: photos listed under it now, catalogued under it before, to be retired."""

    listed: int = 0
    catalogued: int = 0
    deleted: int = 0


def shard_id(refs: list[ImageRef]) -> str:
    """Deterministic: the same photos in the same versions always make the same shard id."""
    h = hashlib.blake2b(digest_size=8)
    for r in refs:
        h.update(f"{r.uri}\0{r.version()}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass
class CatalogEntry:
    version: tuple
    shard: str
    retry: bool = False


class Catalog(dict):
    """uri → CatalogEntry of every photo a committed part accounts for; reading it also found
    `quarantined` (damaged parts moved aside) and `duplicates` (shard → uris also in an earlier part)."""

    def __init__(self) -> None:
        super().__init__()
        self.quarantined: list[str] = []
        self.duplicates: dict[str, set[str]] = {}


def read_catalog(store: Store) -> Catalog:
    """The catalog of `store`; damaged parts are quarantined on the way (their photos are then
    simply not catalogued, so the plan redoes them)."""
    catalog = Catalog()
    faces = set(store.list(FACES_DIR))
    for rel in store.list(IMAGES_DIR):
        if not rel.endswith(".parquet"):
            continue
        shard = shard_of(rel)
        try:
            t = read_parquet(store, rel, ["uri", "size", "mtime", "etag", "error"]).to_pydict()
            face_rel = FACES_DIR + part_name(shard)
            if face_rel not in faces:
                raise DamagedPart(f"{face_rel} is missing")
            check_parquet(store, face_rel)
        except DamagedPart as e:
            catalog.quarantined += quarantine(store, shard, str(e))
            continue
        for uri, size, mtime, etag, error in zip(t["uri"], t["size"], t["mtime"], t["etag"], t["error"]):
            if uri in catalog:  # two runs wrote one photo (a dead driver's last task): keep one
                catalog.duplicates.setdefault(shard, set()).add(uri)
                continue
            reason = Reason.of(error)
            retry = reason is not None and reason.retryable  # transient: retried next run
            catalog[uri] = CatalogEntry(ImageRef(uri, size, mtime, etag).version(), shard, retry)
    return catalog


def quarantine(store: Store, shard: str, why: str) -> list[str]:
    """Move both parts of `shard` to OUT/quarantine/<time>/ (images part first: the commit marker)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for rel in (IMAGES_DIR + part_name(shard), FACES_DIR + part_name(shard)):
        if store.exists(rel):
            dest = f"{QUARANTINE_DIR}{stamp}/{rel}"
            store.write_bytes(dest, store.read_bytes(rel))
            store.delete(rel)
            moved.append(dest)
    log.warning("damaged output part (%s): moved shard %s to %s/%s%s/; its photos will be redone",
                why, shard, store.root, QUARANTINE_DIR, stamp)
    return moved


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
              force: bool = False, unlisted: Iterable[str] = (), excluded: Iterable[str] = (),
              retire_excluded: bool = False) -> Plan:
    """The photos that are new or changed (all of them with `force`), plus what to retire.

    Photos whose last attempt failed for a possibly transient reason (unavailable, crash) are
    tried again.
    A catalogued photo under one of `source_roots` that the listing no longer has counts as
    deleted, unless it is under an `unlisted` folder (one the listing could not read: kept);
    photos outside those roots (another folder indexed into the same output) are left alone.
    A catalogued photo in `excluded` (still there, but its extension is not among this run's)
    is kept too unless `retire_excluded`: a narrower extension list (an old config) must not
    erase what a run with the full list indexed.
    """
    seen: set[str] = set()
    plan = Plan(todo=[], listed=0)
    plan.roots = {r: RootCounts() for r in source_roots}
    for ref in refs:
        plan.listed += 1
        seen.add(ref.uri)
        for root in source_roots:
            if _under(ref.uri, [root]):
                plan.roots[root].listed += 1
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
    unlisted = [u.rstrip("/") for u in unlisted]
    excluded = set() if retire_excluded else set(excluded)
    for uri, entry in catalog.items():
        roots = [r for r in source_roots if _under(uri, [r])]
        for root in roots:
            plan.roots[root].catalogued += 1
        if uri in seen or not roots:
            continue
        if _under(uri, unlisted):
            plan.unlisted += 1
            continue
        if uri in excluded:
            plan.excluded += 1
            continue
        plan.deleted += 1
        for root in roots:
            plan.roots[root].deleted += 1
        plan.retire.setdefault(entry.shard, set()).add(uri)
    for shard, uris in getattr(catalog, "duplicates", {}).items():
        plan.duplicates += len(uris)
        plan.retire.setdefault(shard, set()).update(uris)
    return plan


class RetireRefused(SourceError):
    """The listing would retire more of the output than a run may without being told to."""


def check_retirement(plan: Plan, max_share: float, allow: bool) -> None:
    """Refuse (RetireRefused, one line) a plan that looks like a failed listing, not deletions.

    A root listing no photo while the output holds photos under it: refused (unless `allow`),
    and always when the root is no longer a folder. A root losing more than
    max(RETIRE_FLOOR, max_share x its catalogued photos): refused unless `allow`.
    """
    for root, c in plan.roots.items():
        if not c.deleted:
            continue
        if not is_s3(root) and not os.path.isdir(uri_to_path(root)):
            raise RetireRefused(f"source {root} is not a folder, but the output holds {c.catalogued} photos "
                                f"under it; nothing was retired (is the right disk or share mounted?)")
        if allow:
            continue
        if c.listed == 0:
            raise RetireRefused(f"source {root} lists no photos, but the output holds {c.catalogued} photos "
                                f"under it; nothing was retired (is its disk or share mounted?). If they "
                                f"really are gone, rerun with --allow-retire")
        limit = max(RETIRE_FLOOR, max_share * c.catalogued)
        if c.deleted > limit:
            raise RetireRefused(f"source {root}: {c.deleted} of its {c.catalogued} indexed photos are gone "
                                f"(more than {max_share:.0%}); nothing was retired. If they really were "
                                f"deleted, rerun with --allow-retire")


def cut_shards(todo: list[ImageRef], shard_size: int) -> list[Shard]:
    """Consecutive runs of `shard_size` photos, each named by its content (see shard_id)."""
    return [Shard(shard_id(todo[i:i + shard_size]), todo[i:i + shard_size])
            for i in range(0, len(todo), shard_size)]


def auto_shard_size(n_images: int, workers: int) -> int:
    """About four shards per worker (so the last ones finish together), 10 to 500 images each."""
    return max(10, min(500, -(-n_images // (4 * max(workers, 1)))))


def retire(store: Store, retire: dict[str, set[str]]) -> None:
    """Remove rows of the given uris from their parts: faces first, then images (the commit marker).

    A shard left without photos loses both parts; otherwise both stay (a faces part may be
    empty: every committed images part has its faces part).
    """
    for shard, uris in retire.items():
        drop = pa.array(sorted(uris), pa.string())
        faces_rel, images_rel = FACES_DIR + part_name(shard), IMAGES_DIR + part_name(shard)
        if not store.exists(images_rel):
            continue
        images = read_parquet(store, images_rel)
        images_kept = images.filter(pc.invert(pc.is_in(images["uri"], value_set=drop)))
        if images_kept.num_rows == images.num_rows:
            continue
        if store.exists(faces_rel):
            faces = read_parquet(store, faces_rel)
            faces_kept = faces.filter(pc.invert(pc.is_in(faces["uri"], value_set=drop)))
            if images_kept.num_rows == 0:
                store.delete(faces_rel)
            elif faces_kept.num_rows != faces.num_rows:
                write_parquet(store, faces_rel, faces_kept)
        if images_kept.num_rows == 0:
            store.delete(images_rel)
        else:
            write_parquet(store, images_rel, images_kept)


def source_roots(sources: list[str]) -> list[str]:
    """The sources as uri prefixes (local ones through path_to_uri, like the photos' uris)."""
    return [s if is_s3(s) else path_to_uri(local_path(s)) for s in sources]
