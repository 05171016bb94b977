"""Listing and reading input photos. Local folders here; s3:// URIs go through facejob.s3.

A listing streams `ImageRef`s (never the whole tree in one response) in a deterministic order,
so shard ids come out the same on every run over the same files.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class SourceUnavailable(Exception):
    """Reading failed for a reason that may pass (storage outage, throttling) after the storage
    layer's own retries; the image gets an `unavailable` status and is tried again next run."""


@dataclass(frozen=True)
class ImageRef:
    """One input photo as the listing saw it."""

    uri: str
    size: int
    mtime: float | None = None
    etag: str | None = None
    # Set when the listing already knows the file cannot be read (e.g. a dangling link).
    list_error: str | None = None

    def version(self) -> tuple:
        """What must match for an earlier run's result to still hold for this photo."""
        return (self.size, self.etag) if self.etag is not None else (self.size, self.mtime)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(src: str) -> Path:
    """Absolute and normalised ("a/../b" → "b"), without resolving symlinks: a photo's uri is
    the path the user gave, so a link keeps its own name (and a dangling one can be reported)."""
    return Path(os.path.normpath(Path(src).expanduser().absolute()))


def _walk_local(root: Path, extensions: tuple[str, ...], skipped: list[str]) -> Iterator[ImageRef]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        yield ImageRef(str(root), 0, list_error=f"unreadable: cannot list directory ({e.strerror})")
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=True):
                yield from _walk_local(path, extensions, skipped)
                continue
        except OSError:
            pass
        if path.suffix.lower() not in extensions:
            skipped.append(str(path))
            continue
        yield _stat_ref(path)


def _stat_ref(path: Path) -> ImageRef:
    try:
        st = path.stat()
    except OSError as e:
        return ImageRef(str(path), 0, list_error=f"unreadable: {e.strerror}")
    if not path.is_file():
        return ImageRef(str(path), 0, mtime=st.st_mtime, list_error="unsupported: not a regular file")
    return ImageRef(str(path), st.st_size, mtime=st.st_mtime)


def list_images(
    sources: Iterable[str], extensions: tuple[str, ...], skipped: list[str] | None = None
) -> Iterator[ImageRef]:
    """Stream every photo under `sources` (folders, files or s3:// prefixes), each once.

    Folders are walked recursively and keep files whose extension is in `extensions`; other
    files are skipped and their paths appended to `skipped` (counted in run.json). A file named
    explicitly is always listed, whatever its extension. Paths are made absolute and a photo
    reachable twice (the same path given twice, or a folder and its subfolder) is listed once.
    """
    skipped = [] if skipped is None else skipped
    seen: set[str] = set()
    exts = tuple(e.lower() for e in extensions)
    for src in sources:
        skipped_here: list[str] = []
        if is_s3(src):
            from facejob import s3

            refs: Iterable[ImageRef] = s3.list_images(src, exts, skipped_here)
        else:
            path = local_path(src)
            if path.is_dir():
                refs = _walk_local(path, exts, skipped_here)
            elif path.exists() or path.is_symlink():
                refs = [_stat_ref(path)]
            else:
                raise FileNotFoundError(f"source not found: {src}")
        for ref in refs:
            if ref.uri not in seen:
                seen.add(ref.uri)
                yield ref
        for uri in skipped_here:
            if uri not in seen:
                seen.add(uri)
                skipped.append(uri)


def read_bytes(uri: str) -> bytes:
    """All bytes of one photo. Raises OSError (or another error) when the photo cannot be read,
    SourceUnavailable when the failure may be transient."""
    if is_s3(uri):
        from facejob import s3

        return s3.read_bytes(uri)
    with open(uri, "rb") as f:
        return f.read()
