"""Step 3: 128-d face descriptors from aligned chips (dlib's ResNet, or its batched torch port).

Backends are picked by name in facejob.face.backends.EMBEDDERS; flip TTA is `embed_chips`, the same
for every backend.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from facejob.face.model_files import model_path
from facejob.contract.schema import EMBEDDING_DIM


class Embedder(Protocol):
    name: str

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 RGB chips → (n, 128) float32 descriptors."""
        ...


class DlibEmbedder:
    """The reference: dlib's own compute_face_descriptor, no jitter."""

    name = "dlib-resnet"

    def __init__(self) -> None:
        import dlib

        self._net = dlib.face_recognition_model_v1(str(model_path("resnet")))

    def embed(self, chips: np.ndarray) -> np.ndarray:
        if len(chips) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        out = self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.array([np.asarray(d) for d in out], dtype=np.float32).reshape(len(chips), EMBEDDING_DIM)


def embed_chips(embedder: Embedder, chips: np.ndarray, tta: str = "none") -> np.ndarray:
    """Descriptors of `chips`; with tta="flip" each is the mean of the chip's and its mirror's
    (the two halves go through the network in one batch)."""
    if tta != "flip" or len(chips) == 0:
        return embedder.embed(chips)
    both = embedder.embed(np.concatenate([chips, np.ascontiguousarray(chips[:, :, ::-1])]))
    return (both[:len(chips)] + both[len(chips):]) / 2
