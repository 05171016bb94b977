"""Where the dlib model files live, and loading them once per process.

The files ship in the PyPI package ``face-recognition-models``. Its ``__init__`` imports
``pkg_resources`` (gone from current setuptools), so we locate the package directory with
``importlib`` instead of importing it. Nothing is loaded at import time.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

MODEL_PACKAGE = "face_recognition_models"

FILES = {
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "cnn_detector": "mmod_human_face_detector.dat",
    "resnet": "dlib_face_recognition_resnet_model_v1.dat",
}


class ModelFilesMissing(RuntimeError):
    pass


@functools.cache
def models_dir() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(
            f"the package {MODEL_PACKAGE!r} is not installed; `pip install face-recognition-models`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_path(name: str) -> Path:
    """Path of one model file by short name: landmarks5, landmarks68, cnn_detector, resnet."""
    path = models_dir() / FILES[name]
    if not path.is_file():
        raise ModelFilesMissing(f"model file missing: {path}")
    return path
