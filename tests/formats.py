"""Photos in every camera format, made at test time from one real face photo (tests/photos.py):
AVIF and JPEG XL through the Pillow plugins' encoders, DNG raw files through pidng (a Bayer
mosaic of the photo; with or without an embedded JPEG preview), 10-bit HEIC, a motion photo
(a still with its video appended), an HDR (PQ) HEIC, 16-bit RGB, and a Display P3 JPEG with its
ICC profile."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

# linear sRGB -> CIE XYZ (D65); its inverse is the DNG ColorMatrix1 (XYZ -> camera) of a
# "camera" whose sensor sees linear sRGB.
_SRGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])


def _linear(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def dng_bytes(img: Image.Image, preview: Image.Image | None = None) -> bytes:
    """A DNG raw file: 12-bit RGGB mosaic of `img` (pidng), plus, if given, `preview` as an
    embedded JPEG preview (a second IFD, NewSubfileType 1, as cameras and converters write it)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CFAPattern, CalibrationIlluminant, DNGVersion, PhotometricInterpretation

    rgb = np.asarray(img.convert("RGB"))
    h, w = (rgb.shape[0] // 2) * 2, (rgb.shape[1] // 2) * 2
    lin = _linear(rgb[:h, :w])
    white = 4095
    mosaic = np.empty((h, w), np.uint16)
    to12 = lambda a: np.clip(a * white + 0.5, 0, white).astype(np.uint16)  # noqa: E731
    mosaic[0::2, 0::2] = to12(lin[0::2, 0::2, 0])
    mosaic[0::2, 1::2] = to12(lin[0::2, 1::2, 1])
    mosaic[1::2, 0::2] = to12(lin[1::2, 0::2, 1])
    mosaic[1::2, 1::2] = to12(lin[1::2, 1::2, 2])
    xyz_to_cam = np.linalg.inv(_SRGB_TO_XYZ)
    t = DNGTags()
    t.set(Tag.ImageWidth, w)
    t.set(Tag.ImageLength, h)
    t.set(Tag.TileWidth, w)
    t.set(Tag.TileLength, h)
    t.set(Tag.Orientation, 1)
    t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    t.set(Tag.SamplesPerPixel, 1)
    t.set(Tag.BitsPerSample, 12)
    t.set(Tag.CFARepeatPatternDim, [2, 2])
    t.set(Tag.CFAPattern, CFAPattern.RGGB)
    t.set(Tag.BlackLevel, 0)
    t.set(Tag.WhiteLevel, white)
    t.set(Tag.ColorMatrix1, [[round(v * 10000), 10000] for v in xyz_to_cam.reshape(-1)])
    t.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    t.set(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])
    t.set(Tag.BaselineExposure, [[0, 1]])
    t.set(Tag.Make, "facejob")
    t.set(Tag.Model, "test sensor")
    t.set(Tag.DNGVersion, DNGVersion.V1_4)
    t.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    t.set(Tag.PreviewColorSpace, 2)
    conv = RAW2DNG()
    conv.options(t, path="", compress=False)
    data = bytes(conv.convert(mosaic))
    return data if preview is None else _with_preview(data, preview)


def _with_preview(tiff: bytes, preview: Image.Image) -> bytes:
    """Append a JPEG preview IFD to a little-endian TIFF/DNG and link it after IFD0."""
    buf = io.BytesIO()
    preview.convert("RGB").save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    out = bytearray(tiff)
    out += b"\0" * (-len(out) % 4)
    jpeg_at = len(out)
    out += jpeg + b"\0" * (-len(jpeg) % 4)
    ifd_at = len(out)
    entries = [  # (tag, type, count, value): SHORT=3, LONG=4
        (254, 4, 1, 1),                       # NewSubfileType: reduced-resolution preview
        (256, 4, 1, preview.width), (257, 4, 1, preview.height),
        (259, 3, 1, 6),                       # Compression: JPEG
        (262, 3, 1, 6),                       # PhotometricInterpretation: YCbCr
        (273, 4, 1, jpeg_at), (277, 3, 1, 3), (279, 4, 1, len(jpeg)),
        (513, 4, 1, jpeg_at), (514, 4, 1, len(jpeg)),   # JPEGInterchangeFormat(Length)
    ]
    out += struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        out += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    out += struct.pack("<I", 0)
    ifd0 = struct.unpack_from("<I", out, 4)[0]
    n0 = struct.unpack_from("<H", out, ifd0)[0]
    struct.pack_into("<I", out, ifd0 + 2 + 12 * n0, ifd_at)   # IFD0's next-IFD pointer
    return bytes(out)


