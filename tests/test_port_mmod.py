"""The PyTorch MMOD face detector, checked against dlib's own CNN detector on real photos."""
from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest
import torch
from PIL import Image

from facejob.face.detect import Detection, DlibCnnDetector
from facejob.face.dlibport.geometry import round_half_away, round_rect
from facejob.face.dlibport.mmod import (
    TorchCnnDetector, nms, pyramid_up_size, rect_down, resize_like_dlib,
    tiled_pyramid_layout,
)

# ---------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("seed", range(4))
def test_resize_bit_exact_with_dlib(seed):
    """Both of dlib's bilinear paths: float planes (pyramid levels) and RGB uint8 (pyramid_up)."""
    rng = np.random.default_rng(seed)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(2, 300, size=2))
        for oh, ow in [(h * 5 // 6, w * 5 // 6), pyramid_up_size(h, w),
                       tuple(int(v) for v in rng.integers(2, 400, size=2))]:
            if oh < 2 or ow < 2:
                continue
            plane = rng.random((h, w), dtype=np.float32) - 0.5
            got = resize_like_dlib(torch.from_numpy(plane)[None, None], oh, ow)[0, 0].numpy()
            np.testing.assert_array_equal(got, dlib.resize_image(plane, oh, ow))
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            planes = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
            got = resize_like_dlib(planes, oh, ow, rgb_uint8=True)[0].permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(got.astype(np.uint8), dlib.resize_image(rgb, oh, ow))


def test_rounding_matches_dlib_drectangle():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.arange(-20, 20, 0.5), rng.uniform(-500, 500, 2000)])
    for v in values.tolist():
        assert round_half_away(v) == dlib.rectangle(dlib.drectangle(v, 0, 1000, 1000)).left(), v
    for v in (-4.5, -0.5, 0.5, 2.5):  # the chip port rounds with the same rule (it used floor(v + .5))
        r = dlib.rectangle(dlib.drectangle(v, v - 1, v + 10, v + 11))
        assert round_rect(v, v - 1, v + 10, v + 11) == (r.left(), r.top(), r.right(), r.bottom())


def test_tiled_layout_levels_fit_and_do_not_overlap():
    for nr, nc in [(375, 500), (500, 375), (1588, 2280), (40, 1000), (1000, 40), (6, 6)]:
        rects, rows, cols = tiled_pyramid_layout(nr, nc, 10, 11)
        assert rects[0] == (11, 11, 11 + nc - 1, 11 + nr - 1)
        assert cols == nc + 22
        h, w = nr, nc
        for i, (l, t, r, b) in enumerate(rects):
            assert (b - t + 1, r - l + 1) == (h, w)  # each level is floor(5/6) of the previous
            assert 0 <= l and 0 <= t and r < cols and b < rows
            for other in rects[:i]:
                assert r < other[0] or other[2] < l or b < other[1] or other[3] < t
            h, w = int(h * 5 / 6), int(w * 5 / 6)
        assert len(rects) > 1 or min(nr, nc) < 7


def test_nms_uses_enclosing_box_overlap():
    a, b = (0, 0, 79, 79), (40, 0, 119, 79)  # intersection 40x80, enclosing box 120x80: 0.333
    assert nms([(a, 2.0), (b, 1.0)], 0.3382761351109955, 1.0) == [(a, 2.0), (b, 1.0)]
    c = (30, 0, 109, 79)  # 50x80 over 110x80 = 0.45: suppressed
    assert nms([(a, 2.0), (c, 1.0)], 0.3382761351109955, 1.0) == [(a, 2.0)]
    assert rect_down((10, 20, 330, 340), 1) == (4, 9, 164, 169)


# ---------------------------------------------------------------------------- against dlib


def _load(data_dir: Path, rel: str, scale: float = 1.0) -> np.ndarray:
    img = Image.open(data_dir / rel).convert("RGB")
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).copy()


def _iou(a: Detection, b: Detection) -> float:
    iw = min(a.right, b.right) - max(a.left, b.left) + 1
    ih = min(a.bottom, b.bottom) - max(a.top, b.top) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    area = lambda d: (d.right - d.left + 1) * (d.bottom - d.top + 1)  # noqa: E731
    return iw * ih / (area(a) + area(b) - iw * ih)


