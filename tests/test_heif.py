"""facejob/image/heif.py: HEIC decoded by FFmpeg equals pillow-heif's (libde265) decode within a
rounding step, for the layouts phones and encoders write, and every other HEIC goes to
pillow-heif unchanged. Files are written at run time by pillow-heif's own encoder."""
from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image

from facejob.image import decode, heif

pillow_heif = pytest.importorskip("pillow_heif")
pillow_heif.register_heif_opener()

# libheif and swscale round the YCbCr -> RGB conversion and place chroma samples a little
# differently: against the photo that was encoded, FFmpeg's decode must be as close as libheif's
# (mean error within MEAN_MARGIN grey levels, 99th percentile within P99_MARGIN), and the two
# decodes close to each other (measured: mean 0.48, at most 2 levels apart; 1.1 for an odd-sized
# rotated grid, whose chroma libheif rotates before converting).
MEAN_MARGIN, P99_MARGIN, MEAN_BETWEEN = 0.5, 2, 1.5
ORIENTED = {1: lambda a: a, 3: lambda a: np.rot90(a, 2), 6: lambda a: np.rot90(a, -1), 8: lambda a: np.rot90(a, 1)}


@pytest.fixture(scope="module")
def photo(data_dir) -> Image.Image:
    return Image.open(data_dir / "groups/dlib_faces/2008_002470.jpg").convert("RGB")


def heic(img: Image.Image, grid: int = 0, orientation: int = 1, **kw) -> bytes:
    old = pillow_heif.options.GRID_TILE_SIZE
    pillow_heif.options.GRID_TILE_SIZE = grid   # phones write grids of 512 px tiles
    try:
        if orientation != 1:
            exif = Image.Exif()
            exif[0x0112] = orientation          # pillow-heif writes it as an irot box
            kw["exif"] = exif.tobytes()
        buf = io.BytesIO()
        img.save(buf, "HEIF", quality=90, **kw)
        return buf.getvalue()
    finally:
        pillow_heif.options.GRID_TILE_SIZE = old


def libheif(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


CASES = {
    "one picture": dict(),
    "odd size (clean aperture)": dict(crop=(0, 0, 499, 331)),
    "rotated 90 (irot)": dict(orientation=6),
    "rotated 180": dict(orientation=3),
    "grid of tiles": dict(grid=128),
    "grid, odd size, rotated": dict(grid=128, crop=(0, 0, 499, 331), orientation=8),
    "grey": dict(mode="L"),
}


@pytest.mark.parametrize("case", CASES)
def test_ffmpeg_decode_is_as_good_as_libheif(photo, case):
    kw = dict(CASES[case])
    img = photo.crop(kw.pop("crop")) if "crop" in kw else photo
    img = img.convert(kw.pop("mode")) if "mode" in kw else img
    data = heic(img, **kw)
    decoded = heif.decode(data)
    assert decoded is not None, "the common case must take the FFmpeg path"
    ours, ref = decoded[0].astype(int), libheif(data).astype(int)
    source = ORIENTED[kw.get("orientation", 1)](np.asarray(img.convert("RGB"))).astype(int)
    assert decoded[0].dtype == np.uint8 and ours.shape == ref.shape == source.shape
    err, ref_err = np.abs(ours - source), np.abs(ref - source)
    assert err.mean() <= ref_err.mean() + MEAN_MARGIN, (err.mean(), ref_err.mean())
    assert np.percentile(err, 99) <= np.percentile(ref_err, 99) + P99_MARGIN
    assert np.abs(ours - ref).mean() <= MEAN_BETWEEN


def test_icc_profile_and_motion_photo(data_dir, photo):
    """The ICC profile comes with the pixels (Photo converts it to sRGB as for any format), and a
    motion photo's still is found in front of its appended video."""
    p3 = Image.open(data_dir / "groups/misc/couple.jpg").info["icc_profile"]   # Display P3
    data = heic(photo, icc_profile=p3) + b"\0\0\0\x18ftypmp42" + bytes(16)
    pixels, icc = heif.decode(data)
    assert icc == p3 and pixels.shape == (photo.height, photo.width, 3)
    fast = decode.open_photo(data, 10**8).level(1.0).pixels
    slow = decode._pillow_level(decode._open_pillow(data), photo.width, photo.height, 1.0).pixels
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() <= MEAN_BETWEEN


def test_everything_else_goes_to_libheif(photo):
    """10-bit, alpha, AVIF and damaged files are not decoded here (None), and Photo still
    decodes the good ones through pillow-heif and reports the damaged one as corrupt."""
    import pillow_heif as ph

    ten_bit = io.BytesIO()
    ph.from_bytes("RGB;16", photo.size, (np.asarray(photo, np.uint16) << 8).tobytes()).save(ten_bit, quality=90)
    avif = io.BytesIO()
    photo.save(avif, "AVIF", quality=80)
    good = heic(photo)
    for data in (ten_bit.getvalue(), heic(photo.convert("RGBA")), avif.getvalue()):
        assert heif.decode(data) is None
        assert decode.open_photo(data, 10**8).level(1.0).pixels.shape == (photo.height, photo.width, 3)
    for damaged in (good[:len(good) // 2], good[:200], b"\0\0\0\x08meta" + bytes(40)):
        assert heif.decode(damaged) is None
    # A header that promises fewer pixels than the stream holds (a decompression bomb's trick):
    # FFmpeg refuses to decode more than the header's size.
    small_header = bytearray(good)
    struct.pack_into(">II", small_header, small_header.find(b"ispe") + 8, 64, 64)
    assert heif.decode(bytes(small_header)) is None
    with pytest.raises(decode.DecodeError) as e:
        decode.open_photo(good[:len(good) // 2], 10**8).level(0.5)
    assert e.value.reason == decode.CORRUPT


def test_damaged_headers_never_raise(photo):
    """Random bytes changed in the container boxes (before the picture data): `decode` returns
    pixels or None (then pillow-heif reports the file), never raises, never runs away."""
    import random

    good = heic(photo.resize((160, 106)), grid=64)
    meta_end = good.find(b"mdat")
    rng = random.Random(0)
    outcomes = {"pixels": 0, "none": 0}
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, meta_end)] = rng.randrange(256)
        result = heif.decode(bytes(data))
        outcomes["none" if result is None else "pixels"] += 1
        if result is not None:
            assert result[0].dtype == np.uint8 and result[0].ndim == 3
    assert outcomes["none"] > 0, outcomes
