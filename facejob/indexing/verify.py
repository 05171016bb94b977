"""Are two photos the same person? The quickest check that the models work on a machine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facejob.config import ModelConfig
from facejob.indexing.pipeline import FaceModel, FaceRecord, main_face
from facejob.io.sources import read_bytes, source_uri

# dlib's ResNet was trained so that two photos of one person are closer than this (Euclidean).
DEFAULT_THRESHOLD = 0.6


class NoFaceError(ValueError):
    pass


@dataclass
class Verdict:
    distance: float
    same_person: bool
    threshold: float


def subject(model: FaceModel, uri: str) -> FaceRecord:
    """The main face of the photo at `uri` (see pipeline.main_face)."""
    result = model.process_bytes(read_bytes(source_uri(uri)))
    if result.error:
        raise NoFaceError(f"{uri}: {result.error}")
    i = main_face([f.area for f in result.faces])
    if i is None:
        what = "no face found" if not result.faces else f"{len(result.faces)} faces, none clearly the main one"
        raise NoFaceError(f"{uri}: {what}")
    return result.faces[i]


def verify(photo_a: str, photo_b: str, threshold: float = DEFAULT_THRESHOLD,
           config: ModelConfig | None = None) -> Verdict:
    """Distance between the main faces of two photos, and whether it is below `threshold`."""
    model = FaceModel.shared(config or ModelConfig())
    a, b = subject(model, photo_a), subject(model, photo_b)
    distance = float(np.linalg.norm(a.embedding - b.embedding))
    return Verdict(distance, distance < threshold, threshold)
