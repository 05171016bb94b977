"""Step 0: bytes → RGB uint8 pixels, the way a person would see the photo.

Applies EXIF orientation, takes the first frame of animated files, converts every mode
(grey, palette, CMYK, RGBA, 16-bit) to 8-bit RGB, reads HEIC/HEIF through pillow-heif, and
refuses images whose header promises more pixels than `max_pixels` before decoding them.
Failures raise `DecodeError` whose `reason` is one of the codes below; the pipeline turns it into
the image's status row instead of failing the run.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Reason codes written (as "code: message") into the images table's `error` column.
EMPTY, UNSUPPORTED, CORRUPT, TOO_LARGE, UNREADABLE, UNAVAILABLE, CRASH = (
    "empty", "unsupported", "corrupt", "too_large", "unreadable", "unavailable", "crash")

_heif_registered = False


class DecodeError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:  # HEIC files then get an 'unsupported' status
            pass
        _heif_registered = True


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: Pillow's convert('L') clips at 255 instead of scaling, so scale ourselves.
        a = np.asarray(img, dtype=np.uint32)
        a = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, as a viewer shows them, not the arbitrary colour beneath.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode photo bytes to an (H, W, 3) uint8 RGB array, upright per EXIF orientation."""
    if not data:
        raise DecodeError(EMPTY, "zero-byte file")
    _register_heif()
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's own bomb check must not pre-empt it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        head = data[:16]
        kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary"
        raise DecodeError(UNSUPPORTED, f"not an image format facejob can read ({kind} data, first bytes {head[:8]!r})")
    except Exception as e:  # malformed headers raise all sorts of errors inside Pillow
        raise DecodeError(CORRUPT, f"cannot parse image header: {e}")
    width, height = img.size
    if width * height > max_pixels:
        raise DecodeError(TOO_LARGE, f"{width}x{height} = {width * height:,} pixels exceeds max_pixels {max_pixels:,}")
    try:
        img.seek(0)  # first frame of animated GIF/WebP/APNG/multi-page TIFF
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except DecodeError:
        raise
    except Exception as e:
        raise DecodeError(CORRUPT, f"{img.format or 'image'} data is damaged: {e}")
