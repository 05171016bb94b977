"""Builds awkward input photos in a temp folder from one real face photo of the shared data."""
from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image

FACE_PHOTO = "labelled/fr_knn/train/obama/obama.jpg"   # one clear frontal face, 910×1137


def face_image(data_dir: Path, width: int = 320) -> Image.Image:
    img = Image.open(data_dir / FACE_PHOTO).convert("RGB")
    return img.resize((width, round(img.height * width / img.width)), Image.BILINEAR)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels, with no pixel data (a decompression bomb stand-in)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)  # far fewer pixels than promised
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rotated_with_exif(img: Image.Image) -> bytes:
    """Pixels stored on their side, with the EXIF tag that tells viewers to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    buf = io.BytesIO()
    img.rotate(90, expand=True).save(buf, "JPEG", quality=92, exif=exif)
    return buf.getvalue()


# name → expected (status, reason prefix or None)
EXPECTED = {
    "zero.jpg": ("error", "empty"),
    "truncated.jpg": ("error", "corrupt"),
    "text.jpg": ("error", "unsupported"),
    "huge.png": ("error", "too_large"),
    "dangling.jpg": ("error", "unreadable"),
    "fifo.jpg": ("error", "unsupported"),
    "webp_named.jpg": ("ok", None),
    "photo.heic": ("ok", None),
    "rgba.png": ("ok", None),
    "grey.jpg": ("ok", None),
    "cmyk.jpg": ("ok", None),
    "sixteen_bit.png": ("ok", None),
    "rotated_exif.jpg": ("ok", None),
    "animated.gif": ("ok", None),
    "sub.jpg/inner.jpg": ("ok", None),   # a directory whose name looks like a photo is walked
    "plain.jpg": ("ok", None),
    "landscape.jpg": ("no_face", None),
}
NON_IMAGES = ["notes.txt", "sidecar.xmp"]   # skipped by extension, counted in run.json


def make_awkward_folder(data_dir: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    img = face_image(data_dir)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()

    (dest / "plain.jpg").write_bytes(jpeg)
    (dest / "zero.jpg").write_bytes(b"")
    (dest / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (dest / "text.jpg").write_text("this is not a photo\n")
    (dest / "huge.png").write_bytes(png_header_only(40_000, 30_000))
    os.symlink(dest / "missing-target.jpg", dest / "dangling.jpg")
    os.mkfifo(dest / "fifo.jpg")
    shutil.copyfile(data_dir / "edge/webp_named_jpg.jpg", dest / "webp_named.jpg")

    import pillow_heif

    pillow_heif.register_heif_opener()
    img.save(dest / "photo.heic", "HEIF", quality=90)
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.new("L", img.size, 255).point(lambda v: v))
    rgba.save(dest / "rgba.png")
    img.convert("L").save(dest / "grey.jpg", quality=90)
    img.convert("CMYK").save(dest / "cmyk.jpg", quality=90)
    grey16 = Image.frombytes("I;16", img.size, bytes(
        b for v in img.convert("L").tobytes() for b in struct.pack("<H", v * 257)))
    grey16.save(dest / "sixteen_bit.png")
    (dest / "rotated_exif.jpg").write_bytes(rotated_with_exif(img))
    frames = [img.convert("P"), Image.new("RGB", img.size, (0, 0, 0)).convert("P")]
    frames[0].save(dest / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    (dest / "sub.jpg").mkdir()
    (dest / "sub.jpg" / "inner.jpg").write_bytes(jpeg)
    Image.open(data_dir / "no_face/park.jpg").convert("RGB").save(dest / "landscape.jpg")
    for name in NON_IMAGES:
        (dest / name).write_text("not a photo")
    return dest
