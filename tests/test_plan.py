"""Planning: deterministic shards, catalog diff, retiring rows, leftovers of a crash."""
from __future__ import annotations

import pyarrow as pa
import pytest

from facejob.indexing import plan as planning
from facejob.contract import schema
from facejob.io.sources import ImageRef
from facejob.io.storage import LocalStore, read_parts, write_parquet


def refs(n, mtime=1.0, prefix="/p"):
    return [ImageRef(f"{prefix}/{i:03d}.jpg", 100 + i, mtime) for i in range(n)]


def test_shard_ids_deterministic_and_content_keyed():
    a = planning.cut_shards(planning.make_plan(refs(10), {}, ["/p"]).todo, 4)
    b = planning.cut_shards(planning.make_plan(refs(10), {}, ["/p"]).todo, 4)
    assert [s.id for s in a] == [s.id for s in b] and [len(s.refs) for s in a] == [4, 4, 2]
    c = planning.cut_shards(planning.make_plan(refs(10, mtime=2.0), {}, ["/p"]).todo, 4)
    assert not {s.id for s in a} & {s.id for s in c}


def test_auto_shard_size():
    assert planning.auto_shard_size(17, 2) == 10
    assert planning.auto_shard_size(800, 2) == 100
    assert planning.auto_shard_size(10**6, 16) == 500


def _commit(store, shard, rs):
    images = pa.table({"uri": [r.uri for r in rs], "size": [r.size for r in rs], "mtime": [r.mtime for r in rs],
                       "etag": [r.etag for r in rs], "sha256": ["x"] * len(rs), "width": [1] * len(rs),
                       "height": [1] * len(rs), "phash": [None] * len(rs), "status": ["no_face"] * len(rs), "error": [None] * len(rs),
                       "n_faces": [0] * len(rs), "shard": [shard] * len(rs)}, schema=schema.IMAGES)
    write_parquet(store, planning.FACES_DIR + planning.part_name(shard), schema.FACES.empty_table())
    write_parquet(store, planning.IMAGES_DIR + planning.part_name(shard), images)


def test_catalog_diff_new_changed_deleted_and_retire(tmp_path):
    store = LocalStore(tmp_path)
    old = refs(6)
    _commit(store, "a", old[:3])
    _commit(store, "b", old[3:])
    catalog = planning.read_catalog(store)
    listing = old[:1] + [ImageRef(old[1].uri, 999, 5.0)] + old[3:] + [ImageRef("/p/new.jpg", 1, 1.0)]
    # old[2] is gone; a photo outside the listed roots stays untouched
    _commit(store, "c", [ImageRef("/elsewhere/x.jpg", 1, 1.0)])
    catalog = planning.read_catalog(store)
    p = planning.make_plan(listing, catalog, ["/p"])
    assert (p.new, p.changed, p.unchanged, p.deleted) == (1, 1, 4, 1)
    assert len(p.todo) == 2 and p.retire == {"a": {old[1].uri, old[2].uri}}
    planning.retire(store, p.retire)
    left = read_parts(store, planning.IMAGES_DIR, schema.IMAGES, ["uri"]).column("uri").to_pylist()
    assert sorted(left) == sorted([old[0].uri, *[r.uri for r in old[3:]], "/elsewhere/x.jpg"])


def test_photos_left_out_by_extension_are_kept_unless_retiring_is_allowed(tmp_path):
    """A listing with a narrower extension list skips photos that are still there: they are not
    deleted (a shipped config lacking .avif once retired every AVIF photo); a photo of the same
    extension that is really gone still is."""
    store = LocalStore(tmp_path)
    old = refs(3) + [ImageRef("/p/a.avif", 5, 1.0), ImageRef("/p/gone.avif", 6, 1.0)]
    _commit(store, "a", old)
    catalog = planning.read_catalog(store)
    skipped = ["/p/a.avif", "/p/notes.txt"]   # what the listing saw and left out by extension
    p = planning.make_plan(old[:3], catalog, ["/p"], excluded=skipped)
    assert (p.unchanged, p.excluded, p.deleted) == (3, 1, 1) and p.retire == {"a": {"/p/gone.avif"}}
    p = planning.make_plan(old[:3], catalog, ["/p"], excluded=skipped, retire_excluded=True)
    assert (p.excluded, p.deleted) == (0, 2) and p.retire == {"a": {"/p/a.avif", "/p/gone.avif"}}


