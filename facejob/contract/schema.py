"""Arrow schemas of the tables facejob writes. Readable by anything that reads Parquet."""
from __future__ import annotations

from enum import Enum

import pyarrow as pa

EMBEDDING_DIM = 128

# One row per input image: every listed image ends up here with a status.
IMAGES = pa.schema([
    ("uri", pa.string()),            # file path (absolute) or s3://bucket/key
    ("size", pa.int64()),            # bytes, from the listing
    ("mtime", pa.float64()),         # local files: modification time (s since epoch); S3: null
    ("etag", pa.string()),           # S3: ETag from the listing; local files: null
    ("sha256", pa.string()),         # of the bytes read; null when they could not be read
    ("width", pa.int32()),           # after EXIF orientation; null when not decoded
    ("height", pa.int32()),
    ("phash", pa.int64()),           # 64-bit perceptual hash of the pixels (facejob.image.phash); null when not decoded
    ("status", pa.string()),         # Status: ok | no_face | error
    ("error", pa.string()),          # "<Reason>: message" when status == error, else null
    ("n_faces", pa.int32()),
    ("shard", pa.string()),          # shard that wrote this row (compaction moves rows, keeps this)
])


# layout.CATALOG, the catalog checkpoint: the images parts' rows as planning reads them
# (IMAGES' columns of these names), `part` indexing the footer's list of parts (layout.CATALOG_PARTS).
CATALOG = pa.schema([
    ("uri", pa.string()),
    ("size", pa.int64()),
    ("mtime", pa.float64()),
    ("etag", pa.string()),
    ("error", pa.string()),
    ("part", pa.int32()),
])


class Status(str, Enum):
    """The `status` column of images/: what became of one photo."""

    OK = "ok"              # faces found; they are in faces/
    NO_FACE = "no_face"    # decoded and searched, no face
    ERROR = "error"        # not processed; `error` says why (a Reason and a message)


class Reason(str, Enum):
    """Why a photo is an error; written as `"<reason>: <message>"` in the `error` column."""

    EMPTY = "empty"               # zero-byte file
    UNSUPPORTED = "unsupported"   # not an image format facejob reads (or a directory)
    CORRUPT = "corrupt"           # the header or the data is damaged
    TOO_LARGE = "too_large"       # more pixels than max_pixels (decompression-bomb guard)
    UNREADABLE = "unreadable"     # the bytes could not be read (missing, forbidden, archived)
    UNAVAILABLE = "unavailable"   # the storage did not answer in time (an outage)
    CRASH = "crash"               # the worker process died on this photo, alone, every time
    FAILED = "failed"             # facejob's own code raised on this photo (a bug: see the message)

    @property
    def retryable(self) -> bool:
        """May the next run succeed without the photo changing? (transient causes only)"""
        return self in (Reason.UNAVAILABLE, Reason.CRASH)

    def error(self, message: str) -> str:
        """The `error` column's text for this reason."""
        return f"{self.value}: {message}"

    @classmethod
    def of(cls, error: str | None) -> "Reason | None":
        """The reason of an `error` column value (any facejob version's), None if there is none."""
        if not error:
            return None
        try:
            return cls(error.split(":", 1)[0].strip())
        except ValueError:
            return None

# One row per detected face.
FACES = pa.schema([
    ("face_id", pa.string()),        # stable: hash of the photo's bytes, its uri and the face box
    ("uri", pa.string()),
    ("sha256", pa.string()),
    ("face_idx", pa.int32()),        # order within the photo (by detection score, highest first)
    ("left", pa.int32()),
    ("top", pa.int32()),
    ("right", pa.int32()),
    ("bottom", pa.int32()),
    ("det_score", pa.float32()),
    ("landmarks", pa.list_(pa.int32())),   # x0, y0, x1, y1, ... (5 or 68 points)
    ("embedding", pa.list_(pa.float32(), EMBEDDING_DIM)),
    ("sharpness", pa.float32()),     # variance of the chip's Laplacian (facejob/face/quality.py)
    ("quality", pa.float32()),       # 0..1 from size and sharpness; parts written before it lack it
    ("detector", pa.string()),
    ("embedder", pa.string()),
    ("shard", pa.string()),
])
