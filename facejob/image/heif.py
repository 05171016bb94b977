"""HEIC photos decoded with FFmpeg's HEVC decoder (through PyAV) instead of libde265.

A phone archive is mostly HEIC, and decoding the HEVC picture is most of what facejob spends on
such a photo: it has no reduced-size decode (JPEG's DCT scaling), so every pixel is decoded.
FFmpeg's decoder does that in about two thirds of libde265's time (pillow-heif's decoder), on one
core (bench/heic_decode.py). This module reads the HEIF container itself (ISO/IEC 23008-12): the
primary item, as one HEVC picture or a grid of HEVC tiles (what phones write), its clean
aperture and rotation, colour matrix and ICC profile.

Only that common case is taken: 8-bit HEVC, no alpha, no mirroring. For anything else (10-bit
and HDR, alpha, AVIF and other codecs, an unexpected layout) `decode` returns None and
pillow-heif decodes the photo as before, so this is a faster path, never the only one.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

# H.273 matrix_coefficients -> swscale colourspace (2 = unspecified: BT.601, as libheif assumes).
_MATRIX = {1: "ITU709", 2: "ITU601", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020"}
_HEVC_ALPHA = b"urn:mpeg:hevc:2015:auxid:1\0"
CODING_BLOCK = 64   # an HEVC picture is coded in whole blocks of up to 64 px
_EIGHT_BIT = {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray"}


class Unsupported(Exception):
    """Not the common case this module decodes; pillow-heif takes the photo."""


@dataclass
class _Item:
    type: str = ""
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # (construction method, offset, length)
    props: list[tuple[str, bytes]] = field(default_factory=list)        # in association order


def _boxes(buf: bytes, start: int, end: int):
    """(type, payload start, box end) of each box in buf[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, start)
        head = 8
        if size == 1:
            size, head = struct.unpack_from(">Q", buf, start + 8)[0], 16
        elif size == 0:
            size = end - start
        if size < head or start + size > end:
            raise Unsupported("a box runs past its parent")
        yield kind.decode("latin-1"), start + head, start + size
        start += size


def _uint(buf: bytes, pos: int, size: int, end: int) -> tuple[int, int]:
    """The big-endian unsigned field of `size` bytes at `pos` (inside a box ending at `end`), and
    the position after it. Counts in a damaged file cannot make a loop read past its box."""
    if pos + size > end:
        raise Unsupported("a field runs past its box")
    return (int.from_bytes(buf[pos:pos + size], "big") if size else 0), pos + size


def _parse(data: bytes) -> tuple[int, dict[int, _Item], dict[str, dict[int, list[int]]], bytes]:
    """Primary item id, items (type, extents, properties), references by type, idat."""
    top: dict[str, tuple[int, int]] = {}
    try:
        for k, s, e in _boxes(data, 0, len(data)):
            top.setdefault(k, (s, e))
    except Unsupported:   # data appended after the HEIF boxes (a motion photo's video)
        pass
    if "meta" not in top:
        raise Unsupported("no meta box")
    meta = {k: (s, e) for k, s, e in _boxes(data, top["meta"][0] + 4, top["meta"][1])}
    if not {"pitm", "iinf", "iloc", "iprp"} <= set(meta):
        raise Unsupported("incomplete meta box")
    s, _ = meta["pitm"]
    primary = struct.unpack_from(">H" if data[s] == 0 else ">I", data, s + 4)[0]

    items: dict[int, _Item] = {}
    s, e = meta["iinf"]
    for kind, bs, be in _boxes(data, s + 4 + (2 if data[s] == 0 else 4), e):
        version = data[bs]
        if kind != "infe" or version < 2:
            raise Unsupported("old item info")
        id_size = 2 if version == 2 else 4
        item_id = int.from_bytes(data[bs + 4:bs + 4 + id_size], "big")
        items[item_id] = _Item(data[bs + 4 + id_size + 2:bs + 4 + id_size + 6].decode("latin-1"))

    s, e = meta["iloc"]
    version, pos = data[s], s + 4
    offset_size, length_size = data[pos] >> 4, data[pos] & 15
    base_size, index_size = data[pos + 1] >> 4, (data[pos + 1] & 15) if version in (1, 2) else 0
    count, pos = _uint(data, pos + 2, 2 if version < 2 else 4, e)
    for _ in range(count):
        item_id, pos = _uint(data, pos, 2 if version < 2 else 4, e)
        method = 0
        if version in (1, 2):
            method, pos = _uint(data, pos, 2, e)
            method &= 15
        _, pos = _uint(data, pos, 2, e)   # data reference index: 0 = this file
        base, pos = _uint(data, pos, base_size, e)
        n, pos = _uint(data, pos, 2, e)
        if n > 1 and offset_size + length_size + index_size == 0:
            raise Unsupported("empty extents")   # fields of no bytes: the loop would not advance
        for _ in range(n):
            _, pos = _uint(data, pos, index_size, e)
            off, pos = _uint(data, pos, offset_size, e)
            length, pos = _uint(data, pos, length_size, e)
            if item_id in items:
                items[item_id].extents.append((method, base + off, length))

    iprp = {k: (a, b) for k, a, b in _boxes(data, *meta["iprp"])}
    if "ipco" not in iprp or "ipma" not in iprp:
        raise Unsupported("no item properties")
    props = [(k, data[a:b]) for k, a, b in _boxes(data, *iprp["ipco"])]
    s, e = iprp["ipma"]
    version, flags = data[s], int.from_bytes(data[s + 1:s + 4], "big")
    count, pos = _uint(data, s + 4, 4, e)
    for _ in range(count):
        item_id, pos = _uint(data, pos, 2 if version < 1 else 4, e)
        n, pos = _uint(data, pos, 1, e)
        for _ in range(n):
            index, pos = _uint(data, pos, 2 if flags & 1 else 1, e)
            index &= 0x7FFF if flags & 1 else 0x7F
            if index and item_id in items:
                if index > len(props):
                    raise Unsupported("a property index past the list")
                items[item_id].props.append(props[index - 1])

    refs: dict[str, dict[int, list[int]]] = {}
    if "iref" in meta:
        s, e = meta["iref"]
        id_size = 2 if data[s] == 0 else 4
        for kind, bs, be in _boxes(data, s + 4, e):
            src, pos = _uint(data, bs, id_size, be)
            n, pos = _uint(data, pos, 2, be)
            refs.setdefault(kind, {})[src] = [_uint(data, pos + i * id_size, id_size, be)[0] for i in range(n)]
    idat = data[meta["idat"][0]:meta["idat"][1]] if "idat" in meta else b""
    return primary, items, refs, idat


