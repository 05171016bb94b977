"""Step 0: bytes → upright 8-bit sRGB pixels, at the scale the caller needs, or a reason code.

`open_photo` reads only the header: the format, the upright size (after EXIF orientation) and the
pixel guard (`max_pixels`, checked per call before anything is decoded; Pillow's process-wide
`Image.MAX_IMAGE_PIXELS` is never touched). `Photo.level(scale)` then decodes at the smallest
scale the format offers that is at least `scale`: JPEG through libjpeg's DCT scaling
(`Image.draft`, 1/2, 1/4, 1/8), then a fast resize to the exact size; other formats decode in full
and are resized. So a 50 MP camera JPEG becomes a 1200 px working copy without ever holding 150 MB
of pixels.

Formats: everything Pillow reads, plus HEIC/HEIF (pillow-heif; a motion photo gives its still),
AVIF (Pillow's own plugin), JPEG XL (pillow-jxl-plugin) and camera raw files through LibRaw
(rawpy): the embedded preview when it is large enough (RAW_PREVIEW_MIN), else a half-size
demosaic. Every mode ends as 8-bit sRGB: high bit depths are scaled (not clipped),
transparency is composited on white, an embedded ICC profile (CMYK, Display P3, Adobe RGB...)
is converted to sRGB by LittleCMS, and HDR photos (PQ or HLG, as HEIC's nclx box declares) are
tone-mapped to sRGB. Failures raise `DecodeError` whose `reason` is one of the codes
below; the pipeline turns it into the image's status row instead of failing the run.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps

# Reason codes written (as "code: message") into the images table's `error` column.
EMPTY, UNSUPPORTED, CORRUPT, TOO_LARGE, UNREADABLE, UNAVAILABLE, CRASH = (
    "empty", "unsupported", "corrupt", "too_large", "unreadable", "unavailable", "crash")

# A raw file's embedded preview is used when its long side has at least this many pixels (the
# default working size: detection then sees as much as it would in a JPEG), or is at least as
# large as the half-size demosaic; smaller previews (thumbnails) are ignored and the raw data is
# demosaiced at half size.
RAW_PREVIEW_MIN = 1200

# File starts that LibRaw reads rather than Pillow (TIFF-based raws are tried by LibRaw first,
# and fall back to Pillow when LibRaw finds no raw data in them, i.e. for plain TIFFs).
_RAW_MAGIC = (b"II*\x00", b"MM\x00*", b"IIU\x00", b"IIRO", b"IIRS", b"MMOR", b"FUJIFILMCCD-RAW")
_CR3_BRAND = b"crx "

# EXIF orientations that swap width and height.
_TRANSPOSED = (5, 6, 7, 8)

_plugins_registered = False
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


class DecodeError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def register_plugins() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif) and JPEG XL (pillow-jxl-plugin). Missing plugins
    leave those files with an `unsupported` status instead of failing the run."""
    global _plugins_registered
    if _plugins_registered:
        return
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()   # 10/12-bit HEIC is scaled to 8 bits by default
    except ImportError:
        pass
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL opener on import)
    except ImportError:
        pass
    _plugins_registered = True


@dataclass(frozen=True)
class Level:
    """A decoded copy of a photo: (h, w, 3) uint8 sRGB pixels, upright, and its scale in level
    pixels per original pixel along x and y (1.0 = the original size)."""

    pixels: np.ndarray
    sx: float
    sy: float

    @property
    def scale(self) -> float:
        return min(self.sx, self.sy)


