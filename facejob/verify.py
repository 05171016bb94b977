"""Are two photos the same person? The quickest check that the models work on a machine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facejob.config import IndexConfig
from facejob.pipeline import FaceRecord, Pipeline
from facejob.sources import read_bytes, source_uri

# dlib's ResNet was trained so that two photos of one person are closer than this (Euclidean).
DEFAULT_THRESHOLD = 0.6


class NoFaceError(ValueError):
    pass


@dataclass
class Verdict:
    distance: float
    same_person: bool
    threshold: float


def largest_face(pipe: Pipeline, uri: str) -> FaceRecord:
    """The biggest face in the photo at `uri` (the subject, in a portrait)."""
    result = pipe.process_bytes(read_bytes(source_uri(uri)))
    if result.error:
        raise NoFaceError(f"{uri}: {result.error}")
    if not result.faces:
        raise NoFaceError(f"{uri}: no face found")
    return max(result.faces, key=lambda f: (f.right - f.left) * (f.bottom - f.top))


def verify(photo_a: str, photo_b: str, threshold: float = DEFAULT_THRESHOLD,
           config: IndexConfig | None = None) -> Verdict:
    """Distance between the largest faces of two photos, and whether it is below `threshold`."""
    pipe = Pipeline(config or IndexConfig())
    a, b = largest_face(pipe, photo_a), largest_face(pipe, photo_b)
    distance = float(np.linalg.norm(a.embedding - b.embedding))
    return Verdict(distance, distance < threshold, threshold)
