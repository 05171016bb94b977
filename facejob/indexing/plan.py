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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.config import RETIRE_FLOOR
from facejob.contract.layout import FACES_DIR, IMAGES_DIR, QUARANTINE_DIR, SUPERSEDES, part_name, shard_of
from facejob.contract.schema import CATALOG, Reason
from facejob.indexing import checkpoint
from facejob.io.base import SourceUnavailable
from facejob.io.sources import ImageRef, SourceError, is_s3, local_path, path_to_uri, uri_to_path
from facejob.io.storage import (DamagedPart, Store, check_parquet, committed_parts, read_parquet, superseded,
                                write_parquet)

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


CATALOG_COLUMNS = ["uri", "size", "mtime", "etag", "error"]
READ_THREADS = 16        # parts read at once: S3 answers in tens of ms each, local disks in parallel


class Catalog:
    """Every photo a committed part accounts for, as columns: `table` (uri, size, mtime, etag,
    retry: the last attempt failed for a transient reason, part: index into `shards`). Reading it
    also found `quarantined` (damaged parts moved aside) and `duplicates` (shard → uris also in
    an earlier part); `parts_read` parts were read from the store, the others' rows came from
    the checkpoint. Iterates over its uris."""

    SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()),
                        ("etag", pa.string()), ("retry", pa.bool_()), ("part", pa.int32())])

    def __init__(self, table: pa.Table | None = None, shards: list[str] | None = None) -> None:
        self.table = table if table is not None else self.SCHEMA.empty_table()
        self.shards = shards or []
        self.quarantined: list[str] = []
        self.duplicates: dict[str, set[str]] = {}
        self.parts_read = 0

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self):
        return iter(self.table.column("uri").to_pylist())


@dataclass
class Gathered:
    """The committed images parts' rows (schema.CATALOG: `part` indexes `shards`), a photo in
    two parts in each; `versions`: each shard's images part version (None: quarantined)."""

    table: pa.Table
    shards: list[str]
    versions: list[str | None]
    quarantined: list[str]
    parts_read: int
    changed: bool              # the parts differ from the checkpoint's (or there is none)
    folders: dict[str, str]    # the checkpoint's folder versions
    flat: bool = True          # no part lies in a subfolder (whose changes its folder's version misses)


PART_FOLDERS = (IMAGES_DIR, FACES_DIR)


def gather(store: Store) -> Gathered:
    """The rows of every committed images part: from the checkpoint for the parts it holds in
    the version they still have (facejob.indexing.checkpoint), read in parallel for the others;
    damaged parts are quarantined on the way (their photos are then simply not catalogued, so
    the plan redoes them). When neither folder of parts has changed since the checkpoint was
    written (Store.folder_version), it holds every part as it is, and nothing is listed."""
    saved = checkpoint.load(store)
    if saved and saved.folders and all(store.folder_version(d) == saved.folders.get(d) for d in PART_FOLDERS):
        return Gathered(saved.table, [s for s, _ in saved.parts], [v for _, v in saved.parts], [], 0, False,
                        saved.folders)
    listed = store.list_versions(IMAGES_DIR)
    rels = committed_parts(store, IMAGES_DIR, list(listed))
    shards = [shard_of(rel) for rel in rels]
    versions: list[str | None] = [listed[rel] for rel in rels]
    faces = set(store.list(FACES_DIR))
    flat = all(rel.count("/") == 1 for rels_ in (listed, faces) for rel in rels_)
    held = {shard: (i, v) for i, (shard, v) in enumerate(saved.parts)} if saved else {}
    moved = np.full(len(held), -1, np.int32)   # checkpoint part → index in shards (-1: its rows are dropped)
    todo = []
    for i, (shard, version) in enumerate(zip(shards, versions)):
        j, v = held.get(shard, (-1, None))
        if v == version and FACES_DIR + part_name(shard) in faces:
            moved[j] = i
        else:
            todo.append(i)

    def read(i: int) -> pa.Table | str:
        """Part i's rows, or why it is damaged."""
        try:
            t = read_parquet(store, rels[i], CATALOG_COLUMNS, threads=False)   # parts side by side instead
            face_rel = FACES_DIR + part_name(shards[i])
            if face_rel not in faces:
                raise DamagedPart(f"{face_rel} is missing")
            check_parquet(store, face_rel)
            return t.select(CATALOG_COLUMNS).append_column("part", pa.array(np.full(t.num_rows, i, np.int32)))
        except DamagedPart as e:
            return str(e)

    with ThreadPoolExecutor(READ_THREADS) as pool:
        parts = list(pool.map(read, todo))
    quarantined: list[str] = []
    for i, t in zip(todo, parts):
        if isinstance(t, str):
            quarantined += quarantine(store, shards[i], t)
            versions[i] = None
    tables = [t for t in parts if not isinstance(t, str)]
    del parts
    kept = saved.table if saved else CATALOG.empty_table()
    same = saved is not None and not todo and np.array_equal(moved, np.arange(len(moved)))
    if saved and not same:   # some parts are gone or changed, or the order moved: renumber
        part = moved[kept.column("part").to_numpy()]
        kept = _with_part(kept.filter(pa.array(part >= 0)), part[part >= 0])
    t = pa.concat_tables([kept.cast(CATALOG), *(x.cast(CATALOG) for x in tables)])
    return Gathered(t, shards, versions, quarantined, len(todo), not same, saved.folders if saved else {}, flat)


