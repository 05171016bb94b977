"""Perceptual hash of a photo: 64-bit DCT pHash, for finding re-encoded, resized and lightly
cropped copies of photos without faces (no descriptors to compare there).

The photo is reduced to 32x32 grey, transformed by a 2-D DCT, and each of the 8x8 lowest
frequencies becomes one bit: above or below their median (as imagehash.phash does). Copies differ in a few bits; different photos in about 32.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIZE = 8
_SIDE = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    return m * np.sqrt(2 / n)


_DCT = _dct_matrix(_SIDE)


def phash(rgb: np.ndarray) -> int:
    """The 64-bit pHash of an (h, w, 3) uint8 RGB image, as a signed int64 (Parquet's int64)."""
    grey = Image.fromarray(rgb).convert("L").resize((_SIDE, _SIDE), Image.BOX)
    coeffs = _DCT @ np.asarray(grey, np.float64) @ _DCT.T
    low = coeffs[:HASH_SIZE, :HASH_SIZE].reshape(-1)
    bits = low > np.median(low)
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bits that differ between int64 hashes (broadcasting)."""
    x = np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64)).view(np.uint64)
    return np.unpackbits(np.atleast_1d(x).view(np.uint8).reshape(*np.shape(np.atleast_1d(x)), 8), axis=-1).sum(-1)
