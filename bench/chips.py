"""The numpy chip extraction against dlib.get_face_chips, over every face of labelled/ and groups/.

Faces: dlib's HOG detector (upsample 1) and its 5-point (or 68-point) shape predictor. For
each photo, both extractors cut the same faces side by side; the script prints the share of
equal pixels, the largest |difference|, the chips that went through the pyramid path, the
descriptor distance (dlib's ResNet on our chips vs compute_face_descriptor from landmarks) on a
sample, and chips/s of both extractors. --upscale K enlarges every photo K× first (bilinear),
so that most faces take dlib's pyramid_down path.

    nice -n 5 .venv/bin/python -m bench.chips [--data ../shared/data] [--points 5|68]
                                             [--upscale K] [--sample 40] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facejob.face.dlibport.chips import chip_details, extract_chips
from facejob.face.model_files import model_path

REPO = Path(__file__).resolve().parents[1]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def photo_paths(data: Path) -> list[Path]:
    return sorted(p for folder in ("labelled", "groups") for p in (data / folder).rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES)


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = Path(os.environ.get("FACEJOB_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--points", type=int, choices=(5, 68), default=5)
    ap.add_argument("--upscale", type=int, default=1)
    ap.add_argument("--sample", type=int, default=40, help="faces for the descriptor check (0 = none)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats per photo (best is kept)")
    args = ap.parse_args()

    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path(f"landmarks{args.points}")))
    paths = photo_paths(args.data)
    photos = []  # (name, image, shapes, landmarks)
    t0 = time.perf_counter()
    for path in paths:
        im = Image.open(path).convert("RGB")
        small = np.asarray(im)
        k = args.upscale
        img = small if k == 1 else np.asarray(im.resize((im.width * k, im.height * k), Image.BILINEAR))
        rects = [dlib.rectangle(r.left() * k, r.top() * k, r.right() * k, r.bottom() * k)
                 for r in detector(small, 1)]
        if not rects:
            continue
        shapes = dlib.full_object_detections([predictor(img, r) for r in rects])
        lms = [np.array([[p.x, p.y] for p in s.parts()]) for s in shapes]
        photos.append((str(path.relative_to(args.data)), img, shapes, lms))
    n_faces = sum(len(p[3]) for p in photos)
    print(f"{len(paths)} photos, {len(photos)} with faces, {n_faces} faces "
          f"({args.points}-point, upscale {args.upscale}); detection {time.perf_counter() - t0:.0f} s")

    equal = total = 0
    max_diff = 0
    pyramid = 0
    t_ours = t_dlib = 0.0
    ratios = []
    worst: list[tuple[float, str]] = []
    for name, img, shapes, lms in photos:
        td, theirs = timed(lambda: np.stack(dlib.get_face_chips(img, shapes, 150, 0.25)), args.repeat)
        to, ours = timed(lambda: extract_chips(img, lms, 150, 0.25), args.repeat)
        t_dlib += td
        t_ours += to
        ratios.append(to / td)
        same = (ours == theirs).all(-1)
        equal += int(same.sum())
        total += same.size
        max_diff = max(max_diff, int(np.abs(ours.astype(int) - theirs).max()))
        if not same.all():
            worst.append((float(same.mean()), name))
        for lm in lms:
            d = chip_details(lm)
            # dlib shrinks first when rect_down(rect) (side (w+1)/2 for side w) exceeds 150²
            pyramid += ((d.right - d.left + 2) / 2) ** 2 > 150 * 150
    print(f"pixels equal: {equal / total:.6%} ({total - equal} of {total} differ), max |diff| {max_diff}")
    print(f"chips through the pyramid path: {pyramid} of {n_faces}")
    for share, name in sorted(worst)[:5]:
        print(f"  {name}: {share:.4%} equal")
    print(f"chips/s: numpy port {n_faces / t_ours:.0f}, dlib.get_face_chips {n_faces / t_dlib:.0f}; "
          f"total time ratio port/dlib {t_ours / t_dlib:.2f}, median per photo {np.median(ratios):.2f}")

    if args.sample:
        rec = dlib.face_recognition_model_v1(str(model_path("resnet")))
        faces = [(i, j) for i, p in enumerate(photos) for j in range(len(p[3]))]
        pick = random.Random(0).sample(faces, min(args.sample, len(faces)))
        dists = []
        t0 = time.perf_counter()
        for i, j in pick:
            _, img, shapes, lms = photos[i]
            # dlib cuts all faces of a photo together (shared pyramid crop): do the same
            theirs = np.array(rec.compute_face_descriptor(img, shapes))[j]
            ours = np.array(rec.compute_face_descriptor([extract_chips(img, lms)[j]]))[0]
            dists.append(float(np.linalg.norm(theirs - ours)))
        print(f"descriptor distance on {len(pick)} faces: max {max(dists):.3g}, "
              f"mean {np.mean(dists):.3g} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
