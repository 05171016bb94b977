"""Step 2: landmarks (dlib's shape predictor) and aligned 150×150 chips (facejob.face.dlibport.chips,
the bit-exact port of dlib.get_face_chip)."""
from __future__ import annotations

import numpy as np

from facejob.face.detect import Detection
from facejob.face.dlibport.chips import extract_chips
from facejob.face.model_files import model_path

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

        self._rect = dlib.rectangle
        self.n_landmarks = n_landmarks
        self._predictor = dlib.shape_predictor(str(model_path(f"landmarks{n_landmarks}")))

    def landmarks(self, image: np.ndarray, faces: list[Detection]) -> list[np.ndarray]:
        """One (n_landmarks, 2) int32 array of (x, y) points per face box (its predictor_box
        when it has one)."""
        return [np.array([(p.x, p.y) for p in self._predictor(
                    image, self._rect(*(f.predictor_box or (f.left, f.top, f.right, f.bottom)))).parts()],
                         dtype=np.int32) for f in faces]

    def chips(self, image: np.ndarray, points: list[np.ndarray]) -> np.ndarray:
        """(n, 150, 150, 3) uint8 chips, exactly as dlib.get_face_chip cuts each face.

        One face at a time on purpose: dlib.get_face_chips on several faces builds one shared
        pyramid for large faces, so a chip (and its descriptor, by up to 0.004) would depend on
        which other faces share the photo. Per face it equals compute_face_descriptor(img, shape).
        """
        if not points:
            return np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
        return np.concatenate([extract_chips(image, [p], CHIP_SIZE, CHIP_PADDING) for p in points])