def _item_data(data: bytes, idat: bytes, item: _Item) -> bytes:
    parts = []
    for method, off, length in item.extents:
        if method not in (0, 1):
            raise Unsupported("item data by reference")
        src = data if method == 0 else idat
        if off + length > len(src) or off >= len(src):
            raise Unsupported("item data past the end of the file")   # cut short: libheif says how
        parts.append(src[off:off + length] if length else src[off:])
    return b"".join(parts)


def _prop(item: _Item, kind: str) -> bytes | None:
    return next((p for k, p in item.props if k == kind), None)


def _annex_b(hvcc: bytes, payload: bytes) -> bytes:
    """HEVC parameter sets (hvcC) and the item's length-prefixed NAL units as an Annex B stream."""
    if len(hvcc) < 23:
        raise Unsupported("short hvcC")
    length_size = (hvcc[21] & 3) + 1
    out, pos = [], 23
    for _ in range(hvcc[22]):
        n = struct.unpack_from(">H", hvcc, pos + 1)[0]
        pos += 3
        for _ in range(n):
            size = struct.unpack_from(">H", hvcc, pos)[0]
            out += [b"\0\0\0\1", hvcc[pos + 2:pos + 2 + size]]
            pos += 2 + size
    pos = 0
    while pos + length_size <= len(payload):
        size = int.from_bytes(payload[pos:pos + length_size], "big")
        out += [b"\0\0\0\1", payload[pos + length_size:pos + length_size + size]]
        pos += length_size + size
    return b"".join(out)


def _colour(item: _Item) -> tuple[str | None, str | None, bytes | None]:
    """(swscale colourspace, range, ICC profile) from the item's colr boxes (None: the stream's own)."""
    matrix = color_range = icc = None
    for kind, p in item.props:
        if kind != "colr":
            continue
        what = p[:4]
        if what == b"nclx" and len(p) >= 11:
            code = struct.unpack_from(">H", p, 8)[0]
            if code not in _MATRIX:
                raise Unsupported(f"colour matrix {code}")
            matrix, color_range = _MATRIX[code], "JPEG" if p[10] & 0x80 else "MPEG"
        elif what in (b"prof", b"rICC"):
            icc = p[4:]
    return matrix, color_range, icc


def _decode_tiles(streams: list[bytes], size: tuple[int, int], matrix: str | None,
                  color_range: str | None) -> list[np.ndarray]:
    """Decode HEVC pictures of `size` (w, h) each: FFmpeg refuses larger ones (a file whose
    stream promises more pixels than its header is left to libheif's own limits)."""
    import av

    codec = av.CodecContext.create("hevc", "r")
    codec.thread_count = 1   # one core per worker; the prefetch thread overlaps decode and detection
    codec.options = {"max_pixels": str((size[0] + CODING_BLOCK) * (size[1] + CODING_BLOCK))}
    frames = []
    for stream in streams:
        frames += codec.decode(av.Packet(stream))
    frames += codec.decode(None)
    if len(frames) != len(streams):
        raise Unsupported(f"{len(frames)} pictures decoded from {len(streams)} items")
    out = []
    for f in frames:
        if f.format.name not in _EIGHT_BIT:
            raise Unsupported(f"pixel format {f.format.name}")
        if f.format.name == "gray":
            grey = f.to_ndarray()
            out.append(np.repeat(grey[..., None], 3, axis=2))
            continue
        rng = color_range or ("JPEG" if f.format.name.startswith("yuvj") else None)
        rgb = f.reformat(format="rgb24", src_colorspace=matrix, src_color_range=rng, threads=1)
        out.append(rgb.to_ndarray())
    return out


