"""Fit the map from RetinaFace boxes to dlib HOG's box convention (what dlib's 5-point shape
predictor was trained on), and measure what it changes in the landmarks.

On faces both detectors find (IoU >= 0.3), least squares per coordinate, in units of the
RetinaFace box (width w, height h, centre cx, cy; HOG boxes are square of side s):

    hog_cx = cx + A * w        hog_cy = cy + B * h        hog_s = C * w + D * h

Then, for those faces, dlib's 5 landmarks from the HOG box vs from the mapped RetinaFace box
(and from the raw RetinaFace box), as a fraction of the eye distance. The printed A..D are
the constants in facejob/face/retinaface.py (HOG_MAP).

    python -m bench.fit_box_map [--lfw 400] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np


from facejob.face.align import Aligner  # noqa: E402
from facejob.image.decode import decode_image  # noqa: E402
from facejob.face.detect import Detection, box_iou, HogDetector  # noqa: E402
from facejob.face.retinaface import RetinaFaceDetector, hog_box  # noqa: E402



def photos(data: Path, n_lfw: int, seed: int = 0) -> list[Path]:
    people = sorted((data / "lfw" / "images").iterdir())
    random.Random(seed).shuffle(people)
    lfw = [sorted(p.glob("*.jpg"))[0] for p in people[:n_lfw]]
    labelled = sorted(p for p in (data / "labelled").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return lfw + labelled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--lfw", type=int, default=400, help="LFW photos (one per person, seeded)")
    args = ap.parse_args()
    hog, rf, aligner = HogDetector(), RetinaFaceDetector(device="cpu"), Aligner(5)
    pairs: list[tuple[np.ndarray, Detection, Detection]] = []
    for p in photos(args.data, args.lfw):
        img = decode_image(p.read_bytes(), 100_000_000)
        (h,), (r,) = hog.detect([img], 1), rf.detect([img], 1)
        for d in h:
            best = max(r, key=lambda x: box_iou(d.edges, x.edges), default=None)
            if best is not None and box_iou(d.edges, best.edges) >= 0.3:
                pairs.append((img, d, best))
    print(f"{len(pairs)} faces found by both detectors")
    R = np.array([[b.left, b.top, b.right + 1, b.bottom + 1] for _, _, b in pairs], float)
    H = np.array([[d.left, d.top, d.right + 1, d.bottom + 1] for _, d, _ in pairs], float)
    w, hgt = R[:, 2] - R[:, 0], R[:, 3] - R[:, 1]
    cx, cy = (R[:, 0] + R[:, 2]) / 2, (R[:, 1] + R[:, 3]) / 2
    hcx, hcy, hs = (H[:, 0] + H[:, 2]) / 2, (H[:, 1] + H[:, 3]) / 2, ((H[:, 2] - H[:, 0]) + (H[:, 3] - H[:, 1])) / 2
    a = np.linalg.lstsq(w[:, None], hcx - cx, rcond=None)[0][0]
    b = np.linalg.lstsq(hgt[:, None], hcy - cy, rcond=None)[0][0]
    (c, d), *_ = np.linalg.lstsq(np.column_stack([w, hgt]), hs, rcond=None)
    print(f"HOG_MAP = ({a:.4f}, {b:.4f}, {c:.4f}, {d:.4f})   # A, B, C, D")
    print(f"residual rms (fraction of HOG side): centre x {np.sqrt(np.mean(((hcx - cx - a * w) / hs) ** 2)):.3f}, "
          f"y {np.sqrt(np.mean(((hcy - cy - b * hgt) / hs) ** 2)):.3f}, side {np.sqrt(np.mean(((hs - c * w - d * hgt) / hs) ** 2)):.3f}")
    errs: dict[str, list[float]] = {"mapped": [], "raw": []}
    for img, dh, dr in pairs:
        ref = aligner.landmarks(img, [dh])[0].astype(float)
        eye = np.linalg.norm(ref[0:2].mean(0) - ref[2:4].mean(0))
        for name, box in (("mapped", hog_box(dr, (a, b, c, d))), ("raw", dr)):
            pts = aligner.landmarks(img, [box])[0].astype(float)
            errs[name].append(float(np.linalg.norm(pts - ref, axis=1).mean() / eye))
    for name, e in errs.items():
        e = np.array(e)
        print(f"dlib landmarks from {name:6s} RetinaFace box vs from HOG box: mean {e.mean():.3f}, "
              f"median {np.median(e):.3f}, p95 {np.percentile(e, 95):.3f} eye distances")


if __name__ == "__main__":
    main()
