"""Arrow schemas of the tables facejob writes. Readable by anything that reads Parquet."""
from __future__ import annotations

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
    ("phash", pa.int64()),           # 64-bit perceptual hash of the pixels (facejob.phash); null when not decoded
    ("status", pa.string()),         # ok | no_face | error
    ("error", pa.string()),          # reason code and message when status == error, else null
    ("n_faces", pa.int32()),
    ("shard", pa.string()),          # part this row was written in
])

STATUS_OK, STATUS_NO_FACE, STATUS_ERROR = "ok", "no_face", "error"

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
    ("detector", pa.string()),
    ("embedder", pa.string()),
    ("shard", pa.string()),
])
