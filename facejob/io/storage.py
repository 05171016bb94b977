"""The output location (a local folder or an s3:// prefix) and atomic writes into it.

Every file facejob writes appears whole or not at all: locally through a temp file and
`os.replace`, on S3 through a single PUT (or a completed multipart upload). Readers therefore
never see a partial Parquet part, and a crash leaves nothing a later run would trust.
"""
from __future__ import annotations

import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from facejob.contract.layout import IMAGES_DIR, MERGED, SUPERSEDES, shard_of
from facejob.io.base import digest, safe_rel


# Seconds after its last change before a folder's times are trusted to move on the next one:
# above the coarsest common file time resolution (FAT's 2 s); see LocalStore.folder_version.
SETTLE_S = 3.0


class Store(Protocol):
    """Files under one root, addressed by relative POSIX paths like ``faces/part-x.parquet``."""

    root: str

    def exists(self, rel: str) -> bool: ...
    def read_bytes(self, rel: str) -> bytes: ...
    def read_tail(self, rel: str, n: int) -> bytes: ...
    def write_bytes(self, rel: str, data: bytes | memoryview) -> None: ...
    def list(self, prefix: str) -> list[str]: ...
    def list_versions(self, prefix: str) -> dict[str, str]: ...
    def folder_version(self, prefix: str) -> str | None: ...
    def delete(self, rel: str) -> None: ...

    def local_path(self, rel: str = "") -> Path | None:
        """`rel` (the root for "") as a path on this machine, for readers that want a file
        (hnswlib, memory-mapped Parquet, whole folders); None when the store is not a local folder."""


