"""Test only: FaceModels passed to the real actor pool as `model_class`: one whose worker process
dies on photos with POISON in their uri (like a decoder that segfaults on a poisoned file), one
that cannot be built, one that takes its time over each photo."""
from __future__ import annotations

import os
import time

from facejob.indexing.pipeline import FaceModel

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


class SlowFaceModel(FaceModel):
    """The real model, a little slower per photo (same rows), so a shard is still running when a
    test kills its worker, however fast the machine."""

    def load(self, ref):
        time.sleep(0.3)
        return super().load(ref)
