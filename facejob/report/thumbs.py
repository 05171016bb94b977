"""Face thumbnails and photo previews for the report, cut from the original photos.

Each photo is read and decoded once (in worker processes), giving a small preview JPEG and one
THUMB x THUMB crop per face. Crops go into JPEG sprite sheets of SPRITE_CELLS faces in page
order, so a screen of people needs a few image files, not one per face.
"""
from __future__ import annotations

import io
import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facejob.image.decode import DecodeError, decode_image
from facejob.io.sources import SourceUnavailable, read_bytes

log = logging.getLogger("facejob.report")

THUMB = 64               # px, square
SPRITE_COLS = 16
SPRITE_CELLS = SPRITE_COLS * SPRITE_COLS
PREVIEW_MAX = 480        # px, longer side of a photo preview
CROP_MARGIN = 1.35       # thumbnail side / larger side of the face box
QUALITY = 80
MISSING = (128, 128, 128)


@dataclass(frozen=True)
class PhotoJob:
    uri: str
    cells: tuple[int, ...]                              # sprite cell (page position) of each face
    boxes: tuple[tuple[int, int, int, int], ...]        # left, top, right, bottom per face
    preview: bool                                       # write a preview of this photo


@dataclass
class PhotoResult:
    uri: str
    preview: bytes | None
    thumbs: list[tuple[int, bytes]]                     # (cell, THUMB*THUMB*3 RGB bytes)
    error: str | None = None


def crop_box(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A square around a face box, CROP_MARGIN times its larger side, moved (and if need be
    shrunk) to lie inside the photo, so thumbnails of tightly cropped photos have no black bars."""
    left, top, right, bottom = box
    w, h = size
    side = min(max(right - left, bottom - top, 1) * CROP_MARGIN, w, h)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x0 = min(max(cx - side / 2, 0), w - side)
    y0 = min(max(cy - side / 2, 0), h - side)
    return (round(x0), round(y0), round(x0 + side), round(y0 + side))


def render(job: PhotoJob, max_pixels: int) -> PhotoResult:
    """Decode one photo; its preview (if asked) and a thumbnail per face. Never raises for a
    photo that is gone or damaged: the result says why instead."""
    try:
        data = read_bytes(job.uri)
        img = Image.fromarray(decode_image(data, max_pixels))
    except (DecodeError, SourceUnavailable, OSError, ValueError) as e:
        return PhotoResult(job.uri, None, [], f"{type(e).__name__}: {e}")
    thumbs = [(cell, img.crop(crop_box(box, img.size)).resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=2.0).tobytes())
              for cell, box in zip(job.cells, job.boxes)]
    preview = None
    if job.preview and _small_upright_jpeg(data, img.size):
        preview = data        # already small enough: the original bytes as they are
    elif job.preview:
        small = img.copy()
        small.thumbnail((PREVIEW_MAX, PREVIEW_MAX), Image.BILINEAR, reducing_gap=2.0)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=QUALITY)
        preview = buf.getvalue()
    return PhotoResult(job.uri, preview, thumbs)


def _small_upright_jpeg(data: bytes, size: tuple[int, int]) -> bool:
    """A JPEG no bigger than a preview whose pixels need no EXIF turn (so browsers show them as we do)."""
    if data[:3] != b"\xff\xd8\xff" or max(size) > PREVIEW_MAX:
        return False
    try:
        return Image.open(io.BytesIO(data)).getexif().get(0x0112, 1) == 1
    except Exception:   # unreadable EXIF: re-encode instead
        return False


def _render_all(jobs: list[PhotoJob], max_pixels: int) -> list[PhotoResult]:
    return [render(j, max_pixels) for j in jobs]


def render_photos(jobs: list[PhotoJob], max_pixels: int, workers: int) -> Iterator[PhotoResult]:
    """render() over every job, in job order, on `workers` processes (1: in this process)."""
    if workers <= 1 or len(jobs) < 64:
        yield from (render(j, max_pixels) for j in jobs)
        return
    batch = max(8, min(64, len(jobs) // (workers * 8)))
    batches = [jobs[i:i + batch] for i in range(0, len(jobs), batch)]
    # spawn, not fork: the parent may hold threads (Arrow, hnswlib) that fork would copy mid-work.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    try:
        for results in pool.map(_render_all, batches, [max_pixels] * len(batches)):
            yield from results
    finally:  # on Ctrl-C the batches not started are dropped, not rendered first
        pool.shutdown(wait=True, cancel_futures=True)


def _ignore_sigint() -> None:
    """Ctrl-C reaches every process of the terminal's group: the parent handles it (one line,
    exit 130); a worker would print its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SpriteWriter:
    """Collects thumbnails by cell and writes each sprite sheet once all its cells are in."""

    def __init__(self, n_cells: int, write: Callable[[int, bytes], None]):
        self.n_cells = n_cells
        self.write = write
        self.sheets: dict[int, tuple[np.ndarray, int]] = {}
        self.written = 0

    def _expected(self, sheet: int) -> int:
        return min(SPRITE_CELLS, self.n_cells - sheet * SPRITE_CELLS)

    def put(self, cell: int, rgb: bytes | None) -> None:
        sheet, k = divmod(cell, SPRITE_CELLS)
        if sheet not in self.sheets:
            rows = -(-self._expected(sheet) // SPRITE_COLS)
            self.sheets[sheet] = (np.full((rows * THUMB, SPRITE_COLS * THUMB, 3), MISSING, np.uint8), 0)
        arr, filled = self.sheets[sheet]
        if rgb is not None:
            r, c = divmod(k, SPRITE_COLS)
            arr[r * THUMB:(r + 1) * THUMB, c * THUMB:(c + 1) * THUMB] = np.frombuffer(rgb, np.uint8).reshape(THUMB, THUMB, 3)
        filled += 1
        self.sheets[sheet] = (arr, filled)
        if filled == self._expected(sheet):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=QUALITY)
            self.write(sheet, buf.getvalue())
            del self.sheets[sheet]
            self.written += 1

    def put_all(self, cells: Iterable[int]) -> None:
        for c in cells:
            self.put(c, None)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
