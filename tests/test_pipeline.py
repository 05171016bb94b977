"""The pure per-image pipeline, checked against dlib called directly the way face_recognition does."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from facejob.config import DEFAULT_MAX_PIXELS, ModelConfig
from facejob.image.decode import decode_image
from facejob.face.model_files import model_path
from facejob.indexing.pipeline import FaceModel, face_id
from facejob.io.sources import ImageRef
from tests.photos import face_image, rotated_with_exif


@pytest.fixture(scope="module")
def pipe() -> FaceModel:
    return FaceModel(ModelConfig(detector="hog"))   # compared with face_recognition's HOG calls


@pytest.fixture(scope="module")
def direct():
    """face_recognition's calls: HOG upsample 1, 5-point landmarks, compute_face_descriptor(img, shape)."""
    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_path("landmarks5"))),
            dlib.face_recognition_model_v1(str(model_path("resnet"))))


def _direct_faces(direct, rgb):
    detector, predictor, net = direct
    rects = detector(rgb, 1)
    return [(r, np.array(net.compute_face_descriptor(rgb, predictor(rgb, r)), np.float32)) for r in rects]


PHOTOS = ["labelled/fr_knn/test/obama_and_biden.jpg", "groups/dlib_faces/2008_002506.jpg",
          "labelled/dlib_johns/John_Salley/000179_02159509.jpg", "groups/misc/couple.jpg"]


@pytest.mark.parametrize("rel", PHOTOS)
def test_descriptors_equal_direct_dlib_calls(pipe, direct, data_dir, rel):
    data = (data_dir / rel).read_bytes()
    result = pipe.process_bytes(data)
    rgb = decode_image(data, DEFAULT_MAX_PIXELS)
    expected = {(r.left(), r.top(), r.right(), r.bottom()): d for r, d in _direct_faces(direct, rgb)}
    got = {(f.left, f.top, f.right, f.bottom): f.embedding for f in result.faces}
    assert got.keys() == expected.keys() and got
    for box, emb in got.items():
        assert np.abs(emb - expected[box]).max() <= 1e-5


def test_exif_rotated_face_found_only_after_rotation(pipe, data_dir):
    img = face_image(data_dir)
    data = rotated_with_exif(img)
    raw_sideways = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert len(dlib.get_frontal_face_detector()(raw_sideways, 1)) == 0  # sideways: HOG sees nothing
    result = pipe.process_bytes(data)
    assert result.status == "ok" and len(result.faces) == 1
    assert (result.width, result.height) == img.size


def test_face_ids_stable_and_distinct(pipe, data_dir):
    data = (data_dir / PHOTOS[0]).read_bytes()
    a = pipe.process_bytes(data)
    b = pipe.process_bytes(data)
    ids_a = [face_id(a.sha256, "x.jpg", f.box) for f in a.faces]
    assert ids_a == [face_id(b.sha256, "x.jpg", f.box) for f in b.faces]
    assert len(set(ids_a)) == len(ids_a) >= 2
    assert face_id(a.sha256, "y.jpg", a.faces[0].box) != ids_a[0]  # a copy elsewhere is another face


def test_faces_in_one_image_embedded_in_one_batch(data_dir):
    cfg = ModelConfig()
    pipe = FaceModel(cfg)
    calls = []
    original = pipe.embedder.embed
    pipe.embedder.embed = lambda chips: calls.append(len(chips)) or original(chips)
    result = pipe.process_bytes((data_dir / "groups/dlib_faces/2008_002470.jpg").read_bytes())
    assert calls == [len(result.faces)] and len(result.faces) >= 4


def test_min_face_size_drops_small_faces(data_dir):
    data = (data_dir / "groups/dlib_faces/2008_002470.jpg").read_bytes()
    all_faces = FaceModel(ModelConfig()).process_bytes(data).faces
    big = FaceModel(ModelConfig(min_face_size=60)).process_bytes(data).faces
    assert len(big) < len(all_faces)
    assert all(f.box.shorter_side >= 60 for f in big)