class Photo:
    """One photo's bytes with its header read: `width` x `height` (upright, original pixels),
    `format`; `level(scale)` decodes it at a scale."""

    def __init__(self, data: bytes, width: int, height: int, fmt: str):
        self.data, self.width, self.height, self.format = data, width, height, fmt
        # Formats without reduced decoding (all but JPEG) are decoded in full once; the decode is
        # kept while the photo is processed, so a finer level is a resize, not a second decode.
        self._full: Image.Image | None = None

    @property
    def max_scale(self) -> float:
        """The finest scale this photo can be decoded at (raw files: the half-size demosaic)."""
        return 1.0

    def level(self, scale: float) -> Level:
        """The photo decoded at the smallest scale >= `scale` its format allows, resized to `scale`
        (clamped to (0, max_scale])."""
        scale = min(max(scale, 1e-6), self.max_scale)
        try:
            im = self._full or _open_pillow(self.data)
            if self._full is None and im.format != "JPEG":
                # HEIC: FFmpeg's decode, turned upright by the file's own rotation box, when no EXIF
                # orientation is left to apply (pillow-heif clears it where that box is applied).
                fast = im.format == "HEIF" and _orientation(im) == 1
                self._full = im = (_fast_heic(self.data, self.width, self.height) if fast else None) or im
                im.seek(0)
                im.load()
            return _pillow_level(im, self.width, self.height, scale)
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError(CORRUPT, f"{self.format} data is damaged: {e}")

    def working(self, work_size: int, min_scale: float = 0.0) -> Level:
        """The working copy: long side `work_size` (0 = full size), or finer when `min_scale`
        asks for it; never above the original size."""
        scale = 1.0 if work_size <= 0 else work_size / max(self.width, self.height)
        return self.level(min(1.0, max(scale, min_scale)))


class RawPhoto(Photo):
    """A camera raw file: its embedded JPEG preview when large enough (decoded like any JPEG, DCT
    scaling included), else a half-size demosaic. Original pixels are the sensor's (LibRaw's
    output size, upright)."""

    def __init__(self, data: bytes, width: int, height: int, preview: bytes | None, preview_size: tuple[int, int],
                 flip: int):
        super().__init__(data, width, height, "RAW")
        self._preview, self._preview_size, self._flip = preview, preview_size, flip

    @property
    def max_scale(self) -> float:
        return max(self._preview_size) / max(self.width, self.height) if self._preview else 0.5

    def level(self, scale: float) -> Level:
        scale = min(max(scale, 1e-6), self.max_scale)
        try:
            if self._preview:
                im = _open_pillow(self._preview)
                pw, ph = self._preview_size
                level = _pillow_level(im, pw, ph, scale / self.max_scale)
                pixels = _upright_like(level.pixels, self.width, self.height, self._flip)
            else:
                import rawpy

                with rawpy.imread(io.BytesIO(self.data)) as raw:   # LibRaw turns it upright itself
                    # sRGB primaries (LibRaw's default output space) and the sRGB tone curve
                    # (LibRaw's default is BT.709's, a little darker).
                    rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, gamma=(2.4, 12.92))
                target = (max(1, round(self.width * scale)), max(1, round(self.height * scale)))
                im = Image.fromarray(rgb)
                pixels = rgb if im.size == target else np.asarray(_resize(im, target))
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError(CORRUPT, f"raw data is damaged: {e}")
        return Level(pixels, pixels.shape[1] / self.width, pixels.shape[0] / self.height)


def _fast_heic(data: bytes, width: int, height: int) -> Image.Image | None:
    """An HEIC photo decoded by FFmpeg (facejob/image/heif.py), upright, when it is the common case;
    else None, and pillow-heif decodes it."""
    from facejob.image import heif

    decoded = heif.decode(data)
    if decoded is None or decoded[0].shape[:2] != (height, width):
        return None
    im = Image.fromarray(decoded[0])
    if decoded[1]:
        im.info["icc_profile"] = decoded[1]
    return im


