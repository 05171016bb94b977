"""HEIC decoding: pillow-heif (libheif + libde265) against facejob/image/heif.py (FFmpeg's HEVC decoder
through PyAV), side by side on the same files, one core.

    python -m bench.heic_decode                    # 12 and 24 MP, one picture and 512 px tiles
    python -m bench.heic_decode --repeats 9

Builds camera-size HEIC files from a group photo of ../shared/data (upscaled to 4032x3024 and
6000x4000, quality 90) as one HEVC picture and as a grid of 512 px tiles (what phones write),
then times each decoder to RGB pixels, interleaved, and prints medians, the ratio, and how far
apart the two decodes are (mean absolute difference in grey levels).
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facejob.image import heif

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data"


def build(data: Path) -> dict[str, bytes]:
    import pillow_heif

    pillow_heif.register_heif_opener()
    src = Image.open(data / "groups/dlib_faces/2008_002470.jpg").convert("RGB")
    files = {}
    for w, h in ((4032, 3024), (6000, 4000)):
        big = src.resize((w, h), Image.LANCZOS)
        for grid in (0, 512):
            pillow_heif.options.GRID_TILE_SIZE = grid
            buf = io.BytesIO()
            big.save(buf, "HEIF", quality=90)
            files[f"{w}x{h} {'512 px tiles' if grid else 'one picture'}"] = buf.getvalue()
    pillow_heif.options.GRID_TILE_SIZE = 0
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import pillow_heif

    pillow_heif.options.DECODE_THREADS = 1   # one core, as a facejob worker has
    t = time.perf_counter()
    files = build(args.data)
    print(f"{len(files)} files built in {time.perf_counter() - t:.0f} s; medians of {args.repeats} interleaved "
          f"repeats, one thread each")
    print(f"{'file':<28}{'libheif s':>10}{'FFmpeg s':>10}{'ratio':>7}{'mean diff':>10}")
    for name, data in files.items():
        times: dict[str, list[float]] = {"libheif": [], "ffmpeg": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            times["libheif"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ours = heif.decode(data)
            times["ffmpeg"].append(time.perf_counter() - t)
        if ours is None:
            print(f"{name:<28} not decoded by facejob/image/heif.py")
            continue
        a, b = (statistics.median(times[k]) for k in ("libheif", "ffmpeg"))
        diff = np.abs(ours[0].astype(np.int16) - ref.astype(np.int16)).mean()
        print(f"{name:<28}{a:>10.3f}{b:>10.3f}{a / b:>6.2f}x{diff:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
