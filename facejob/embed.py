"""Step 3: 128-d face descriptors from aligned chips (dlib's ResNet, or its batched torch port)."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from facejob.config import IndexConfig
from facejob.models import model_path


class Embedder(Protocol):
    name: str

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 RGB chips → (n, 128) float32 descriptors."""
        ...


class DlibEmbedder:
    """The reference: dlib's own compute_face_descriptor, no jitter."""

    name = "dlib-resnet"

    def __init__(self, tta: str = "none") -> None:
        import dlib

        self._net = dlib.face_recognition_model_v1(str(model_path("resnet")))
        self.tta = tta

    def _descriptors(self, chips: np.ndarray) -> np.ndarray:
        out = self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.array([np.asarray(d) for d in out], dtype=np.float32).reshape(len(chips), 128)

    def embed(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, 128), np.float32)
        desc = self._descriptors(chips)
        if self.tta == "flip":
            desc = (desc + self._descriptors(chips[:, :, ::-1])) / 2
        return desc


def make_embedder(config: IndexConfig) -> Embedder:
    if config.embedder == "torch":
        from facejob.dlibport.resnet import TorchEmbedder

        return TorchEmbedder(device=config.device, batch_size=config.batch_size, tta=config.tta)
    return DlibEmbedder(tta=config.tta)