def _truth_boxes(xml_path: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    out = {}
    for image in ET.parse(xml_path).getroot().iter("image"):
        out[image.get("file")] = [
            (int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
             int(b.get("top")) + int(b.get("height")))
            for b in image.iter("box") if b.get("ignore") != "1"]
    return out


def _iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def matched_truth(truth, found) -> int:
    return sum(any(_iou(t, f) >= 0.5 for f in found) for t in truth)


def test_groups_recall_at_least_dlib_direct(pipe, direct, data_dir):
    folder = data_dir / "groups/dlib_faces"
    truth = {**_truth_boxes(folder / "training.xml"), **_truth_boxes(folder / "testing.xml")}
    ours = theirs = total = 0
    for name, boxes in truth.items():
        data = (folder / name).read_bytes()
        found = [(f.left, f.top, f.right, f.bottom) for f in pipe.process_bytes(data).faces]
        rgb = decode_image(data, DEFAULT_MAX_PIXELS)
        direct_found = [(r.left(), r.top(), r.right(), r.bottom()) for r in direct[0](rgb, 1)]
        ours += matched_truth(boxes, found)
        theirs += matched_truth(boxes, direct_found)
        total += len(boxes)
    assert total > 40 and ours >= theirs > 0


def test_process_shard_accounts_for_every_ref(pipe, data_dir, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    refs = [ImageRef(str(data_dir / PHOTOS[0]), 1), ImageRef(str(tmp_path / "bad.jpg"), 4),
            ImageRef(str(tmp_path / "gone.jpg"), 0, list_error="unreadable: No such file or directory")]
    images, faces = pipe.process_shard(refs, "s1")
    assert images.column("status").to_pylist() == ["ok", "error", "error"]
    n = images.column("n_faces").to_pylist()[0]
    assert n >= 2 and images.column("n_faces").to_pylist()[1:] == [0, 0]
    assert faces.num_rows == n and set(faces.column("shard").to_pylist()) == {"s1"}
    assert faces.schema.field("embedding").type.list_size == 128


def test_shard_batches_give_each_photo_its_own_faces(data_dir):
    """process_shard detects up to 8 small photos per pass (fewer when the next is not decoded
    yet), a large one alone, and embeds full batches that split photos' faces between them: each
    photo's faces and descriptors are those it gets alone (process_bytes)."""
    model = FaceModel(ModelConfig())
    model.embedder.batch_size = 16   # batches of 16 faces across photos, the last one's split between two
    rels = ([f"lfw/images/Jacques_Chirac/Jacques_Chirac_{i:04d}.jpg" for i in range(1, 12)]
            + ["groups/dlib_faces/2008_002470.jpg", "no_face/dogs.jpg", "groups/faceapi_bbt/bbt4.jpg"])
    passes, embeds = [], []
    run, embed = model.detector.faces, model.embedder.embed
    model.detector.faces = lambda images, *a: passes.append([im.shape for im in images]) or run(images, *a)
    model.embedder.embed = lambda chips: embeds.append(len(chips)) or embed(chips)
    images, faces = model.process_shard([ImageRef(str(data_dir / r), 1) for r in rels], "s")
    # dogs.jpg (900 x 916: over BATCH_PIXELS) goes alone; the others in passes of up to 8
    assert sum(map(len, passes)) == len(rels) and max(map(len, passes)) <= 8
    assert [(916, 900, 3)] in passes and sum((916, 900, 3) in p for p in passes) == 1
    assert len(embeds) >= 2 and embeds[:-1] == [16] * (len(embeds) - 1) and sum(embeds) == faces.num_rows
    by_uri = {}
    for row in faces.to_pylist():
        by_uri.setdefault(row["uri"], []).append(row)
    for r in rels:
        alone = model.process_bytes((data_dir / r).read_bytes()).faces
        got = by_uri.get(str(data_dir / r), [])
        assert [(f["left"], f["top"], f["right"], f["bottom"], f["landmarks"]) for f in got] == \
            [(*f.box.edges, f.landmarks.reshape(-1).tolist()) for f in alone]
        for f, g in zip(alone, got):
            assert np.abs(f.embedding - np.asarray(g["embedding"])).max() <= 1e-5