def test_transient_errors_retried_next_run(tmp_path):
    store = LocalStore(tmp_path)
    rs = refs(3)
    _commit(store, "a", rs)
    table = planning.read_parquet(store, "images/part-a.parquet").to_pylist()
    table[0].update(status="error", error="unavailable: connection reset")
    table[1].update(status="error", error="corrupt: truncated")
    write_parquet(store, "images/part-a.parquet", pa.Table.from_pylist(table, schema.IMAGES))
    p = planning.make_plan(rs, planning.read_catalog(store), ["/p"])
    assert [r.uri for r in p.todo] == [rs[0].uri] and p.retried == 1 and p.unchanged == 2


def test_versions_by_etag_when_listed_with_one_else_by_mtime(tmp_path):
    """ImageRef.version: S3 photos match on size + etag, files on size + mtime (a missing mtime
    matches a missing one); a photo catalogued without etag but listed with one is redone."""
    store = LocalStore(tmp_path)
    s3 = [ImageRef(f"s3://b/{i}.jpg", 10, None, f"e{i}") for i in range(3)]
    files = [ImageRef("/p/a.jpg", 10, 1.0), ImageRef("/p/b.jpg", 10, None), ImageRef("/p/c.jpg", 10, 1.0)]
    _commit(store, "a", s3 + files)
    listing = [s3[0], ImageRef(s3[1].uri, 10, 5.0, "changed"), ImageRef(s3[2].uri, 11, None, "e2"),
               files[0], files[1], ImageRef(files[2].uri, 10, 2.0), ImageRef("/p/new.jpg", 1, 1.0)]
    listing += [ImageRef(files[0].uri.replace("a.jpg", "x.jpg"), 10, 1.0, "etag")]
    p = planning.make_plan(listing, planning.read_catalog(store), ["s3://b", "/p"])
    assert [r.uri for r in p.todo] == [s3[1].uri, s3[2].uri, files[2].uri, "/p/new.jpg", "/p/x.jpg"]
    assert (p.new, p.changed, p.unchanged, p.deleted) == (2, 3, 3, 0)
    assert p.retire == {"a": {s3[1].uri, s3[2].uri, files[2].uri}}
    assert {r: (c.listed, c.catalogued) for r, c in p.roots.items()} == {"s3://b": (3, 3), "/p": (5, 3)}


def test_force_redoes_everything(tmp_path):
    store = LocalStore(tmp_path)
    _commit(store, "a", refs(3))
    p = planning.make_plan(refs(3), planning.read_catalog(store), ["/p"], force=True)
    assert len(p.todo) == 3 and p.changed == 3
    planning.retire(store, p.retire)
    assert store.list("images/") == [] and store.list("faces/") == []


def test_uncommitted_leftovers_are_not_trusted(tmp_path):
    store = LocalStore(tmp_path)
    _commit(store, "a", refs(2))
    write_parquet(store, planning.FACES_DIR + planning.part_name("crashed"), schema.FACES.empty_table())
    (tmp_path / "images" / ".part-half.parquet.123.tmp").write_bytes(b"PAR1 half written")
    assert planning.remove_orphans(store) == 1
    assert store.list("faces/") == ["faces/part-a.parquet"]
    assert set(planning.read_catalog(store)) == {r.uri for r in refs(2)}  # temp file ignored


