"""Reducer tests, part 1: a real index output built from the labelled photo sets, and the
streaming reader of faces/. The other test_reduce_* files build on `make_out` from here.

The archive is made with the real FaceModel (dlib HOG, 5-point landmarks, ResNet) and written
the way `facejob index` writes it (faces/ and images/ parts, run.json), without starting Ray.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from facejob.config import IndexConfig, ModelConfig
from facejob.indexing.pipeline import FaceModel, ImageResult, shard_tables
from facejob.io.sources import ImageRef
from facejob.io.storage import LocalStore, write_parquet

SETS = ("labelled/dlib_johns", "labelled/faceapi_bbt")


@functools.cache
def pipeline() -> FaceModel:
    return FaceModel(ModelConfig(detector="hog"))


@functools.cache
def _embed(path: str, mtime: float) -> ImageResult:
    return pipeline().process_bytes(Path(path).read_bytes())


def photos(data_dir: Path, sets=SETS) -> list[Path]:
    """Photos of the labelled sets, sorted; the person is the parent folder's name."""
    return sorted(p for s in sets for p in (data_dir / s).rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def make_out(out: Path, paths: list[Path], shard_size: int = 40, first_shard: int = 0) -> LocalStore:
    """Write OUT/faces, OUT/images and OUT/run.json for `paths`, like `facejob index` does."""
    store = LocalStore(out)
    config = IndexConfig(ModelConfig(detector="hog"))
    for n, lo in enumerate(range(0, len(paths), shard_size)):
        chunk = paths[lo:lo + shard_size]
        refs = [ImageRef(str(p), p.stat().st_size, mtime=p.stat().st_mtime) for p in chunk]
        results = [_embed(str(p), p.stat().st_mtime) for p in chunk]
        shard = f"t{first_shard + n:04d}"
        images, faces = shard_tables(refs, results, shard, "hog", "dlib")
        write_parquet(store, f"faces/part-{shard}.parquet", faces)
        write_parquet(store, f"images/part-{shard}.parquet", images)
    config.model.save(store)
    store.write_bytes("run.json", json.dumps(config.to_dict()).encode())
    return store


def person(uri: str) -> str:
    return Path(uri).parent.name


# ------------------------------------------------------------------------------ reader tests

def test_read_faces_streams_every_part(tmp_path, data_dir):
    from facejob.reduce.embeddings import read_faces

    paths = photos(data_dir)[:30]
    store = make_out(tmp_path / "out", paths, shard_size=7)
    faces = read_faces(store)
    expect = pq.read_table(tmp_path / "out" / "faces").sort_by("face_id")
    got_order = np.argsort(faces.face_ids.to_numpy(zero_copy_only=False))
    assert len(faces) == expect.num_rows == sum(len(_embed(str(p), p.stat().st_mtime).faces) for p in paths)
    want = np.asarray(expect.column("embedding").to_pylist(), np.float32)
    assert np.array_equal(faces.embeddings[got_order], want)
    assert faces.embeddings.dtype == np.float32 and faces.embeddings.flags.c_contiguous


def test_read_faces_without_index_output_says_so(tmp_path):
    from facejob.reduce import NotIndexedError
    from facejob.reduce.embeddings import read_faces

    with pytest.raises(NotIndexedError, match="run `facejob index` first"):
        read_faces(LocalStore(tmp_path))


def test_a_part_written_twice_counts_once(tmp_path, data_dir):
    from facejob.reduce.embeddings import read_faces

    store = make_out(tmp_path / "out", photos(data_dir)[:10], shard_size=10)
    (tmp_path / "out/faces/part-t0000.parquet").rename(tmp_path / "out/faces/part-copy.parquet")
    make_out(tmp_path / "out", photos(data_dir)[:10], shard_size=10)
    faces = read_faces(store)
    assert len(faces) == 10 and len(set(faces.face_ids.to_pylist())) == 10


def test_saved_files_written_sorted_a_row_group_at_a_time_equal_the_sorted_table(tmp_path):
    """saved.write(..., sort_by=) never builds the sorted table: the file holds the same rows,
    row groups and digest as the sorted table written whole (and ends whole when it is empty)."""
    import pyarrow as pa

    from facejob.reduce import saved

    store = LocalStore(tmp_path)
    rng = np.random.default_rng(0)
    ids = [f"{x:020x}" for x in rng.integers(0, 2**62, 20_000)]
    table = pa.table({"face_id": ids, "row": np.arange(len(ids))})
    for rows in (8192, None):
        saved.write(store, "sorted.parquet", table, "k", rows, sort_by="face_id")
        saved.write(store, "whole.parquet", table.sort_by("face_id"), "k", rows)
        got, want = (pq.ParquetFile(tmp_path / f) for f in ("sorted.parquet", "whole.parquet"))
        assert got.read().equals(want.read()) and not got.read().equals(table)
        assert [got.metadata.row_group(i).num_rows for i in range(got.metadata.num_row_groups)] == \
               [want.metadata.row_group(i).num_rows for i in range(want.metadata.num_row_groups)]
        assert saved.read(store, "sorted.parquet", "k").equals(saved.read(store, "whole.parquet", "k"))
    saved.write(store, "empty.parquet", table.slice(0, 0), "k", 8192, sort_by="face_id")
    assert saved.read(store, "empty.parquet", "k").num_rows == 0


def test_one_chunk_equals_combine_chunks_of_batches_and_tables():
    """embeddings.one_chunk (a column combined at a time, the pieces let go as it goes): the table
    combine_chunks gives, one chunk a column, the pieces list emptied; the schema's empty table
    when there are none."""
    import pyarrow as pa

    from facejob.reduce.embeddings import one_chunk

    batches = [pa.record_batch({"face_id": [f"f{k}{i}" for i in range(50)], "row": np.arange(50) + k})
               for k in range(4)]
    want = pa.Table.from_batches(batches).combine_chunks()
    for pieces in (list(batches), [pa.Table.from_batches([b]) for b in batches]):
        got = one_chunk(pieces, want.schema)
        assert got.equals(want) and got.schema == want.schema and pieces == []
        assert all(c.num_chunks == 1 for c in got.columns)
    assert one_chunk([], want.schema).equals(want.schema.empty_table())


def test_read_rows_reads_only_the_rows_asked_in_their_order(tmp_path, monkeypatch):
    """embeddings.read_rows: the rows asked of the parts read in order (a part written twice
    included), in the order asked with repeats; parts holding none of them are not read; rows
    past the parts are an error, not a short table."""
    from bench.reduce_scale import write_archive
    from facejob.reduce import embeddings as em
    from facejob.reduce.errors import ReduceError

    write_archive(tmp_path, 1000, 50, part_rows=100)
    store = LocalStore(tmp_path)
    rels = em.parts(store, "faces")
    rels = [*rels, rels[2]]         # a part read twice: its rows count twice
    cols = ["face_id", "uri", "left", "landmarks", "quality"]
    every = em.read_faces(store, cols, embeddings=False, rels=rels, drop_repeated=False).meta
    read = []
    real = em._file_batches
    monkeypatch.setattr(em, "_file_batches", lambda f, c, where: read.append(where) or real(f, c, where))
    rows = np.array([1050, 3, 250, 3, 299, 1099, 0])
    got = em.read_rows(store, rels, cols, rows)
    assert got.equals(every.take(rows)) and all(c.num_chunks == 1 for c in got.columns)
    assert [w.rsplit("/", 1)[1] for w in read] == ["part-0000.parquet", *["part-0002.parquet"] * 2]  # none of 1, 3-9
    assert em.read_rows(store, rels, cols, np.arange(300, 310)).equals(every.slice(300, 10))
    assert em.read_rows(store, rels, cols, np.empty(0, np.int64)).num_rows == 0
    with pytest.raises(ReduceError, match="past the"):
        em.read_rows(store, rels, cols, np.array([5, 1100]))


def test_a_saved_file_streams_to_a_local_temp_file_published_only_whole(tmp_path, monkeypatch):
    """saved.write streams a local store's file to disk (its bytes are never a buffer in memory)
    and publishes it only when the writer finished: a failure mid-write leaves the file of the
    last run as it was and no temp file."""
    import pyarrow as pa

    from facejob.reduce import saved

    store = LocalStore(tmp_path)
    table = pa.table({"face_id": [f"{i:08d}" for i in range(50_000)], "row": np.arange(50_000)})
    saved.write(store, "kept.parquet", table, "old", 8192, sort_by="face_id")
    before = (tmp_path / "kept.parquet").read_bytes()
    seen = []
    real = pq.ParquetWriter.write_table

    def dies_on_third(self, t, row_group_size=None):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))     # a temp file grows beside it
        if len(seen) == 3:
            raise OSError(28, "No space left on device")
        return real(self, t, row_group_size=row_group_size)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", dies_on_third)
    with pytest.raises(OSError, match="kept.parquet"):
        saved.write(store, "kept.parquet", table, "new", 8192, sort_by="face_id")
    assert any(n.startswith(".kept.parquet.") for n in seen[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.parquet"]
    assert (tmp_path / "kept.parquet").read_bytes() == before and saved.stamped(store, "kept.parquet", "old")
    monkeypatch.undo()
    saved.write(store, "kept.parquet", table, "new", 8192, sort_by="face_id")
    assert saved.read(store, "kept.parquet", "new").equals(table)
