"""Step 1: find faces. dlib's HOG detector (CPU) or its MMOD CNN (dlib, or the batched torch port);
RetinaFace lives in facejob/face/retinaface.py.

Backends are picked by name in facejob.face.backends.DETECTORS."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facejob.face.model_files import model_path


@dataclass(frozen=True)
class Detection:
    """A face box in image pixels (dlib rectangle convention: right/bottom inclusive).

    landmarks: the detector's own 5 points (x0, y0, ..., x4, y4; RetinaFace only, else None).
    predictor_box: (left, top, right, bottom) handed to dlib's shape predictor when it differs
        from the face box (RetinaFace: mapped to the dlib HOG box convention), else None.
    """

    left: int
    top: int
    right: int
    bottom: int
    score: float
    landmarks: tuple[float, ...] | None = None
    predictor_box: tuple[int, int, int, int] | None = None

    @property
    def edges(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom

    @property
    def shorter_side(self) -> int:
        return min(self.right - self.left, self.bottom - self.top) + 1


class Detector(Protocol):
    name: str

    def detect(self, images: list[np.ndarray], upsample: int) -> list[list[Detection]]:
        """Faces in each RGB uint8 image (H, W, 3), highest score first."""
        ...


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes, inclusive corners (dlib's)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if w <= 0 or h <= 0:
        return 0.0
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def _sorted(dets: list[Detection]) -> list[Detection]:
    return sorted(dets, key=lambda d: -d.score)


class HogDetector:
    """dlib's frontal face detector (HOG + linear SVM, 5 poses). Needs no model file."""

    name = "dlib-hog"

    def __init__(self) -> None:
        import dlib

        self._det = dlib.get_frontal_face_detector()

    def detect(self, images: list[np.ndarray], upsample: int) -> list[list[Detection]]:
        out = []
        for img in images:
            rects, scores, _ = self._det.run(img, upsample, 0.0)
            out.append(_sorted([Detection(r.left(), r.top(), r.right(), r.bottom(), float(s))
                                for r, s in zip(rects, scores)]))
        return out


class DlibCnnDetector:
    """dlib's MMOD CNN face detector, computed by dlib itself (`--detector cnn-dlib`; CPU only in
    the pip wheel: slow). The reference that facejob.face.dlibport.mmod.TorchCnnDetector (`cnn`) is
    tested against."""

    name = "dlib-cnn"

    def __init__(self) -> None:
        import dlib

        self._det = dlib.cnn_face_detection_model_v1(str(model_path("cnn_detector")))

    def detect(self, images: list[np.ndarray], upsample: int) -> list[list[Detection]]:
        out = []
        for img in images:
            found = self._det(img, upsample)
            out.append(_sorted([Detection(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(),
                                          float(d.confidence)) for d in found]))
        return out
