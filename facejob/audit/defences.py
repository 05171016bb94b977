"""Cheap defences an archive could apply to every chip before embedding it, and their descriptors.

A defence is applied to both sides of a pair (the archive would process every face the same
way): "none" (the plain recogniser), "jpeg" (re-compress the chip, quality 75), "flip" (average
with the mirrored chip's descriptor, `--tta flip`), "jitter" (re-cut the chip with each corner
moved by up to a few pixels, resampled bilinearly). "transfer" is not a chip transform: the
perturbed full photo goes through the indexing pipeline (see facejob.audit.run).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from facejob.face.dlibport.resnet import TorchEmbedder
from facejob.face.embed import embed_chips

from .config import CHIP_DEFENCES

def jpeg(chips: np.ndarray, quality: int) -> np.ndarray:
    """Each chip JPEG-encoded at `quality` and decoded again."""
    out = np.empty_like(chips)
    for i, c in enumerate(chips):
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def jitter_boxes(n: int, px: int, seed: int, size: int = 150) -> np.ndarray:
    """(n, 4) crop boxes (x0, y0, x1, y1): the chip's own box with each corner coordinate moved by
    a uniform amount in [-px, px]. Drawn from `seed` alone, so a pair's clean and attacked
    probes are cut the same way and the comparison is paired."""
    rng = np.random.default_rng(seed)
    return np.array([0, 0, size, size], float) + rng.uniform(-px, px, (n, 4))


def jitter(chips: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each chip re-cut from `boxes[i]` and scaled back to its size (bilinear; black outside)."""
    out = np.empty_like(chips)
    for i, (c, box) in enumerate(zip(chips, boxes)):
        img = Image.fromarray(c)
        out[i] = np.asarray(img.transform(img.size, Image.Transform.EXTENT, tuple(box), Image.Resampling.BILINEAR))
    return out


class Defended:
    """Descriptors of chips under each chip defence."""

    def __init__(self, plain: TorchEmbedder, jpeg_quality: int, jitter_px: int) -> None:
        self.plain = plain
        self.jpeg_quality, self.jitter_px = jpeg_quality, jitter_px

    def embed(self, defence: str, chips: np.ndarray, seed: int) -> np.ndarray:
        """(n, 128) descriptors of (n, 150, 150, 3) uint8 chips; `seed` draws the jitter boxes."""
        if defence == "none":
            return self.plain.embed(chips)
        if defence == "jpeg":
            return self.plain.embed(jpeg(chips, self.jpeg_quality))
        if defence == "flip":
            return embed_chips(self.plain, chips, "flip")
        if defence == "jitter":
            return self.plain.embed(jitter(chips, jitter_boxes(len(chips), self.jitter_px, seed)))
        raise ValueError(f"not a chip defence: {defence!r} (one of {CHIP_DEFENCES})")
