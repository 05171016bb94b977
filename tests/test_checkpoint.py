"""The catalog checkpoint (OUT/catalog.parquet, facejob.indexing.checkpoint): planning takes from
it the parts it holds as they are now and reads only the others; a part changed, replaced or
removed since, and a checkpoint that is damaged, are never trusted; a crash between a shard's
commit and the checkpoint's write costs a read, not a wrong plan. Every catalog read through the
checkpoint is compared with one read from the parts alone."""
from __future__ import annotations

import time

import pyarrow as pa
import pytest

import facejob
from facejob.config import IndexConfig, RunConfig
from facejob.contract.layout import CATALOG
from facejob.indexing import checkpoint
from facejob.indexing import plan as planning
from facejob.indexing.compact import merge
from facejob.io import storage
from facejob.io.sources import ImageRef
from facejob.io.storage import LocalStore, committed_parts
from tests.s3_server import assert_same_results, lfw_photos
from tests.test_plan import _commit, refs


def rows(catalog: planning.Catalog) -> tuple[list[tuple], dict[str, set[str]]]:
    """A catalog as comparable values: its rows (each with its part's shard), sorted, and its duplicates."""
    t = catalog.table
    shards = [catalog.shards[p] for p in t.column("part").to_pylist()]
    cols = [t.column(n).to_pylist() for n in ("uri", "size", "mtime", "etag", "retry")]
    return sorted(zip(*cols, shards)), catalog.duplicates


def full_read(store) -> planning.Catalog:
    """The catalog read from the parts alone: the checkpoint is moved aside meanwhile."""
    saved = store.read_bytes(CATALOG) if store.exists(CATALOG) else None
    if saved is not None:
        store.delete(CATALOG)
    try:
        catalog = planning.read_catalog(store)
    finally:
        if saved is not None:
            store.write_bytes(CATALOG, saved)
    assert catalog.parts_read == len(committed_parts(store, planning.IMAGES_DIR)) + len(catalog.quarantined) // 2
    return catalog


def read_checked(store, parts_read: int) -> planning.Catalog:
    """The catalog through the checkpoint, having read `parts_read` parts, equal to a full read."""
    catalog = planning.read_catalog(store)
    assert catalog.parts_read == parts_read
    assert rows(catalog) == rows(full_read(store))
    return catalog


class CountingStore(LocalStore):
    """A LocalStore that counts its listings."""

    listings = 0

    def list(self, prefix):
        self.listings += 1
        return super().list(prefix)

    def list_versions(self, prefix):
        self.listings += 1
        return super().list_versions(prefix)


def test_plan_reads_only_the_parts_the_checkpoint_lacks(tmp_path):
    store = LocalStore(tmp_path)
    _commit(store, "a", refs(3))
    _commit(store, "b", refs(3, prefix="/q"))
    assert planning.read_catalog(store).parts_read == 2 and planning.save_checkpoint(store) == 2
    assert len(read_checked(store, 0)) == 6
    _commit(store, "c", refs(2, prefix="/r"))   # a run's shard, committed; it died before the checkpoint
    assert len(read_checked(store, 1)) == 8
    assert planning.save_checkpoint(store) == 1 and planning.save_checkpoint(store) == 0
    read_checked(store, 0)


def test_parts_retired_or_written_again_since_the_checkpoint_are_read(tmp_path):
    store = LocalStore(tmp_path)
    rs, qs = refs(6), refs(2, prefix="/q")
    _commit(store, "a", rs[:3])
    _commit(store, "b", rs[3:])
    _commit(store, "c", qs)
    planning.save_checkpoint(store)
    planning.retire(store, {"a": {rs[0].uri}, "c": {r.uri for r in qs}})   # a rewritten, c deleted
    catalog = read_checked(store, 1)
    assert set(catalog) == {r.uri for r in rs[1:]}
    planning.save_checkpoint(store)
    # The same name written again with other rows (a shard's photos redone): its version differs.
    _commit(store, "b", [ImageRef(r.uri, r.size, 9.0) for r in rs[3:]])
    catalog = read_checked(store, 1)
    assert sorted(catalog.table.column("mtime").to_pylist()) == [1.0, 1.0, 9.0, 9.0, 9.0]