def test_a_photo_in_two_parts_keeps_one_row(tmp_path):
    store = LocalStore(tmp_path)
    rs = refs(3)
    _commit(store, "a", rs)
    _commit(store, "b", rs[1:])   # a dead driver's last task committed after the rerun did
    catalog = planning.read_catalog(store)
    p = planning.make_plan(rs, catalog, ["/p"])
    assert p.todo == [] and p.duplicates == 2 and p.retire == {"b": {rs[1].uri, rs[2].uri}}
    planning.retire(store, p.retire)
    left = read_parts(store, planning.IMAGES_DIR, schema.IMAGES, ["uri"]).column("uri").to_pylist()
    assert sorted(left) == [r.uri for r in rs] and store.list("faces/") == ["faces/part-a.parquet"]


def test_retirement_guard(tmp_path):
    store = LocalStore(tmp_path)
    (tmp_path / "p").mkdir()
    root = str(tmp_path / "p")
    rs = refs(30, prefix=root)
    _commit(store, "a", rs)
    catalog = planning.read_catalog(store)

    def check(listing, allow=False, unlisted=()):
        p = planning.make_plan(listing, catalog, [root], unlisted=unlisted)
        planning.check_retirement(p, 0.1, allow)
        return p

    assert check(rs[:20]).deleted == 10                 # the floor: 10 may always go
    with pytest.raises(planning.RetireRefused, match="11 of its 30 indexed photos are gone"):
        check(rs[:19])
    assert check(rs[:19], allow=True).deleted == 11
    with pytest.raises(planning.RetireRefused, match="lists no photos"):
        check([])
    p = check(rs[:5], unlisted=[root])                  # the listing could not read the folder
    assert (p.deleted, p.unlisted, p.retire) == (0, 25, {})
    (tmp_path / "p").rmdir()
    (tmp_path / "p").write_bytes(b"")                   # no longer a folder: refused even if allowed
    with pytest.raises(planning.RetireRefused, match="is not a folder"):
        check([], allow=True)


def test_damaged_parts_on_s3_are_quarantined(s3):
    from facejob.io.s3 import S3Store

    store = S3Store(s3.uri("out"))
    _commit(store, "a", refs(2))
    _commit(store, "b", refs(2, prefix="/q"))
    good = store.read_bytes("faces/part-b.parquet")
    store.write_bytes("faces/part-b.parquet", good[: len(good) // 2])
    catalog = planning.read_catalog(store)
    assert set(catalog) == {r.uri for r in refs(2)}
    assert sorted(k.split("/", 2)[-1] for k in catalog.quarantined) == ["faces/part-b.parquet", "images/part-b.parquet"]
    assert store.list("images/") == ["images/part-a.parquet"]
    assert len(store.list("quarantine/")) == 2


def test_read_parquet_reads_local_files_in_place_and_tells_damaged_from_gone(tmp_path, s3):
    """Local files are read in place (only the columns asked for), S3 objects from their bytes:
    the same table either way; a cut file is DamagedPart, a missing one an OSError (a storage
    error: nothing to quarantine)."""
    from facejob.io.s3 import S3Store
    from facejob.io.storage import DamagedPart, read_parquet

    table = pa.table({"a": list(range(1000)), "b": [str(i) for i in range(1000)]})
    for store in (LocalStore(tmp_path / "out"), S3Store(s3.uri("rp"))):
        write_parquet(store, "x/t.parquet", table)
        assert read_parquet(store, "x/t.parquet").equals(table)
        assert read_parquet(store, "x/t.parquet", columns=["b"]).equals(table.select(["b"]))
        good = store.read_bytes("x/t.parquet")
        store.write_bytes("x/cut.parquet", good[: len(good) // 2])
        with pytest.raises(DamagedPart, match="x/cut.parquet"):
            read_parquet(store, "x/cut.parquet")
        with pytest.raises(OSError):
            read_parquet(store, "x/gone.parquet")
