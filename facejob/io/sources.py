"""Listing and reading input photos. Local folders here; s3:// URIs go through facejob.io.s3.

A listing streams `ImageRef`s (never the whole tree in one response) in a deterministic order,
so shard ids come out the same on every run over the same files.
"""
from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

from facejob.io.base import ImageRef, SourceUnavailable  # noqa: F401  (callers import them from here)

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """A source root cannot be listed as it is (missing, unlistable): nothing may be concluded
    from it, least of all that its photos were deleted."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(src: str) -> Path:
    """Absolute and normalised ("a/../b" → "b"), without resolving symlinks: a photo's uri is
    the path the user gave, so a link keeps its own name (and a dangling one can be reported)."""
    return Path(os.path.normpath(Path(src).expanduser().absolute()))


# A local uri is the path as text. Paths are bytes, and not every name is UTF-8 (old Samba
# shares: b"caf\xe9.jpg"), so the bytes that do not decode are written %XX, and a literal "%"
# that would read as such an escape ("%41") is written %25. Every other character (newlines,
# any Unicode normalisation form) is kept as it is. urllib.parse.unquote_to_bytes(uri) gives
# the original bytes back; names without such bytes or "%XX" text are their plain path.
_HEX = frozenset(b"0123456789abcdefABCDEF")


def path_to_uri(path: str | os.PathLike) -> str:
    """The uri of a local path (see above): lossless, and plain text for ordinary names."""
    raw = os.fsencode(path)
    out: list[str] = []
    i = 0
    while i < len(raw):
        b = raw[i]
        if b == 0x25 and raw[i + 1:i + 2] and raw[i + 1] in _HEX and raw[i + 2:i + 3] and raw[i + 2] in _HEX:
            out.append("%25")
            i += 1
            continue
        if b < 0x80:
            out.append(chr(b))
            i += 1
            continue
        # A whole UTF-8 sequence (its length from the lead byte) is kept, else one byte escaped.
        n = 2 if 0xC2 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF5 else 0
        try:
            out.append(raw[i:i + n].decode("utf-8") if n else "")
        except UnicodeDecodeError:
            n = 0
        if n:
            i += n
        else:
            out.append(f"%{b:02X}")
            i += 1
    return "".join(out)


def uri_to_path(uri: str) -> bytes:
    """The path bytes a local uri stands for (the inverse of path_to_uri)."""
    return unquote_to_bytes(uri)


def source_uri(src: str) -> str:
    """A photo named by the user (a path as typed, or s3://...) as a uri to read it by."""
    return src if is_s3(src) else path_to_uri(local_path(src))


@dataclass
class Listing:
    """What a listing found besides photos: files skipped by extension and folders it could not
    list (their photos are neither listed nor counted as deleted)."""

    skipped: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)


def _walk_local(root: bytes, extensions: tuple[str, ...], skipped: list[str], unlisted: list[str],
                seen_dirs: set[tuple[int, int]]) -> Iterator[ImageRef]:
    """Every photo below `root` (paths as bytes: any name works), each real folder once."""
    try:
        st = os.stat(root)
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        log.warning("cannot list folder %s (%s); its photos are kept as they are", path_to_uri(root), e.strerror)
        unlisted.append(path_to_uri(root))
        return
    if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop, or a second way to one folder
        return
    seen_dirs.add((st.st_dev, st.st_ino))
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=True):
                yield from _walk_local(entry.path, extensions, skipped, unlisted, seen_dirs)
                continue
        except OSError:
            pass
        ext = os.path.splitext(entry.name)[1].lower()
        if os.fsdecode(ext) not in extensions:
            skipped.append(path_to_uri(entry.path))
            continue
        yield _stat_ref(entry.path)


def _stat_ref(path: bytes | str) -> ImageRef:
    uri = path_to_uri(path)
    try:
        st = os.stat(path)
    except OSError as e:
        return ImageRef(uri, 0, list_error=f"unreadable: {e.strerror}")
    if not stat.S_ISREG(st.st_mode):
        return ImageRef(uri, 0, mtime=st.st_mtime, list_error="unsupported: not a regular file")
    return ImageRef(uri, st.st_size, mtime=st.st_mtime)


def list_images(
    sources: Iterable[str], extensions: tuple[str, ...], found: Listing | None = None
) -> Iterator[ImageRef]:
    """Stream every photo under `sources` (folders, files or s3:// prefixes), each once.

    Folders are walked recursively (each real folder once: symlink loops end) and keep files
    whose extension is in `extensions`; other files are recorded in `found.skipped` (counted in
    run.json), subfolders that cannot be listed in `found.unlisted`. A file named explicitly is
    always listed, whatever its extension. Paths are made absolute and a photo reachable twice
    (the same path given twice, or a folder and its subfolder) is listed once. A missing or
    unlistable source raises SourceError.
    """
    found = Listing() if found is None else found
    sources = list(sources)
    # Only several sources can reach one photo twice (a folder and its subfolder, a path given
    # twice): one source lists each photo once, and a set of every uri would cost the driver
    # ~100 bytes a photo at archive scale.
    seen: set[str] | None = set() if len(sources) > 1 else None
    exts = tuple(e.lower() for e in extensions)
    for src in sources:
        skipped_here: list[str] = []
        if is_s3(src):
            from facejob.io import s3

            refs: Iterable[ImageRef] = s3.list_images(src, exts, skipped_here)
        else:
            path = local_path(src)
            raw = os.fsencode(path)
            if path.is_dir():
                try:
                    os.scandir(raw).close()
                except OSError as e:
                    raise SourceError(f"source folder {src} cannot be listed: {e.strerror}") from None
                refs = _walk_local(raw, exts, skipped_here, found.unlisted, set())
            elif path.exists() or path.is_symlink():
                refs = [_stat_ref(raw)]
            else:
                raise SourceError(f"source not found: {src} (is its disk or share mounted?)")
        for ref in refs:
            if seen is None:
                yield ref
            elif ref.uri not in seen:
                seen.add(ref.uri)
                yield ref
        for uri in skipped_here:
            if seen is None:
                found.skipped.append(uri)
            elif uri not in seen:
                seen.add(uri)
                found.skipped.append(uri)


def read_bytes(uri: str) -> bytes:
    """All bytes of the photo at `uri` (s3://, or a local uri as path_to_uri writes it). Raises
    OSError (or another error) when the photo cannot be read, SourceUnavailable when the
    failure may be transient."""
    if is_s3(uri):
        from facejob.io import s3

        return s3.read_bytes(uri)
    with open(uri_to_path(uri), "rb") as f:
        return f.read()
