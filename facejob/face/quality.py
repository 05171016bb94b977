"""A simple per-face quality in [0, 1] from the face's size and the sharpness of its chip.

    sharpness = variance of the 4-neighbour Laplacian of the 150x150 chip's grey levels
    quality   = min(1, shorter_side / FULL_SIZE_PX) * min(1, sharpness / FULL_SHARPNESS)

A face of 40 px or more (the smallest HOG finds at upsample 1) with a sharp chip scores 1; the
reducer's default floor 0.5 (`facejob reduce --min-quality`) leaves out faces under 20 px and
chips with sharpness under 10 (a 20 px face blown up to 150 px, or a blurred one). On LFW the
median chip sharpness is ~70 and the 5th percentile ~15. The detector score is stored beside it
(`det_score`) but not mixed in: HOG, CNN and RetinaFace scores are on different scales.
"""
from __future__ import annotations

import numpy as np

FULL_SIZE_PX = 40
FULL_SHARPNESS = 20.0
GREY = np.array([0.299, 0.587, 0.114], np.float32)


def sharpness(chips: np.ndarray) -> np.ndarray:
    """(n,) variance of the Laplacian of each (n, H, W, 3) uint8 chip's grey image."""
    if len(chips) == 0:
        return np.zeros(0, np.float32)
    g = chips.astype(np.float32) @ GREY
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * g[:, 1:-1, 1:-1]
    return lap.reshape(len(chips), -1).var(axis=1).astype(np.float32)


def quality(shorter_side: np.ndarray, sharp: np.ndarray) -> np.ndarray:
    """(n,) quality in [0, 1] (see the module docstring)."""
    size = np.minimum(1.0, np.asarray(shorter_side, np.float32) / FULL_SIZE_PX)
    return (size * np.minimum(1.0, np.asarray(sharp, np.float32) / FULL_SHARPNESS)).astype(np.float32)