def _with_part(t: pa.Table, part: np.ndarray) -> pa.Table:
    """`t` (schema.CATALOG) with its part column replaced by `part`."""
    return t.set_column(t.schema.get_field_index("part"), "part", pa.array(part, pa.int32()))


def read_catalog(store: Store) -> Catalog:
    """The catalog of `store` (see gather)."""
    g = gather(store)
    shards, t = g.shards, g.table
    if not t.num_rows:
        catalog = Catalog(shards=shards)
        catalog.quarantined, catalog.parts_read = g.quarantined, g.parts_read
        return catalog
    t = t.combine_chunks()   # one chunk per column, not one per part: compute on 10,000 chunks is slow
    # Two runs wrote one photo (a dead driver's last task): the first part in listing order keeps it.
    uri = t.column("uri")
    dup = pc.index_in(uri, value_set=uri).to_numpy() != np.arange(len(uri))
    duplicates: dict[str, set[str]] = {}
    if dup.any():   # rare: put the rows in part order (the checkpoint's come first) before choosing
        t = t.take(pa.array(np.argsort(t.column("part").to_numpy(), kind="stable")))
        uri = t.column("uri")
        dup = pc.index_in(uri, value_set=uri).to_numpy() != np.arange(len(uri))
        rows = pa.array(np.flatnonzero(dup))
        for u, part in zip(uri.take(rows).to_pylist(), t.column("part").take(rows).to_pylist()):
            duplicates.setdefault(shards[part], set()).add(u)
        t = t.filter(pa.array(~dup))
    # Transient failures (unavailable, crash) are retried next run; few distinct error texts.
    enc = t.column("error").combine_chunks().dictionary_encode()
    transient = [(r := Reason.of(e)) is not None and r.retryable for e in enc.dictionary.to_pylist()]
    retry = np.array(transient + [False], bool)[enc.indices.fill_null(len(transient)).to_numpy()]
    cols = {f.name: t.column(f.name).cast(f.type) for f in Catalog.SCHEMA if f.name != "retry"}
    table = pa.table({**cols, "retry": pa.array(retry)}, schema=Catalog.SCHEMA).combine_chunks()
    catalog = Catalog(table, shards)
    catalog.quarantined, catalog.duplicates, catalog.parts_read = g.quarantined, duplicates, g.parts_read
    return catalog