def _assert_same(ref: list[Detection], got: list[Detection]) -> None:
    assert len(got) == len(ref), (ref, got)
    for r in ref:
        best = max(got, key=lambda g: _iou(r, g))
        assert _iou(r, best) >= 0.95, (r, best)
        assert abs(r.score - best.score) <= 1e-3, (r, best)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread, as in a Ray worker (OMP_NUM_THREADS=1): on a shared 2-core machine
    torch's 2-thread barriers stall behind other processes and run several times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def torch_det() -> TorchCnnDetector:
    return TorchCnnDetector("cpu")


# (photo, downscale to keep dlib's CPU CNN fast, upsample)
CASES = [
    ("groups/dlib_faces/2008_001322.jpg", 1.0, 0),
    ("groups/misc/selfie-many-people.jpg", 1.0, 0),  # a box at x = -4.5 in the tensor: rounding
    ("groups/faceapi_bbt/bbt4.jpg", 0.5, 1),  # small faces only found after pyramid_up
]


@pytest.mark.parametrize("rel,scale,upsample", CASES)
def test_boxes_match_dlib_cnn(data_dir, torch_det, rel, scale, upsample):
    img = _load(data_dir, rel, scale)
    ref = DlibCnnDetector().detect([img], upsample)[0]
    got = torch_det.detect([img], upsample)[0]
    assert ref, "the case must have faces, or it tests nothing"
    _assert_same(ref, got)
    # in practice the boxes are identical, not just close
    assert [(d.left, d.top, d.right, d.bottom) for d in got] == \
        [(d.left, d.top, d.right, d.bottom) for d in ref]


def test_no_face_photo_gives_none(data_dir, torch_det):
    img = _load(data_dir, "no_face/park.jpg")
    assert DlibCnnDetector().detect([img], 0)[0] == []
    assert torch_det.detect([img], 0)[0] == []
    flat = np.full((300, 400, 3), 128, np.uint8)
    assert torch_det.detect([flat], 1)[0] == []


def test_batch_of_mixed_sizes_equals_one_at_a_time(data_dir):
    images = [
        _load(data_dir, "groups/dlib_faces/2008_001322.jpg", 0.8),  # 400x300
        _load(data_dir, "groups/faceapi_bbt/bbt4.jpg", 0.6),
        _load(data_dir, "groups/dlib_faces/2008_001322.jpg", 0.8),  # same size as the first
        _load(data_dir, "no_face/park.jpg", 0.5),
        _load(data_dir, "groups/dlib_faces/2009_004587.jpg", 0.7),
    ]
    assert len({im.shape for im in images}) == 4
    one = TorchCnnDetector("cpu", batch_size=1)
    batched = TorchCnnDetector("cpu")
    batched.max_padding = 10.0  # all five zero-padded into one pass
    tiny_budget = TorchCnnDetector("cpu")
    tiny_budget.max_padding = 10.0
    tiny_budget.pixel_budget = 1_500_000  # several passes of 1-2 images
    default = TorchCnnDetector("cpu")  # on CPU: only the two equal-sized images share a pass
    def passes(det: TorchCnnDetector) -> list[int]:
        jobs = [det._plan(i, im, 0) for i, im in enumerate(images)]
        return sorted(len(b) for b in det._batches(jobs))

    assert passes(batched) == [5]
    assert passes(default) == [1, 1, 1, 2]
    assert len(passes(tiny_budget)) >= 3
    for upsample in (0, 1):
        singles = one.detect(images, upsample)
        assert sum(len(s) for s in singles) >= (2 if upsample == 0 else 8)
        for other in (batched.detect(images, upsample), tiny_budget.detect(images, upsample),
                      default.detect(images, upsample)):
            assert len(other) == len(singles)
            for a, b in zip(singles, other):
                assert [(d.left, d.top, d.right, d.bottom) for d in a] == \
                    [(d.left, d.top, d.right, d.bottom) for d in b]
                np.testing.assert_allclose([d.score for d in a], [d.score for d in b], atol=1e-5)


def test_grayscale_and_empty_input(torch_det, data_dir):
    img = _load(data_dir, "groups/dlib_faces/2008_001322.jpg")
    gray = img[:, :, 1].copy()
    as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    assert torch_det.detect([gray], 0) == torch_det.detect([as_rgb], 0)
    assert torch_det.detect([], 0) == []
    assert torch_det.detect([np.zeros((3, 3, 3), np.uint8)], 0) == [[]]