def open_photo(data: bytes, max_pixels: int) -> Photo:
    """Read the header: format, upright size, pixel guard. Decodes no pixels (except a raw file's
    embedded preview)."""
    if not data:
        raise DecodeError(EMPTY, "zero-byte file")
    register_plugins()
    raw = _open_raw(data, max_pixels) if _looks_raw(data) else None
    if raw is not None:
        return raw
    try:
        im = _open_pillow(data)
    except DecodeError:
        raise
    except Exception as e:  # malformed headers raise all sorts of errors inside Pillow
        raise DecodeError(CORRUPT, f"cannot parse image header: {e}")
    _check_pixels(im.width, im.height, max_pixels)
    w, h = im.size
    if _orientation(im) in _TRANSPOSED:
        w, h = h, w
    return Photo(data, w, h, im.format or "image")


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode photo bytes in full to an (H, W, 3) uint8 sRGB array, upright per EXIF orientation."""
    return open_photo(data, max_pixels).level(1.0).pixels


def decode_reduced(data: bytes, max_pixels: int, long_side: int) -> tuple[Photo, Level]:
    """The photo and a copy of it whose long side is about `long_side` (never above the original)."""
    photo = open_photo(data, max_pixels)
    return photo, photo.working(long_side)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DecodeError(TOO_LARGE, f"{width}x{height} = {width * height:,} pixels exceeds max_pixels {max_pixels:,}")


def _open_pillow(data: bytes) -> ImageFile.ImageFile:
    """`Image.open` without its process-wide decompression-bomb check: the plugins' header parsers
    in Pillow's own order. The caller checks its own per-call pixel limit instead, so no thread
    ever changes `Image.MAX_IMAGE_PIXELS` under another."""
    fp = io.BytesIO(data)
    prefix = data[:16]
    Image.preinit()
    for attempt in range(2):
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            ok = not accept or accept(prefix)
            if not ok or isinstance(ok, str):
                continue
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
        if attempt == 0:
            Image.init()   # the rarely used plugins, as Image.open does
    head = data[:16]
    kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary"
    raise DecodeError(UNSUPPORTED, f"not an image format facejob can read ({kind} data, first bytes {head[:8]!r})")


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a damaged EXIF block does not make the pixels unreadable
        return 1


def _pillow_level(im: ImageFile.ImageFile, width: int, height: int, scale: float) -> Level:
    """Decode a just-opened Pillow image at `scale` of its upright size (width, height)."""
    im.seek(0)  # first frame of animated GIF/WebP/APNG/multi-page TIFF
    transposed = _orientation(im) in _TRANSPOSED
    sw, sh = (height, width) if transposed else (width, height)   # stored (unrotated) size
    target = (max(1, round(sw * scale)), max(1, round(sh * scale)))
    if im.format == "JPEG" and scale < 1.0:
        # DCT scaling: libjpeg decodes straight to >= target at 1/2, 1/4 or 1/8 of the size.
        im.draft(im.mode if im.mode in ("CMYK", "L") else "RGB", target)
    icc = im.info.get("icc_profile")
    nclx = im.info.get("nclx_profile") or {}
    im.load()
    if im.size != target:
        im = _resize(im, target)
    im = ImageOps.exif_transpose(im)
    pixels = _to_srgb(im, icc)
    if nclx.get("transfer_characteristics") in (_PQ, _HLG):
        pixels = hdr_to_sdr(pixels, nclx["transfer_characteristics"], nclx.get("color_primaries", 1))
    return Level(pixels, pixels.shape[1] / width, pixels.shape[0] / height)


def _resize(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    elif im.mode not in ("RGB", "RGBA", "L", "LA", "CMYK", "I", "F"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    k = im.width // size[0]
    if k > 1 and im.size == (size[0] * k, size[1] * k):
        # An exact integer step (the finer levels of a camera photo: 1/2, 1/4): a k x k box
        # average, 6x faster than resampling 24 MP.
        return im.reduce(k)
    # reducing_gap: a box reduce by an integer factor first, then bilinear on the rest (fast).
    return im.resize(size, Image.BILINEAR, reducing_gap=2.0)


def _to_srgb(img: Image.Image, icc: bytes | None) -> np.ndarray:
    """Any Pillow mode → (h, w, 3) uint8 sRGB."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: Pillow's convert('L') clips at 255 instead of scaling, so scale ourselves.
        a = np.asarray(img, dtype=np.uint32)
        a = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if img.mode == "F":  # float grey (e.g. HDR TIFF) in 0..1
        a = (np.clip(np.asarray(img, np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas become white, as a viewer shows them, not the arbitrary colour beneath.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if icc:
        img = _icc_to_srgb(img, icc)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def _icc_to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    """Convert through the embedded profile (CMYK, Display P3, Adobe RGB...) to sRGB. A profile
    LittleCMS cannot use is ignored, as browsers do: the pixels are still a photo."""
    if img.mode not in ("RGB", "CMYK", "L"):
        return img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if img.mode == "RGB" and "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return img   # already sRGB: skip the (no-op) transform
        return ImageCms.profileToProfile(img, src, _SRGB, renderingIntent=ImageCms.Intent.PERCEPTUAL,
                                         outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img


# HDR photos (HEIC from current phones, 10-bit): code points of the nclx/CICP transfer functions.
_PQ, _HLG = 16, 18
_BT2020 = 9
REFERENCE_WHITE_NITS = 203.0   # ITU-R BT.2408: HDR graphics white = SDR white
# BT.2020 -> BT.709/sRGB primaries, in linear light.
_BT2020_TO_709 = np.array([[1.6605, -0.5876, -0.0728], [-0.1246, 1.1329, -0.0083], [-0.0182, -0.1006, 1.1187]],
                          np.float32)


def hdr_to_sdr(pixels: np.ndarray, transfer: int, primaries: int) -> np.ndarray:
    """PQ or HLG coded 8-bit RGB → sRGB: to light (nits), BT.2020 primaries to sRGB's, reference
    white (203 nits) to SDR white, highlights above 80 % of it rolled off smoothly (not clipped),
    then the sRGB curve. Decoders hand over the code values as they are; shown as sRGB they look
    washed out and grey, which is not the photo a person sees."""
    v = np.arange(256, dtype=np.float64) / 255
    if transfer == _PQ:
        m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
        e = v ** (1 / m2)
        nits = 10000 * (np.maximum(e - c1, 0) / (c2 - c3 * e)) ** (1 / m1)
    else:  # HLG inverse OETF, then the reference display's OOTF (1000 nits, gamma 1.2; per channel)
        a, b, c = 0.17883277, 0.28466892, 0.55991073
        scene = np.where(v <= 0.5, v * v / 3, (np.exp((v - c) / a) + b) / 12)
        nits = 1000 * scene ** 1.2
    lut = (nits / REFERENCE_WHITE_NITS).astype(np.float32)
    x = lut[pixels]
    if primaries == _BT2020:
        x = x @ _BT2020_TO_709.T
    knee = 0.8
    x = np.clip(x, 0, None)
    x = np.where(x <= knee, x, knee + (1 - knee) * (1 - np.exp(-(x - knee) / (1 - knee))))
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return (np.clip(srgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def _looks_raw(data: bytes) -> bool:
    return data.startswith(_RAW_MAGIC) or (data[4:8] == b"ftyp" and data[8:12] == _CR3_BRAND)


def _open_raw(data: bytes, max_pixels: int) -> RawPhoto | None:
    """A RawPhoto if LibRaw finds raw sensor data in the file; None for a plain TIFF (Pillow's)."""
    try:
        import rawpy
    except ImportError:
        return None
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except rawpy.LibRawFileUnsupportedError:
        return None
    except Exception as e:
        raise DecodeError(CORRUPT, f"cannot parse raw header: {e}")
    with raw:
        s = raw.sizes
        w, h = (s.height, s.width) if s.flip in (5, 6) else (s.width, s.height)
        _check_pixels(w, h, max_pixels)
        preview, size = _raw_preview(raw, w, h)
    return RawPhoto(data, w, h, preview, size, s.flip)


def _raw_preview(raw, width: int, height: int) -> tuple[bytes | None, tuple[int, int]]:
    """The embedded JPEG preview and its size after its own EXIF orientation, if it is large enough and shows the whole
    frame; else (None, (0, 0))."""
    import rawpy

    none: tuple[bytes | None, tuple[int, int]] = (None, (0, 0))
    try:
        thumb = raw.extract_thumb()
        if thumb.format != rawpy.ThumbFormat.JPEG:
            return none
        im = _open_pillow(thumb.data)
        pw, ph = im.size
        if _orientation(im) in _TRANSPOSED:
            pw, ph = ph, pw
    except Exception:  # no preview, or a broken one: the raw data may still be fine
        return none
    uw, uh = (ph, pw) if (pw > ph) != (width > height) and width != height else (pw, ph)  # see _upright_like
    if max(uw, uh) < min(RAW_PREVIEW_MIN, max(width, height) / 2) or abs(uw / uh - width / height) > 0.02:
        return none       # a thumbnail, or a cropped (e.g. 16:9) preview that would misplace boxes
    return thumb.data, (pw, ph)


def _upright_like(pixels: np.ndarray, width: int, height: int, flip: int) -> np.ndarray:
    """Turn a preview stored as the sensor sees it upright (LibRaw flip 5: 90° CCW, 6: 90° CW)."""
    if (pixels.shape[1] > pixels.shape[0]) == (width > height) or width == height:
        return pixels
    return np.ascontiguousarray(np.rot90(pixels, 1 if flip == 5 else -1))