def save_checkpoint(store: Store) -> int:
    """Bring the catalog checkpoint up to date with the committed parts (a writer, holding the
    lock, after changing parts); returns the parts read to do so (0: it was up to date)."""
    folders = {d: store.folder_version(d) for d in PART_FOLDERS}   # before listing: never newer than it
    g = gather(store)
    if not (g.flat and all(folders.values())):
        folders = {}
    if g.changed or folders != g.folders:
        parts = [(s, v) for s, v in zip(g.shards, g.versions) if v is not None]
        index = np.cumsum([v is not None for v in g.versions], dtype=np.int32) - 1   # quarantined parts left out
        table = _with_part(g.table, index[g.table.column("part").to_numpy()]) if g.table.num_rows else g.table
        try:
            checkpoint.save(store, checkpoint.Checkpoint(table, parts, folders))
        except (OSError, SourceUnavailable) as e:   # a cache: the parts it would hold are committed
            log.warning("could not write the catalog checkpoint (%s); the next run reads the parts instead", e)
    return g.parts_read


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
    """Delete what no reader counts: the parts a merged part replaces (a compaction that crashed
    before deleting them, facejob.indexing.compact), then faces parts whose images part was
    never written (a crash between a shard's two writes). Returns the parts deleted."""
    images = [rel for rel in store.list(IMAGES_DIR) if rel.endswith(".parquet")]
    replaced = sorted(superseded(store, images) & {shard_of(rel) for rel in images})
    if replaced:
        log.info("finishing an interrupted compaction: removing %d replaced shard(s)", len(replaced))
    for shard in replaced:   # images part first: its faces part is then an orphan, deleted below anyway
        store.delete(IMAGES_DIR + part_name(shard))
        store.delete(FACES_DIR + part_name(shard))
    done = {shard_of(r) for r in images} - set(replaced)
    orphans = [r for r in store.list(FACES_DIR) if shard_of(r) not in done]
    for rel in orphans:
        log.info("removing uncommitted part %s", rel)
        store.delete(rel)
    return len(orphans) + 2 * len(replaced)


def _under(uris: pa.Array, root: str) -> np.ndarray:
    """Mask of the uris that are `root` or below it."""
    if not len(uris):
        return np.zeros(0, bool)
    m = pc.or_(pc.equal(uris, root), pc.starts_with(uris, root.rstrip("/") + "/"))
    return np.asarray(m.to_numpy(zero_copy_only=False), bool)


def _same_version(listed: pa.Table, cat: pa.Table) -> np.ndarray:
    """Row by row, does the catalogued photo have the listed one's version (ImageRef.version:
    size and etag when the listing has an etag, else size and mtime)?"""
    def eq(a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:   # null equals null, as None == None
        same = pc.fill_null(pc.equal(a, b), False)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        return np.asarray(pc.or_(same, both_null).to_numpy(zero_copy_only=False), bool)

    has_etag = np.asarray(pc.is_valid(listed.column("etag")).to_numpy(zero_copy_only=False), bool)
    return eq(listed.column("size"), cat.column("size")) & np.where(
        has_etag, eq(listed.column("etag"), cat.column("etag")),
        eq(listed.column("mtime"), cat.column("mtime")) & ~np.asarray(pc.is_valid(cat.column("etag")).to_numpy(
            zero_copy_only=False), bool))


LISTING = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("mtime", pa.float64()), ("etag", pa.string()),
                     ("list_error", pa.string())])
LISTING_BATCH = 65_536


def listing_table(refs: Iterable[ImageRef]) -> pa.Table:
    """A listing (ImageRefs, streamed) as columns (LISTING), built a batch at a time: at archive
    scale per-photo Python objects would cost the driver hundreds of bytes a photo."""
    batches, chunk = [], []

    def flush() -> None:
        batches.append(pa.record_batch([pa.array([getattr(r, f.name) for r in chunk], f.type) for f in LISTING],
                                       schema=LISTING))
        chunk.clear()

    for ref in refs:
        chunk.append(ref)
        if len(chunk) == LISTING_BATCH:
            flush()
    if chunk:
        flush()
    return pa.Table.from_batches(batches, LISTING).combine_chunks()


def _refs(listed: pa.Table, rows: np.ndarray) -> list[ImageRef]:
    """ImageRefs of the listing's `rows`: made only for the photos that need work."""
    t = listed.take(pa.array(rows, pa.int64()))
    return [ImageRef(*r) for r in zip(*(t.column(f.name).to_pylist() for f in LISTING))]


