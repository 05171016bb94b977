"""Test only: a FaceModel whose worker process dies on photos with POISON in their uri, like a
decoder that segfaults on a poisoned file. Passed to the real actor pool as `model_class`."""
from __future__ import annotations

import os

from facejob.pipeline import FaceModel

POISON = "POISONED"


class CrashingFaceModel(FaceModel):
    def load(self, ref):
        if POISON in ref.uri:
            os._exit(139)
        return super().load(ref)


class BrokenFaceModel(FaceModel):
    """A model that cannot be built on any worker (say, its files are missing there)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("model files missing on this worker")