def motion_photo(still: bytes) -> bytes:
    """A motion photo as phones write it: the still, then the video appended after its end (an
    MP4 'ftyp' box here), which a decoder must ignore."""
    return still + struct.pack(">I", 24) + b"ftypmp42" + b"\0\0\0\0" + b"mp42isom" + b"\0" * 64


def heic_10bit(img: Image.Image) -> bytes:
    """A 10-bit HEIC (the HDR-capable depth phones write) of `img`, from 16-bit samples."""
    import pillow_heif

    a16 = np.asarray(img.convert("RGB"), np.uint16) * 257
    heif = pillow_heif.from_bytes(mode="RGB;16", size=img.size, data=a16.tobytes())
    buf = io.BytesIO()
    heif.save(buf, quality=90)   # 16-bit samples are encoded at 10 bits
    return buf.getvalue()


def heic_pq(img: Image.Image) -> bytes:
    """An HDR HEIC as phones write it: 10-bit, BT.2020 primaries, PQ transfer (nclx), the photo's
    white at the reference 203 nits."""
    import pillow_heif

    lin = _linear(np.asarray(img.convert("RGB")))
    m709_to_2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])
    y = np.clip(lin @ m709_to_2020.T * 203 / 10000, 0, 1)
    m1, m2, c1, c2, c3 = 0.1593017578125, 78.84375, 0.8359375, 18.8515625, 18.6875
    pq = ((c1 + c2 * y ** m1) / (1 + c3 * y ** m1)) ** m2
    a16 = np.ascontiguousarray((pq * 65535 + 0.5).astype(np.uint16))
    heif = pillow_heif.from_bytes(mode="RGB;16", size=img.size, data=a16.tobytes())
    buf = io.BytesIO()
    heif.save(buf, quality=95, color_primaries=9, transfer_characteristics=16, matrix_coefficients=9)
    return buf.getvalue()


def png_16bit_rgb(img: Image.Image) -> bytes:
    """A 48-bit RGB PNG (16 bits per channel), written by hand: Pillow has no 16-bit RGB mode."""
    import zlib

    a = (np.asarray(img.convert("RGB"), np.uint16) * 257).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in a)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", img.width, img.height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def display_p3_jpeg(img: Image.Image, p3_icc: bytes) -> bytes:
    """`img` converted to Display P3 and saved with that ICC profile (as iPhones save photos):
    a viewer, and facejob, must convert it back to sRGB to show the same colours."""
    from PIL import ImageCms

    src = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    dst = ImageCms.ImageCmsProfile(io.BytesIO(p3_icc))
    p3 = ImageCms.profileToProfile(img.convert("RGB"), src, dst, outputMode="RGB")
    buf = io.BytesIO()
    p3.save(buf, "JPEG", quality=92, icc_profile=p3_icc)
    return buf.getvalue()


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write_all(data_dir: Path, dest: Path, face: Image.Image) -> dict[str, Path]:
    """One file per format, each holding `face`; name -> path."""
    import pillow_heif
    import pillow_jxl  # noqa: F401

    pillow_heif.register_heif_opener()
    p3_icc = Image.open(data_dir / "groups/misc/couple.jpg").info["icc_profile"]   # a real Display P3 profile
    files = {
        "face.avif": encode(face, "AVIF", quality=80),
        "face.jxl": encode(face, "JXL", quality=90),
        "face_preview.dng": dng_bytes(face, preview=face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "face_thumb_only.dng": dng_bytes(face, preview=face.resize((face.width // 4, face.height // 4))),
        "face_raw.dng": dng_bytes(face),
        "face_10bit.heic": heic_10bit(face),
        "face_hdr_pq.heic": heic_pq(face),
        "motion.jpg": motion_photo(encode(face, "JPEG", quality=90)),
        "motion.heic": motion_photo(encode(face, "HEIF", quality=90)),
        "face_48bit.png": png_16bit_rgb(face),
        "face_p3.jpg": display_p3_jpeg(face, p3_icc),
    }
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, data in files.items():
        (dest / name).write_bytes(data)
        out[name] = dest / name
    return out