def _add(retire: dict[str, set[str]], catalog: Catalog, rows: np.ndarray) -> None:
    """Catalog rows to retire, by the shard whose parts hold them."""
    t = catalog.table.take(pa.array(rows, pa.int64()))
    for u, part in zip(t.column("uri").to_pylist(), t.column("part").to_pylist()):
        retire.setdefault(catalog.shards[part], set()).add(u)


def make_plan(refs: Iterable[ImageRef] | pa.Table, catalog: Catalog | dict, source_roots: list[str],
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
    The listing (ImageRefs, or listing_table's columns) and the catalog are diffed as Arrow
    columns (hash joins), not photo by photo; `todo` holds ImageRefs of the photos to do only.
    """
    listed = refs if isinstance(refs, pa.Table) else listing_table(refs)
    if not isinstance(catalog, Catalog):
        if catalog:
            raise TypeError("make_plan needs a Catalog (read_catalog), or {} for an empty output")
        catalog = Catalog()
    cat = catalog.table
    n = listed.num_rows
    plan = Plan(todo=[], listed=n)
    plan.roots = {r: RootCounts() for r in source_roots}
    for root in source_roots:
        plan.roots[root].listed = int(_under(listed.column("uri"), root).sum())

    pos = pc.index_in(listed.column("uri"), value_set=cat.column("uri"))
    found = np.asarray(pc.is_valid(pos).to_numpy(zero_copy_only=False), bool)
    rows = pos.to_numpy(zero_copy_only=False)[found].astype(np.int64) if found.any() else np.empty(0, np.int64)
    same = np.zeros(n, bool)
    retry = np.zeros(n, bool)
    if len(rows):
        version = ["size", "mtime", "etag"]   # not the uris: at archive scale the largest columns, copied for nothing
        old = cat.select([*version, "retry"]).take(pa.array(rows))
        same[found] = _same_version(listed.select(version).filter(pa.array(found)), old)
        retry[found] = old.column("retry").to_numpy(zero_copy_only=False)
    unchanged = found & same & ~retry & (not force)
    plan.new = int((~found).sum())
    plan.unchanged = int(unchanged.sum())
    redo = found & ~unchanged
    plan.retried = int((redo & same & retry).sum())
    plan.changed = int(redo.sum()) - plan.retried
    plan.todo = _refs(listed, np.flatnonzero(~unchanged))
    if redo.any():
        _add(plan.retire, catalog, pos.to_numpy(zero_copy_only=False)[redo].astype(np.int64))

    gone = ~np.asarray(pc.is_in(cat.column("uri"), value_set=listed.column("uri")).to_numpy(
        zero_copy_only=False), bool)
    under = {r: _under(cat.column("uri"), r) for r in source_roots}
    in_roots = np.zeros(len(cat), bool)
    for r, m in under.items():
        plan.roots[r].catalogued = int(m.sum())
        in_roots |= m
    gone &= in_roots
    kept = np.zeros(len(cat), bool)
    for folder in unlisted:
        kept |= _under(cat.column("uri"), folder.rstrip("/"))
    plan.unlisted = int((gone & kept).sum())
    gone &= ~kept
    excluded = [] if retire_excluded else list(excluded)
    if excluded and gone.any():
        skip = np.asarray(pc.is_in(cat.column("uri"), value_set=pa.array(excluded, pa.string())).to_numpy(
            zero_copy_only=False), bool) & gone
        plan.excluded = int(skip.sum())
        gone &= ~skip
    plan.deleted = int(gone.sum())
    for r, m in under.items():
        plan.roots[r].deleted = int((gone & m).sum())
    if gone.any():
        _add(plan.retire, catalog, np.flatnonzero(gone))
    for shard, uris in catalog.duplicates.items():
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
        else:   # a merged part's list of replaced shards is obsolete once they are gone: a new
            # shard may take one of their names (the same photos redone), and must count
            meta = {k: v for k, v in (images_kept.schema.metadata or {}).items() if k != SUPERSEDES}
            write_parquet(store, images_rel, images_kept.replace_schema_metadata(meta or None))


def source_roots(sources: list[str]) -> list[str]:
    """The sources as uri prefixes (local ones through path_to_uri, like the photos' uris)."""
    return [s if is_s3(s) else path_to_uri(local_path(s)) for s in sources]