def umask() -> int:
    """This process's umask (read without changing it where Linux shows it, as the umask call
    itself sets it and so is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Rename a finished temp file onto `dest` with the mode a plain `open` would have given it
    (0666 less the umask): mkstemp makes files 0600, which would hide the output from a web
    server or a colleague."""
    os.chmod(tmp, 0o666 & ~umask())
    os.replace(tmp, dest)


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.path = Path(os.path.normpath(Path(root).expanduser().absolute()))
        self.root = str(self.path)

    def _p(self, rel: str) -> Path:
        return self.path / safe_rel(rel)

    def exists(self, rel: str) -> bool:
        return self._p(rel).is_file()

    def read_bytes(self, rel: str) -> bytes:
        return self._p(rel).read_bytes()

    def read_tail(self, rel: str, n: int) -> bytes:
        with open(self._p(rel), "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - n))
            return f.read()

    def write_bytes(self, rel: str, data: bytes | memoryview) -> None:
        with self.writer(rel) as f:
            f.write(data)

    @contextmanager
    def writer(self, rel: str) -> Iterator[BinaryIO]:
        """A file to write OUT/rel into, published (fsynced, renamed onto it) when the block ends
        without an error; on an error nothing is published."""
        dest = self._p(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Temp name starts with '.', so listings (and pyarrow datasets) ignore it.
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            publish(tmp, dest)
        except OSError as e:  # disk full, permissions: say which file
            Path(tmp).unlink(missing_ok=True)
            raise type(e)(e.errno, e.strerror, str(dest)) from e
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, prefix: str) -> list[str]:
        return sorted(self._walk(prefix, lambda e: ""))

    def list_versions(self, prefix: str) -> dict[str, str]:
        """Like `list`, each path with its version: inode, size, mtime and ctime, which change
        whenever a file is replaced (every write is a rename of a new file) or edited in place."""
        def version(e: os.DirEntry) -> str:
            st = e.stat(follow_symlinks=False)
            return digest(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

        return dict(sorted(self._walk(prefix, version).items()))

    def folder_version(self, prefix: str) -> str | None:
        """A version of the folder `prefix` that changes whenever a file is added to, removed
        from or renamed in it (every write here is a rename): its inode and times. Files in its
        subfolders are not covered. None when it cannot promise that: there is no such folder,
        or it changed less than SETTLE_S ago (a second change within the file system's clock
        tick would leave its times as they are)."""
        try:
            st = os.stat(self._p(prefix))
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode) or time.time() - max(st.st_mtime, st.st_ctime) < SETTLE_S:
            return None
        return digest(st.st_ino, st.st_mtime_ns, st.st_ctime_ns)

    def _walk(self, prefix: str, version) -> dict[str, str]:
        """Files under `prefix` (dot names skipped) → version(their DirEntry)."""
        base = self._p(prefix)
        if not base.is_dir():
            return {}
        root, out = len(os.path.join(str(self.path), "")), {}

        def walk(folder: str) -> None:   # os.scandir, not Path.rglob: 5x faster on 10,000s of parts
            with os.scandir(folder) as entries:
                for e in entries:
                    if e.is_dir():
                        if not e.is_symlink():   # as rglob: a linked folder is not entered
                            walk(e.path)
                    elif e.is_file() and not e.name.startswith("."):
                        out[e.path[root:].replace(os.sep, "/")] = version(e)

        walk(str(base))
        return out

    def delete(self, rel: str) -> None:
        self._p(rel).unlink(missing_ok=True)

    def local_path(self, rel: str = "") -> Path:
        return self._p(rel) if rel else self.path


def open_store(out: str | os.PathLike | Store) -> Store:
    """A Store for a local folder or an s3://bucket/prefix; a Store is returned as it is."""
    if not isinstance(out, (str, os.PathLike)):
        return out
    if os.fspath(out).startswith("s3://"):
        from facejob.io import s3

        return s3.S3Store(os.fspath(out))
    return LocalStore(out)


@contextmanager
def writing(store: Store, rel: str) -> Iterator[BinaryIO]:
    """A binary file to write OUT/rel into, whole or not at all when the block ends: a local
    store's temp file beside it (the bytes never held in memory: a saved table of 10M faces is
    hundreds of MB), else a buffer written with one `write_bytes`."""
    if isinstance(store, LocalStore):
        with store.writer(rel) as f:
            yield f
        return
    buf = io.BytesIO()
    yield buf
    store.write_bytes(rel, buf.getbuffer())


def write_parquet(store: Store, rel: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    store.write_bytes(rel, buf.getbuffer())    # not getvalue(): a second copy of the file (10M rows: GBs)


def read_parquet(store: Store, rel: str, columns: list[str] | None = None, threads: bool = True) -> pa.Table:
    """OUT/rel as a table (`columns` only); DamagedPart when it is not whole Parquet. A local file
    is read in place, only the columns asked for: not its bytes and a copy of them (at 10M faces
    a saved table is hundreds of MB)."""
    local = store.local_path(rel)
    if local is None:
        return parse_parquet(rel, store.read_bytes(rel), columns, threads)
    with pa.OSFile(str(local)) as f:     # gone or unreadable: an OSError, as from read_bytes
        try:
            return pq.ParquetFile(f).read(columns=columns, use_threads=threads)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError or others for broken files
            raise DamagedPart(f"{rel}: {e}") from e


class DamagedPart(ValueError):
    """A file in the output is not whole Parquet (a cut copy, a disk that filled up)."""


def parse_parquet(rel: str, data: bytes, columns: list[str] | None = None, threads: bool = True) -> pa.Table:
    """`data` as a table; DamagedPart (never a storage error) when the bytes are not whole Parquet.
    `threads=False` for many small parts read side by side: Arrow's pool costs more than it gives."""
    try:
        return parquet_file(data).read(columns=columns, use_threads=threads)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError or others for broken files
        raise DamagedPart(f"{rel}: {e}") from e


def parquet_file(data: bytes) -> pq.ParquetFile:
    """A Parquet file held in memory, read only by the calling thread's synchronous reader.

    Not `pq.read_table(io.BytesIO(data))`: that goes through Arrow's dataset scanner, which
    finishes its clean-up on Arrow's thread pool after returning (apache/arrow#33975, #34314).
    When that clean-up drops the last reference to a buffer owned by Python (what a Python
    file object or `bytes` hands Arrow) while the interpreter is exiting, the pool thread
    dies taking the GIL and the process aborts ("terminate called without an active
    exception", exit 134) after the command has printed its result. So: the synchronous
    ParquetFile reader, over a copy of the bytes in Arrow's own memory.
    """
    copy = pa.BufferOutputStream()
    copy.write(data)
    return pq.ParquetFile(pa.BufferReader(copy.getvalue()))


def check_parquet(store: Store, rel: str) -> None:
    """Raise DamagedPart unless `rel` ends in a whole Parquet footer.

    Catches what damage does to a part (a cut copy, a disk that filled up) by reading only the
    file's end, so it is cheap on S3 too. Storage errors propagate as they are.
    """
    read_footer(store, rel)


def read_footer(store: Store, rel: str) -> pq.FileMetaData:
    """The Parquet footer of `rel` (row count, key-value metadata), read from the file's end
    only; DamagedPart when there is no whole footer. Storage errors propagate as they are."""
    tail = store.read_tail(rel, 64 * 1024)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        raise DamagedPart(f"{rel}: no Parquet footer (the file is cut short or is not Parquet)")
    need = int.from_bytes(tail[-8:-4], "little") + 8
    if need > len(tail):
        tail = store.read_tail(rel, need)
        if len(tail) < need:
            raise DamagedPart(f"{rel}: the Parquet footer claims more bytes than the file has")
    try:  # read_metadata wants a file: the magic number, then the footer
        return pq.read_metadata(io.BytesIO(b"PAR1" + tail[-need:]))
    except Exception as e:
        raise DamagedPart(f"{rel}: unreadable Parquet footer: {e}") from e


def superseded(store: Store, images_rels: list[str]) -> set[str]:
    """The shards that merged parts among `images_rels` replace (facejob.indexing.compact): the
    merged images part is the commit of the merge, so from the moment it exists the parts it
    replaces count for nothing, even while a crashed compaction has left them on disk. Only
    merged parts' footers are read (few, large parts); a damaged one replaces nothing (its
    source parts, if still there, hold the same rows)."""
    out: set[str] = set()
    for rel in images_rels:
        if not shard_of(rel).startswith(MERGED):
            continue
        try:
            meta = read_footer(store, rel).metadata or {}
        except DamagedPart:
            continue
        if SUPERSEDES in meta:
            out.update(json.loads(meta[SUPERSEDES]))
    return out


def committed_parts(store: Store, prefix: str, listed: list[str] | None = None) -> list[str]:
    """The committed parts under `prefix` ("images/" or "faces/"), in listing order: a shard
    counts once its images part (written last) exists and no merged part replaces it; a faces
    part without its images part is a crashed or running shard. `listed`: store.list(IMAGES_DIR)
    when the caller has it already."""
    images = [rel for rel in (store.list(IMAGES_DIR) if listed is None else listed) if rel.endswith(".parquet")]
    gone = superseded(store, images)
    shards = {shard_of(rel) for rel in images} - gone
    rels = images if prefix == IMAGES_DIR else [rel for rel in store.list(prefix) if rel.endswith(".parquet")]
    return [rel for rel in rels if shard_of(rel) in shards]


def read_parts(store: Store, prefix: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    """All committed parts under `prefix` ("images/" or "faces/") as one table; empty table with `schema` if none.
    Parts written before a column was added (e.g. images.phash) get nulls in it."""
    parts = [read_parquet(store, rel, columns) for rel in committed_parts(store, prefix)]
    if not parts:
        names = columns or schema.names
        return pa.schema([schema.field(n) for n in names]).empty_table()
    return pa.concat_tables(parts, promote_options="default")