def test_compacted_and_damaged_parts_are_not_taken_from_the_checkpoint(tmp_path):
    store = LocalStore(tmp_path)
    _commit(store, "a", refs(2))
    _commit(store, "b", refs(2, prefix="/q"))
    _commit(store, "c", refs(2, prefix="/r"))
    _commit(store, "d", refs(2, prefix="/s"))
    planning.save_checkpoint(store)
    merged = merge(store, ["a", "b"])   # compaction's merge alone, without the checkpoint it writes after
    catalog = read_checked(store, 1)
    assert {catalog.shards[p] for p in catalog.table.column("part").to_pylist()} == {merged, "c", "d"}
    planning.save_checkpoint(store)
    good = store.read_bytes("images/part-c.parquet")
    store.write_bytes("images/part-c.parquet", good[: len(good) // 2])   # damaged: quarantined, as without one
    store.delete("faces/part-d.parquet")                                 # its faces part gone: the same
    catalog = planning.read_catalog(store)
    assert catalog.parts_read == 2 and len(catalog.quarantined) == 3 and len(catalog) == 4
    assert store.list("images/") == [f"images/part-{merged}.parquet"]
    assert rows(catalog) == rows(full_read(store))


def test_a_photo_in_two_parts_keeps_the_row_a_full_read_keeps(tmp_path):
    store = LocalStore(tmp_path)
    rs = refs(3)
    _commit(store, "b", rs)
    planning.save_checkpoint(store)
    _commit(store, "a", rs[1:])   # listed before b: a full read keeps a's rows, so must the checkpoint's
    catalog = read_checked(store, 1)
    assert catalog.duplicates == {"b": {rs[1].uri, rs[2].uri}}


@pytest.mark.parametrize("damage", ["cut", "not parquet", "other format", "row of no part", "no list of parts"])
def test_a_damaged_checkpoint_is_ignored_and_rewritten(tmp_path, damage, monkeypatch, caplog):
    store = LocalStore(tmp_path)
    _commit(store, "a", refs(3))
    _commit(store, "b", refs(3, prefix="/q"))
    planning.save_checkpoint(store)
    saved = checkpoint.load(store)
    data = store.read_bytes(CATALOG)
    if damage == "cut":
        store.write_bytes(CATALOG, data[: len(data) - 100])
    elif damage == "not parquet":
        store.write_bytes(CATALOG, b"PAR1 not really")
    elif damage == "other format":
        monkeypatch.setattr(checkpoint, "FORMAT", checkpoint.FORMAT + 1)
        checkpoint.save(store, saved)
        monkeypatch.undo()
    elif damage == "row of no part":
        part = saved.table.column("part")
        checkpoint.save(store, checkpoint.Checkpoint(saved.table.set_column(5, "part", pa.compute.add(part, 1)),
                                                     saved.parts))
    else:
        storage.write_parquet(store, CATALOG, saved.table)
    read_checked(store, 2)
    assert "ignoring the catalog checkpoint" in caplog.text
    assert planning.save_checkpoint(store) == 2
    read_checked(store, 0)


def test_a_checkpoint_that_cannot_be_written_costs_a_warning_not_the_run(tmp_path, caplog):
    store = LocalStore(tmp_path)
    _commit(store, "a", refs(3))
    (tmp_path / CATALOG).mkdir()   # in the way of the rename
    assert planning.save_checkpoint(store) == 1 and "could not write the catalog checkpoint" in caplog.text
    read_checked(store, 1)


def test_unchanged_part_folders_are_not_even_listed(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "SETTLE_S", 0.2)   # the file system's clock ticks in ms here, not seconds
    store = CountingStore(tmp_path)
    _commit(store, "a", refs(3))
    _commit(store, "b", refs(3, prefix="/q"))
    planning.save_checkpoint(store)
    assert checkpoint.load(store).folders == {}   # they changed just now: another change could keep their times
    time.sleep(0.3)
    assert planning.save_checkpoint(store) == 0   # settled: their versions are recorded now
    assert set(checkpoint.load(store).folders) == {planning.IMAGES_DIR, planning.FACES_DIR}
    store.listings = 0
    catalog = planning.read_catalog(store)
    assert store.listings == 0 and catalog.parts_read == 0 and rows(catalog) == rows(full_read(store))
    _commit(store, "c", refs(1, prefix="/r"))
    store.listings = 0
    catalog = read_checked(store, 1)
    assert store.listings > 0 and len(catalog) == 7


def test_checkpoint_on_s3(s3):
    from facejob.io.s3 import S3Store

    store = S3Store(s3.uri("out"))
    rs = refs(4)
    _commit(store, "a", rs[:2])
    _commit(store, "b", rs[2:])
    assert planning.save_checkpoint(store) == 2 and store.exists(CATALOG)
    read_checked(store, 0)
    planning.retire(store, {"a": {rs[0].uri}})   # rewritten: a new ETag
    _commit(store, "c", refs(1, prefix="/q"))
    assert len(read_checked(store, 2)) == 4
    assert planning.save_checkpoint(store) == 2
    read_checked(store, 0)
    store.write_bytes(CATALOG, store.read_bytes(CATALOG)[:-10])
    read_checked(store, 3)


def test_a_crash_before_the_checkpoint_costs_a_read_not_a_wrong_plan(ray_local, data_dir, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    lfw_photos(data_dir, 6, photos)
    out = tmp_path / "out"
    config = IndexConfig(run=RunConfig(workers=1, shard_size=2, compact_parts=0))
    first = facejob.index([str(photos)], str(out), config, progress=False)
    assert first.ok and first.counts["shards"] == 3 and first.counts["catalog_parts_read"] == 0
    lfw_photos(data_dir, 4, photos, start=6)   # the next night brings four photos

    def killed(store):
        raise RuntimeError("killed after the shards' commits, before the checkpoint")

    monkeypatch.setattr(planning, "save_checkpoint", killed)
    with pytest.raises(RuntimeError, match="before the checkpoint"):
        facejob.index([str(photos)], str(out), config, progress=False)
    monkeypatch.undo()
    store = LocalStore(out)
    assert len(committed_parts(store, planning.IMAGES_DIR)) == 5 and len(checkpoint.load(store).parts) == 3
    rerun = facejob.index([str(photos)], str(out), config, progress=False)
    assert rerun.ok and rerun.counts["processed"] == 0 and rerun.counts["unchanged"] == 10
    assert rerun.counts["catalog_parts_read"] == 2   # the two parts the checkpoint did not hold
    assert len(read_checked(store, 0)) == 10
    again = facejob.index([str(photos)], str(out), config, progress=False)
    assert again.counts["processed"] == 0 and again.counts["catalog_parts_read"] == 0
    scratch = tmp_path / "scratch"
    assert facejob.index([str(photos)], str(scratch), config, progress=False).ok
    assert_same_results(out, scratch)
