"""Step 2: landmarks and aligned 150×150 chips (dlib's shape predictor and get_face_chips)."""
from __future__ import annotations

import numpy as np

from facejob.detect import Detection
from facejob.models import model_path

CHIP_SIZE = 150
CHIP_PADDING = 0.25
# A face box this many pixels wide fills the chip's face area (CHIP_SIZE without its padding) at
# 1:1; smaller faces are upsampled into the chip, so landmarks and chips are taken from pixels where
# the face is at least this large whenever the photo has them.
CHIP_FACE_PX = round(CHIP_SIZE / (1 + 2 * CHIP_PADDING))


class Aligner:
    """Finds 5 or 68 landmarks per face box and cuts the aligned chip the recogniser expects."""

    def __init__(self, n_landmarks: int = 5) -> None:
        import dlib

        self._dlib = dlib
        self.n_landmarks = n_landmarks
        name = "landmarks5" if n_landmarks == 5 else "landmarks68"
        self._predictor = dlib.shape_predictor(str(model_path(name)))

    def landmarks(self, image: np.ndarray, faces: list[Detection]) -> list:
        """dlib full_object_detections, one per face box."""
        rect = self._dlib.rectangle
        return [self._predictor(image, rect(f.left, f.top, f.right, f.bottom)) for f in faces]

    def chips(self, image: np.ndarray, shapes: list) -> np.ndarray:
        """(n, 150, 150, 3) uint8 chips, exactly as dlib.get_face_chip cuts each face.

        One face at a time on purpose: dlib.get_face_chips on several faces builds one shared
        pyramid for large faces, so a chip (and its descriptor, by up to 0.004) would depend on
        which other faces share the photo. Per face it equals compute_face_descriptor(img, shape).
        """
        if not shapes:
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        return np.stack([np.asarray(self._dlib.get_face_chip(image, s, CHIP_SIZE, CHIP_PADDING), np.uint8)
                         for s in shapes])


def shape_points(shape) -> np.ndarray:
    """(n, 2) int32 array of a dlib full_object_detection's (x, y) points."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.int32)
