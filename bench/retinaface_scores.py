"""RetinaFace scores by face size: the figures behind LARGE_FACE_PX / LARGE_FACE_THRESHOLD.

    python -m bench.retinaface_scores              # all of LFW, groups/, labelled/ and no_face/
    python -m bench.retinaface_scores --lfw 1000   # a quick look: the first 1,000 LFW photos

Runs facejob's RetinaFace detector with both thresholds lowered to --floor, so it reports what
the size rule would drop, on photos of real faces (LFW, groups/, labelled/: every detection is
counted as a face, so a few false ones may hide among them) and on no_face/ (every detection is
false). For each face size band (shorter side in the pixels handed to the detector) it prints
how many detections score below 0.95 and the lowest scores, and lists every no_face/ detection.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from facejob.image.decode import decode_image
from facejob.face.retinaface import LARGE_FACE_PX, LARGE_FACE_THRESHOLD, SCORE_THRESHOLD, RetinaFaceDetector

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data"
BANDS = (0, 40, 80, 110, LARGE_FACE_PX, 200, 10_000)


def detections(det: RetinaFaceDetector, paths: list[Path]) -> list[tuple[str, float, float]]:
    """(file, score, shorter side) of every face found."""
    out = []
    for p in paths:
        (faces,) = det.faces([decode_image(p.read_bytes(), 100_000_000)])
        out += [(p.name, f.score, min(f.box[2] - f.box[0], f.box[3] - f.box[1])) for f in faces]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--lfw", type=int, default=0, help="use only the first N LFW photos (0 = all)")
    ap.add_argument("--floor", type=float, default=0.8, help="lowest score reported")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    det = RetinaFaceDetector("cpu", threshold=args.floor, large_face_threshold=args.floor)
    lfw = sorted((args.data / "lfw/images").rglob("*.jpg"))
    real_paths = (lfw[:args.lfw] if args.lfw else lfw) + sorted((args.data / "groups").rglob("*.jpg")) \
        + sorted((args.data / "labelled").rglob("*.jpg"))
    print(f"{len(real_paths)} photos of faces, scores >= {args.floor} (facejob keeps >= {SCORE_THRESHOLD}, "
          f">= {LARGE_FACE_THRESHOLD} from {LARGE_FACE_PX} px)")
    real = detections(det, real_paths)
    print(f"{'face px':>11} {'faces':>7} {'< 0.9':>7} {'0.9-0.95':>9}  lowest scores")
    for lo, hi in zip(BANDS, BANDS[1:]):
        s = np.sort([score for _, score, side in real if lo <= side < hi])
        print(f"{lo:>5}-{hi:<5} {len(s):>7} {(s < 0.9).sum():>7} {((s >= 0.9) & (s < 0.95)).sum():>9}  "
              + " ".join(f"{v:.3f}" for v in s[:6]))
    large = sorted((score, name) for name, score, side in real if side >= LARGE_FACE_PX and score < LARGE_FACE_THRESHOLD)
    print(f"faces of >= {LARGE_FACE_PX} px below {LARGE_FACE_THRESHOLD}: "
          + (", ".join(f"{name} {score:.3f}" for score, name in large) or "none"))

    false = detections(det, sorted((args.data / "no_face").rglob("*.jpg")))
    print(f"no_face/: {len(false)} detections >= {args.floor}")
    for name, score, side in sorted(false, key=lambda f: -f[1]):
        kept = score >= (LARGE_FACE_THRESHOLD if side >= LARGE_FACE_PX else SCORE_THRESHOLD)
        print(f"  {name}: score {score:.3f}, {side:.0f} px -> {'kept' if kept else 'dropped'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