def _clean_aperture(p: bytes, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a clap box's crop, as libheif rounds it."""
    wn, wd, hn, hd, xn, xd, yn, yd = struct.unpack_from(">IIIIiIiI", p, 0)
    if 0 in (wd, hd, xd, yd):
        raise Unsupported("clap with a zero denominator")
    w, h = Fraction(wn, wd), Fraction(hn, hd)
    left = Fraction(xn, xd) + Fraction(width - 1, 2) - (w - 1) / 2
    top = Fraction(yn, yd) + Fraction(height - 1, 2) - (h - 1) / 2
    box = (int(left), int(top), int(left + w - 1), int(top + h - 1))   # libheif truncates (round toward 0)
    if box[0] < 0 or box[1] < 0 or box[2] >= width or box[3] >= height or box[2] < box[0] or box[3] < box[1]:
        raise Unsupported("clap outside the picture")
    return box


def decode(data: bytes) -> tuple[np.ndarray, bytes | None] | None:
    """An HEIC photo's primary picture as (H, W, 3) uint8 RGB, upright, with its ICC profile (or
    None); None when it is not the common case (see the module doc) or cannot be decoded here."""
    try:
        return _decode(data)
    except (Unsupported, ImportError, struct.error, IndexError, ValueError):
        return None
    except Exception as e:  # FFmpeg's errors (av.error.*): libheif may still read it
        if type(e).__module__.startswith("av"):
            return None
        raise


def _decode(data: bytes) -> tuple[np.ndarray, bytes | None]:
    primary, items, refs, idat = _parse(data)
    item = items.get(primary)
    if item is None:
        raise Unsupported("no primary item")
    for src, targets in refs.get("auxl", {}).items():   # an alpha plane: pillow-heif keeps it
        urn = (_prop(items[src], "auxC") or b"")[4:] if src in items else b""
        if primary in targets and (b"alpha" in urn or urn.startswith(_HEVC_ALPHA)):
            raise Unsupported("alpha")   # (depth maps and HDR gain maps are left aside, as pillow-heif does)
    if any(k in ("imir", "lsel", "a1op") for k, _ in item.props):
        raise Unsupported("mirrored or layered")
    pixi = _prop(item, "pixi")
    if pixi is not None and any(b != 8 for b in pixi[5:5 + pixi[4]]):
        raise Unsupported("not 8 bits per channel")
    matrix, color_range, icc = _colour(item)

    if item.type == "hvc1":
        tiles, layout = [item], None
    elif item.type == "grid":
        grid = _item_data(data, idat, item)
        if len(grid) < 8 or grid[0] != 0:
            raise Unsupported("grid version")
        rows, cols = grid[2] + 1, grid[3] + 1
        fmt = ">II" if grid[1] & 1 else ">HH"
        out_w, out_h = struct.unpack_from(fmt, grid, 4)
        ids = refs.get("dimg", {}).get(primary, [])
        if len(ids) != rows * cols or not all(i in items and items[i].type == "hvc1" for i in ids):
            raise Unsupported("grid tiles")
        tiles, layout = [items[i] for i in ids], (rows, cols, out_w, out_h)
    else:
        raise Unsupported(f"item type {item.type}")
    streams, sizes = [], set()
    for t in tiles:
        hvcc, ispe = _prop(t, "hvcC"), _prop(t, "ispe")
        if hvcc is None or ispe is None:
            raise Unsupported("a picture without hvcC or ispe")
        sizes.add(struct.unpack_from(">II", ispe, 4))
        streams.append(_annex_b(hvcc, _item_data(data, idat, t)))
    if len(sizes) != 1:
        raise Unsupported("grid tiles of different sizes")
    (w, h), = sizes
    if layout is not None:   # tiles cover the grid, overhanging by less than one tile
        rows, cols, out_w, out_h = layout
        if not ((cols - 1) * w < out_w <= cols * w and (rows - 1) * h < out_h <= rows * h):
            raise Unsupported("grid tiles do not match the grid")
    pictures = _decode_tiles(streams, (w, h), matrix, color_range)
    if any(p.shape[0] < h or p.shape[1] < w for p in pictures):
        raise Unsupported("pictures smaller than their header")
    pictures = [p[:h, :w] for p in pictures]   # the coded picture may be padded to whole blocks

    if layout is None:
        pixels = pictures[0]
    else:
        pixels = np.empty((rows * h, cols * w, 3), np.uint8)
        for k, p in enumerate(pictures):
            r, c = divmod(k, cols)
            pixels[r * h:(r + 1) * h, c * w:(c + 1) * w] = p
        pixels = pixels[:out_h, :out_w]

    for kind, p in item.props:   # transformations, in the order the item lists them
        if kind == "clap":
            left, top, right, bottom = _clean_aperture(p, pixels.shape[1], pixels.shape[0])
            pixels = pixels[top:bottom + 1, left:right + 1]
        elif kind == "irot":
            pixels = np.rot90(pixels, p[0] & 3)   # anticlockwise quarter turns
    return np.ascontiguousarray(pixels), icc
