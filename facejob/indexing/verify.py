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


def subject(model: FaceModel, uri: str, face: int | None = None, flag: str = "--face") -> FaceRecord:
    """The face of the photo at `uri` numbered `face` (face_idx order, as `index` stores them),
    else its main face (see pipeline.main_face). NoFaceError lists the faces to pick from."""
    result = model.process_bytes(read_bytes(source_uri(uri)))
    if result.error:
        raise NoFaceError(f"{uri}: {result.error}")
    if face is not None:
        if not 0 <= face < len(result.faces):
            raise NoFaceError(f"{uri}: {flag} {face} is not a face of it ({_faces(result.faces)})")
        return result.faces[face]
    i = main_face([f.area for f in result.faces])
    if i is None:
        if not result.faces:
            raise NoFaceError(f"{uri}: no face found")
        raise NoFaceError(f"{uri}: {len(result.faces)} faces, none clearly the main one; pick one with "
                          f"{flag} N ({_faces(result.faces)})")
    return result.faces[i]


def _faces(faces: list[FaceRecord]) -> str:
    """'0 at (l, t, r, b), 1 at ...': the faces a user may pick, in face_idx order."""
    return ", ".join(f"{f.face_idx} at ({f.left}, {f.top}, {f.right}, {f.bottom})" for f in faces) or "it has none"


def verify(photo_a: str, photo_b: str, threshold: float = DEFAULT_THRESHOLD,
           config: ModelConfig | None = None, face_a: int | None = None, face_b: int | None = None) -> Verdict:
    """Distance between a face of each photo (face_a/face_b: its face_idx; None: the main face),
    and whether it is below `threshold`."""
    model = FaceModel.shared(config or ModelConfig())
    a = subject(model, photo_a, face_a, "--face-a")
    b = subject(model, photo_b, face_b, "--face-b")
    distance = float(np.linalg.norm(a.embedding - b.embedding))
    return Verdict(distance, distance < threshold, threshold)
