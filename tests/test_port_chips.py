"""The numpy chip extraction against dlib.get_face_chips, on real photos and real landmarks.

Covers the three paths of dlib's extract_image_chips: plain bilinear sampling (small faces),
the pyramid_down<2> path (a photo upscaled so faces are big) including the crop shared by all
faces of one call, and the black border where a chip leaves the image.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facejob.face.dlibport.chips import (
    PARTS68,
    chip_details,
    extract_chips,
    pyramid_down2,
)
from facejob.face.model_files import model_path

dlib = pytest.importorskip("dlib")

LABELLED = [
    "labelled/dlib_johns/John_Salley/000186_02159346.jpg",
    "labelled/five_celebrity/train/Madonna/9.jpg",
    "labelled/fr_knn/test/kit_with_rose.jpg",
]
GROUPS = [  # many small faces
    "groups/dlib_faces/2008_002506.jpg",
    "groups/misc/selfie-many-people.jpg",
]


@pytest.fixture(scope="module")
def models():
    return {
        "detector": dlib.get_frontal_face_detector(),
        5: dlib.shape_predictor(str(model_path("landmarks5"))),
        68: dlib.shape_predictor(str(model_path("landmarks68"))),
    }


def load(data_dir: Path, rel: str, upscale: int = 1) -> np.ndarray:
    img = Image.open(data_dir / rel).convert("RGB")
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.BILINEAR)
    return np.asarray(img)


def faces(models, img: np.ndarray, points: int, upscale_rects: int = 1, small: np.ndarray | None = None):
    """dlib shapes and (n, 2) landmark arrays of the faces in img. With ``small``, detect there
    (cheaper) and scale the boxes up by ``upscale_rects`` before predicting landmarks on img."""
    rects = models["detector"](img if small is None else small, 1)
    k = upscale_rects
    rects = [dlib.rectangle(r.left() * k, r.top() * k, r.right() * k, r.bottom() * k) for r in rects]
    shapes = dlib.full_object_detections([models[points](img, r) for r in rects])
    return shapes, [np.array([[p.x, p.y] for p in s.parts()]) for s in shapes]


# The x86-64 dlib-bin wheel does plain SSE/AVX double arithmetic (no FMA), which the port
# reproduces bit for bit; a build that fuses multiply-adds could flip a grey level here and there.
EXACT = platform.machine().lower() in ("x86_64", "amd64")


def assert_same_chips(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    equal = (ours == theirs).all(-1).mean()
    assert equal >= 0.999, f"only {equal:.4%} of pixels equal"
    assert np.abs(ours.astype(int) - theirs).max() <= 1
    if EXACT:
        assert equal == 1.0, f"{equal:.4%} of pixels equal (want all)"


@pytest.mark.parametrize("points", [5, 68])
def test_chips_equal_dlib_on_photos(data_dir, models, points):
    n = 0
    for rel in LABELLED + GROUPS:
        img = load(data_dir, rel)
        shapes, lms = faces(models, img, points)
        if not lms:
            continue
        n += len(lms)
        assert_same_chips(extract_chips(img, lms), np.stack(dlib.get_face_chips(img, shapes)))
    assert n >= 10, "too few faces found to say anything"


@pytest.mark.parametrize("points", [5, 68])
def test_chip_details_bit_exact(data_dir, models, points):
    img = load(data_dir, GROUPS[0])
    shapes, lms = faces(models, img, points)
    assert lms
    for s, lm in zip(shapes, lms):
        ref = dlib.get_face_chip_details(s, 150, 0.25)
        ours = chip_details(lm, 150, 0.25)
        assert (ours.left, ours.top, ours.right, ours.bottom, ours.angle) == (
            ref.rect.left(), ref.rect.top(), ref.rect.right(), ref.rect.bottom(), ref.angle)
        assert (ours.rows, ours.cols) == (ref.rows, ref.cols) == (150, 150)


def test_68_points_use_dlib_subset():
    # eyes (36-47), nose (27-35), outer and inner upper lip (48-54, 60-64)
    assert PARTS68 == list(range(27, 55)) + list(range(60, 65))


def test_big_faces_take_the_pyramid_path(data_dir, models):
    """A labelled photo upscaled 4×: the chip rect is ~600 px, so dlib shrinks it twice first."""
    img = load(data_dir, LABELLED[0], upscale=4)
    small = load(data_dir, LABELLED[0])
    for points in (5, 68):
        shapes, lms = faces(models, img, points, upscale_rects=4, small=small)
        assert lms
        side = chip_details(lms[0]).right - chip_details(lms[0]).left
        assert side > 4 * 150, "face not big enough to need two pyramid levels"
        assert_same_chips(extract_chips(img, lms), np.stack(dlib.get_face_chips(img, shapes)))


def test_big_faces_share_one_pyramid_crop(data_dir, models):
    """dlib builds one pyramid over the crop around all faces of the call, which shifts the
    pyramid phase of each face; cutting the faces one by one gives other pixels."""
    rel = "groups/misc/two_people.jpg"
    small = load(data_dir, rel)
    img = load(data_dir, rel, upscale=3)
    shapes, lms = faces(models, img, 68, upscale_rects=3, small=small)
    assert len(lms) == 2
    together = np.stack(dlib.get_face_chips(img, shapes))
    alone = np.stack([dlib.get_face_chip(img, s) for s in shapes])
    assert (together != alone).any(), "test photo no longer shows the shared-crop effect"
    assert_same_chips(extract_chips(img, lms), together)
    assert_same_chips(np.concatenate([extract_chips(img, [lm]) for lm in lms]), alone)


def test_faces_at_the_border_get_black(data_dir, models):
    """Crop a photo through the face: the chip runs off the image and dlib fills black."""
    full = load(data_dir, LABELLED[2])
    rect = models["detector"](full, 1)[0]
    for cut in ("left", "top"):
        if cut == "left":
            img = np.ascontiguousarray(full[:, rect.left() + rect.width() // 5:])
        else:
            img = np.ascontiguousarray(full[rect.top() + rect.height() // 6:])
        shapes, lms = faces(models, img, 5)
        assert lms, f"no face found after cutting at the {cut}"
        theirs = np.stack(dlib.get_face_chips(img, shapes))
        assert (theirs.max(-1) == 0).mean() > 0.05, "chip does not leave the image"
        assert_same_chips(extract_chips(img, lms), theirs)


def test_other_sizes_and_paddings(data_dir, models):
    img = load(data_dir, GROUPS[0])
    shapes, lms = faces(models, img, 5)
    for size, padding in ((200, 0.1), (100, 0.33), (151, 0.0)):
        theirs = np.stack(dlib.get_face_chips(img, shapes, size, padding))
        assert_same_chips(extract_chips(img, lms, size, padding), theirs)


def test_no_faces_gives_empty_batch():
    img = np.zeros((40, 50, 3), np.uint8)
    out = extract_chips(img, [])
    assert out.shape == (0, 150, 150, 3) and out.dtype == np.uint8


def test_rejects_bad_inputs():
    img = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError):
        extract_chips(img.astype(np.float32), [np.zeros((5, 2), int)])
    with pytest.raises(ValueError):
        extract_chips(img, [np.zeros((7, 2), int)])


@pytest.mark.parametrize("shape", [(9, 9), (10, 13), (57, 40), (301, 402), (8, 20), (20, 7)])
def test_pyramid_down2_equals_dlib(shape):
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    theirs = dlib.pyramid_down(2)(img)
    ours = pyramid_down2(img)
    assert ours.shape == theirs.shape
    assert (ours == theirs).all()


def test_descriptors_match_dlib_path(data_dir, models):
    """dlib's own descriptor of our chips against compute_face_descriptor from landmarks:
    small faces, a big (pyramid) face and a border face; at most 8 faces (0.1 s each)."""
    rec = dlib.face_recognition_model_v1(str(model_path("resnet")))
    cases = []
    img = load(data_dir, GROUPS[0])
    shapes, lms = faces(models, img, 5)
    cases.append((img, shapes[:3], lms[:3]))
    small = load(data_dir, LABELLED[0])
    img = load(data_dir, LABELLED[0], upscale=4)
    shapes, lms = faces(models, img, 5, upscale_rects=4, small=small)
    cases.append((img, shapes, lms))
    full = load(data_dir, LABELLED[2])
    rect = models["detector"](full, 1)[0]
    img = np.ascontiguousarray(full[:, rect.left() + rect.width() // 5:])
    shapes, lms = faces(models, img, 68)
    cases.append((img, shapes, lms))
    n = 0
    for img, shapes, lms in cases:
        assert lms
        theirs = np.array(rec.compute_face_descriptor(img, dlib.full_object_detections(list(shapes))))
        ours = np.array(rec.compute_face_descriptor(list(extract_chips(img, lms))))
        dist = np.linalg.norm(theirs - ours, axis=1)
        assert dist.max() <= 1e-4, dist
        n += len(lms)
    assert 3 <= n <= 8
