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


def test_faces_below_the_floor_are_clustered_and_named_but_do_not_seed_or_train(data_dir, tmp_path):
    """Every fifth face is marked low quality: each still gets a cluster and a prediction (with
    its quality); those that join a cluster join their own person's, never one holding another
    face of their photo; the SVMs' background pool holds none of them."""
    from collections import Counter

    from facejob.reduce import clustering, labelling
    from tests.test_reduce_data import person

    out = tmp_path / "out"
    make_out(out, photos(data_dir))
    faces = pq.read_table(out / "faces", columns=["face_id", "uri"]).to_pylist()
    ids = [r["face_id"] for r in faces]
    who = {r["face_id"]: person(r["uri"]) for r in faces}
    low = set(ids[::5])
    _set_quality(out, low)
    s = clustering.cluster(str(out))
    assert s.low_quality == len(low) and s.faces == len(ids)
    cl = pq.read_table(out / "clusters.parquet").to_pylist()
    assert {r["face_id"] for r in cl} == set(ids)
    members: dict[int, list[dict]] = {}
    for r in cl:
        members.setdefault(r["cluster_id"], []).append(r)
    joined = [r for r in cl if r["face_id"] in low and len(members[r["cluster_id"]]) > 1]
    assert len(joined) == s.attached >= len(low) // 2, (len(joined), len(low))
    for r in joined:
        seeds = [who[m["face_id"]] for m in members[r["cluster_id"]] if m["face_id"] not in low]
        assert seeds and Counter(seeds).most_common(1)[0][0] == who[r["face_id"]]
    assert all(len({m["uri"] for m in ms}) == len(ms) for ms in members.values())

    by: dict[str, list[str]] = {}
    for r in faces:
        if "dlib_johns" in r["uri"] and r["face_id"] not in low:
            by.setdefault(who[r["face_id"]], []).append(r["face_id"])
    csv = tmp_path / "labels.csv"
    csv.write_text("face_id,name\n" + "".join(f"{f},{n}\n" for n, fs in by.items() for f in fs[:3]))
    ls = labelling.label(str(out), csv)
    assert ls.low_quality == len(low) and ls.faces == len(ids)
    assert ls.background <= len(ids) - len(low)
    pred = {r["face_id"]: r for r in pq.read_table(out / "predictions.parquet").to_pylist()}
    assert set(pred) == set(ids)
    assert all(abs(pred[f]["quality"] - 0.1) < 1e-6 for f in low)
    low_johns = [r["face_id"] for r in faces if r["face_id"] in low and "dlib_johns" in r["uri"]]
    right = [pred[f]["label"] == who[f] for f in low_johns]
    assert np.mean(right) >= 0.8, right
    assert clustering.cluster(str(out), min_quality=0).low_quality == 0


def test_attach_joins_only_the_one_cluster_in_reach():
    from facejob.reduce.linkage import attach

    x = np.array([[0, 0], [0.1, 0], [1, 0], [1.1, 0]], np.float32)
    roots = np.array([0, 0, 2, 2])
    q = np.array([[0.05, 0.1], [0.55, 0], [5, 5], [0.05, -0.1]], np.float32)
    cand = np.array([[0, 2], [1, 2], [0, 3], [1, 3]])
    blocked = np.array([[False, False], [False, False], [False, False], [True, False]])
    to, d = attach(x, roots, q, cand, threshold=0.6, blocked=blocked)
    # near cluster 0 only; in reach of both (ambiguous); in reach of none; its cluster is barred
    assert to.tolist() == [0, -1, -1, -1]
    assert d[0] < 0.2 and np.isinf(d).sum() == 0


def test_outputs_without_quality_are_read_as_unknown_and_kept(data_dir, tmp_path):
    from facejob.reduce import clustering
    from facejob.reduce.embeddings import read_faces
    from facejob.io.storage import LocalStore

    out = tmp_path / "out"
    make_out(out, photos(data_dir)[:25])
    _set_quality(out, None, drop=True)
    faces = read_faces(LocalStore(out), ("face_id", "quality"))
    assert len(faces) > 0 and faces.meta.column("quality").null_count == len(faces)
    s = clustering.cluster(str(out))
    assert s.low_quality == 0 and s.faces == len(faces)
