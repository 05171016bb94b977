"""Perceptual-hash threshold for duplicates without faces: copies vs different photos.

    python -m bench.dedup_phash [--lfw 300] [--originals N]

Hashes (facejob.image.phash on facejob's working copy) of every no_face/, groups/ and 200 labelled
photo, each re-encoded at q60, resized to 70 % and 40 %, and cropped by 3 %, 5 % and 8 % per
side; and of `--lfw` random LFW photos. Prints the Hamming distances of copies to their
originals, of distinct photos to each other, and what the pixel check (reduce/duplicates.py
search_alignment) makes of the candidate pairs under PHASH_MAX: copies it confirms, distinct
pairs it refuses.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from facejob.image import decode, phash
from facejob.reduce import duplicates as dd

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data"
EDITS = {
    "q60": lambda im: (im, 60),
    "small70": lambda im: (im.resize((int(im.width * .7), int(im.height * .7)), Image.LANCZOS), 90),
    "small40": lambda im: (im.resize((int(im.width * .4), int(im.height * .4)), Image.LANCZOS), 90),
    **{f"crop{c}": (lambda c: lambda im: (im.crop((im.width * c // 100, im.height * c // 100,
                                                    im.width - im.width * c // 100,
                                                    im.height - im.height * c // 100)), 90))(c) for c in (3, 5, 8)},
}


def jpeg(im: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=q)
    return buf.getvalue()


def hash_of(data: bytes) -> int:
    return phash.phash(decode.decode_reduced(data, 10 ** 9, 1600)[1].pixels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--lfw", type=int, default=300)
    ap.add_argument("--originals", type=int, default=0, help="use only the first N originals (0 = all)")
    args = ap.parse_args()
    d = args.data
    ext = (".jpg", ".jpeg", ".png")
    originals = sorted(p for p in (d / "no_face").rglob("*") if p.suffix.lower() in ext)
    originals += sorted((d / "groups").rglob("*.jpg")) + sorted(p for p in (d / "labelled").rglob("*")
                                                                 if p.suffix.lower() in ext)[:200]
    originals = originals[:args.originals or None]
    random.seed(0)
    lfw = random.sample(sorted((d / "lfw/images").rglob("*.jpg")), args.lfw)
    dist: dict[str, list[int]] = {k: [] for k in EDITS}
    confirmed: dict[str, int] = {k: 0 for k in EDITS}
    hashes = []
    for p in originals:
        im = Image.open(p).convert("RGB")
        base_bytes = jpeg(im, 95)
        base = hash_of(base_bytes)
        hashes.append(base)
        pic = dd.load_picture(base_bytes, im.size, 10 ** 9)
        for k, edit in EDITS.items():
            e, q = edit(im)
            data = jpeg(e, q)
            dist[k].append(int(phash.hamming(base, hash_of(data))[0]))
            if dist[k][-1] <= dd.PHASH_MAX:
                corr, overlap = dd.search_alignment(pic, dd.load_picture(data, e.size, 10 ** 9), im.size, e.size)
                confirmed[k] += corr >= dd.MIN_CORR and overlap >= dd.MIN_OVERLAP
    hashes += [hash_of(jpeg(Image.open(p), 95)) for p in lfw]
    n = len(originals)
    print(f"{n} originals (no_face, groups, labelled) + {len(lfw)} LFW photos; PHASH_MAX = {dd.PHASH_MAX}")
    print(f"{'copy':>8} {'median':>6} {'p95':>4} {'max':>4} {'<=MAX':>6} {'pixels confirm':>14}")
    for k, v in dist.items():
        within = sum(x <= dd.PHASH_MAX for x in v)
        print(f"{k:>8} {np.median(v):>6.0f} {np.percentile(v, 95):>4.0f} {max(v):>4} {within:>3}/{n:<3} "
              f"{confirmed[k]:>8}/{n} found")
    h = np.array(hashes)
    dm = phash.hamming(h[:, None], h[None, :])
    iu = np.triu_indices(len(h), 1)
    flat = dm[iu]
    print(f"distinct pairs {len(flat)}: min {flat.min()}, p0.1 {np.percentile(flat, 0.1):.0f}, "
          f"p1 {np.percentile(flat, 1):.0f}; within PHASH_MAX: {(flat <= dd.PHASH_MAX).sum()}")
    names = originals + lfw
    refused = merged = 0
    for i, j in zip(*iu):
        if dm[i, j] <= dd.PHASH_MAX and i < n:
            a, b = names[i], names[j]
            if a.read_bytes() == b.read_bytes():
                continue   # byte-identical files in the data: real duplicates, not distinct photos
            pa_, pb = (dd.load_picture(x.read_bytes(), Image.open(x).size, 10 ** 9) for x in (a, b))
            corr, overlap = dd.search_alignment(pa_, pb, Image.open(a).size, Image.open(b).size)
            if corr >= dd.MIN_CORR and overlap >= dd.MIN_OVERLAP:
                merged += 1
                print(f"  merged: {a.relative_to(d)} ~ {b.relative_to(d)} (bits {dm[i, j]}, corr {corr:.3f})")
            else:
                refused += 1
    print(f"distinct candidate pairs (not byte-identical) checked by pixels: {refused} refused, {merged} merged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
