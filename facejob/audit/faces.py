"""The faces under attack, found by the same code `facejob index` runs.

`load_model` and `photo_faces` are the one place the audit touches the indexing pipeline
(decode → detect → landmarks → chip → embed): the clean faces and the transfer case's perturbed
photos both go through them, so the audit measures what the archive would actually store.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facejob.config import DEFAULT_MAX_PIXELS, ModelConfig
from facejob.image.decode import decode_image
from facejob.face.detect import Detection, box_iou
from facejob.face.dlibport.chips import extract_chips
from facejob.indexing.pipeline import FaceModel, FaceRecord
from facejob.io.sources import read_bytes

from .pairs import FaceRef


def load_model(config: ModelConfig, max_pixels: int = DEFAULT_MAX_PIXELS) -> FaceModel:
    """The indexing pipeline's models (detector, landmarks, recogniser), loaded once."""
    return FaceModel(config, max_pixels)


def photo_faces(model: FaceModel, data: bytes) -> list[FaceRecord]:
    """Every face the indexing pipeline finds in a photo's bytes, with its descriptor
    (none when the photo cannot be decoded)."""
    return model.process_bytes(data).faces


@dataclass
class AuditFace:
    """A face as the index stores it, plus what the attacks need: the decoded photo and its chip."""

    uri: str
    image: np.ndarray        # (H, W, 3) uint8 RGB, upright
    box: Detection
    landmarks: np.ndarray    # (5|68, 2) int32
    chip: np.ndarray         # (150, 150, 3) uint8, exactly the chip the recogniser saw
    embedding: np.ndarray    # (128,) float32, the pipeline's descriptor



def box_of(face: FaceRecord | Detection) -> tuple[int, int, int, int]:
    return (face.left, face.top, face.right, face.bottom)


def pick(faces: list[FaceRecord], box: tuple[int, int, int, int] | None, shape: tuple[int, ...],
         min_iou: float = 0.5) -> FaceRecord | None:
    """The face meant by `box` (best overlap, at least `min_iou`), or without a box the face
    nearest the centre of an image of `shape`."""
    if not faces:
        return None
    if box is None:
        cy, cx = shape[0] / 2, shape[1] / 2
        return min(faces, key=lambda f: ((f.left + f.right) / 2 - cx) ** 2 + ((f.top + f.bottom) / 2 - cy) ** 2)
    best = max(faces, key=lambda f: box_iou(box_of(f), box))
    return best if box_iou(box_of(best), box) >= min_iou else None


def load_face(model: FaceModel, ref: FaceRef) -> AuditFace | None:
    """The face `ref` means, through the indexing pipeline; None if the photo has no such face."""
    data = read_bytes(ref.uri)
    face = None
    faces = photo_faces(model, data)
    if faces:
        image = decode_image(data, model.max_pixels)
        face = pick(faces, ref.box, image.shape)
    if face is None:
        return None
    # The pipeline cuts each face alone with dlib.get_face_chip; the numpy port gives the same pixels.
    chip = extract_chips(image, [face.landmarks])[0]
    return AuditFace(ref.uri, image, face.box, face.landmarks, chip, face.embedding)
