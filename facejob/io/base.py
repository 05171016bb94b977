"""What sources, stores and their S3 backend share, so that s3.py depends on nothing above it:
sources.py and storage.py hand s3:// uris to s3.py, and s3.py builds ImageRefs and checks
relative paths with the definitions here.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath


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


def safe_rel(rel: str) -> str:
    """Refuse relative paths that would escape the store root."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"refusing output path outside the output root: {rel!r}")
    return str(p)


def digest(*fields) -> str:
    """A short version string of `fields` (what a listing says of one file): 16 hex digits, as
    the catalog checkpoint keeps one per part (Store.list_versions)."""
    return hashlib.blake2b(repr(fields).encode(), digest_size=8).hexdigest()
