"""Per-face quality (facejob/face/quality.py) in the index output, and the reducer's quality floor."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageFilter

from facejob.face import quality
from tests.test_reduce_data import make_out, photos, pipeline


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_blur_and_size_lower_quality(data_dir):
    img = Image.open(data_dir / "labelled/fr_knn/train/obama/obama.jpg").convert("RGB")
    img = img.resize((400, round(img.height * 400 / img.width)))
    sharp = pipeline().process_bytes(jpeg(img)).faces
    blurred = pipeline().process_bytes(jpeg(img.filter(ImageFilter.GaussianBlur(4)))).faces
    assert len(sharp) == len(blurred) == 1
    assert sharp[0].quality == 1.0 and sharp[0].sharpness > quality.FULL_SHARPNESS
    assert blurred[0].sharpness < sharp[0].sharpness / 4 and blurred[0].quality < 0.5
    # size term: a 20 px face is worth half of a 40 px one at equal sharpness
    q = quality.quality(np.array([20, 40, 80]), np.full(3, 100.0))
    assert q.tolist() == [0.5, 1.0, 1.0]


def _set_quality(out: Path, low: set[str] | None, drop: bool = False) -> None:
    """Rewrite OUT/faces parts: quality 0.1 for the face_ids in `low`, or no quality columns."""
    for part in sorted((out / "faces").glob("*.parquet")):
        t = pq.read_table(part)
        if drop:
            t = t.drop_columns(["quality", "sharpness"])
        else:
            hit = pc.is_in(t.column("face_id"), pa.array(sorted(low))).to_numpy(zero_copy_only=False)
            q = np.where(hit, 0.1, t.column("quality").to_numpy(zero_copy_only=False)).astype(np.float32)
            t = t.set_column(t.schema.get_field_index("quality"), "quality", pa.array(q))
        pq.write_table(t, part)


def test_reduce_leaves_out_faces_below_the_floor(data_dir, tmp_path):
    from facejob.reduce import api

    out = tmp_path / "out"
    make_out(out, photos(data_dir))
    ids = pq.read_table(out / "faces", columns=["face_id"]).column("face_id").to_pylist()
    low = set(ids[::5])
    _set_quality(out, low)
    r = api.reduce(str(out))
    assert r.cluster.left_out == len(low) and r.cluster.faces == len(ids) - len(low)
    clustered = set(pq.read_table(out / "clusters.parquet").column("face_id").to_pylist())
    assert clustered == set(ids) - low
    assert r.faces == len(ids)   # all of them stay in the search index
    s = api.cluster(str(out), min_quality=0)
    assert s.left_out == 0 and s.faces == len(ids)


def test_outputs_without_quality_are_read_as_unknown_and_kept(data_dir, tmp_path):
    from facejob.reduce import api
    from facejob.reduce.embeddings import read_faces
    from facejob.io.storage import LocalStore

    out = tmp_path / "out"
    make_out(out, photos(data_dir)[:25])
    _set_quality(out, None, drop=True)
    faces = read_faces(LocalStore(out), ("face_id", "quality"))
    assert len(faces) > 0 and faces.meta.column("quality").null_count == len(faces)
    s = api.cluster(str(out))
    assert s.left_out == 0 and s.faces == len(faces)
