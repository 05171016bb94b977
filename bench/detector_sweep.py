"""RetinaFace's operating point from data: score thresholds and when to detect a small photo at 2x.

    nice -n 5 python -m bench.detector_sweep [--data ../shared/data] [--lfw 300]

Runs the detector once per photo at its own size (upsample 1) and once at twice its size
(upsample 2) with every threshold lowered to 0.3, keeps every box with its score and the time
each pass took, then applies each candidate operating point offline:

  threshold      score a face under LARGE_FACE_PX (128 working px) needs
  large          score a face of LARGE_FACE_PX or more needs
  2x rule        which photos also get the 2x pass (its faces merged with the 1x pass by NMS):
                 never; every photo whose long side is <= 800 px; or such a photo only when the
                 1x pass found no face whose shorter side is >= 1/4 of the photo's shorter side
                 (a portrait, like every LFW photo, has nothing small left to find)

Scored on: groups/dlib_faces' hand boxes (found = a kept box with IoU >= 0.4; boxes marked
ignore count neither way; other kept boxes there are false), labelled/ (photos of one person:
those where no face is kept are lost), no_face/ (every kept box is false; one Caltech cup shows
a printed photo of a man's face, listed apart), groups/faceapi_bbt and groups/misc (faces found,
no truth), and --lfw N LFW photos (photos with no face; detector seconds per photo at the rule).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
from bench.boxes import iou, truth_boxes

from facejob.image.decode import decode_image  # noqa: E402
from facejob.face.retinaface import LARGE_FACE_PX, NMS_IOU, RetinaFaceDetector, nms  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
PRINTED_FACE = "caltech_cup/image_0035.jpg"   # a mug with a printed photo of a face
EXT = (".jpg", ".jpeg", ".png", ".webp")


def run(det: RetinaFaceDetector, paths: list[Path]) -> list[dict]:
    """Per photo: its size and, per pass (1, 2), boxes (n, 4), scores and seconds."""
    out = []
    for p in paths:
        img = decode_image(p.read_bytes(), 100_000_000)
        rec = {"path": str(p), "hw": img.shape[:2]}
        for up in (1, 2):
            t = time.perf_counter()
            (faces,) = det.faces([img], up)
            rec[up] = (np.array([f.box for f in faces], np.float64).reshape(-1, 4),
                       np.array([f.score for f in faces], np.float64), time.perf_counter() - t)
        out.append(rec)
    return out


def kept(rec: dict, thr: float, large: float, rule: str) -> tuple[np.ndarray, float]:
    """Boxes kept at this operating point, and the detector seconds it costs."""
    def plausible(b, s):
        side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        return np.where(side < LARGE_FACE_PX, s >= thr, s >= max(thr, large))

    b1, s1, t1 = rec[1]
    ok1 = plausible(b1, s1)
    b, s, cost = b1[ok1], s1[ok1], t1
    h, w = rec["hw"]
    small = max(h, w) <= 800
    if rule == "portrait-skip" and small and len(b):
        small = not (np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) >= min(h, w) / 4).any()
    if rule != "never" and small:
        b2, s2, t2 = rec[2]         # boxes in photo pixels, as the detector's size rule sees them
        ok2 = plausible(b2, s2)
        b, s = np.concatenate([b, b2[ok2]]), np.concatenate([s, s2[ok2]])
        cost += t2
        if len(b):
            keep = nms(b.astype(np.float32), s.astype(np.float32), NMS_IOU)
            b = b[keep]
    return b, cost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--lfw", type=int, default=200, help="LFW photos to time and check (every 66th)")
    args = ap.parse_args()
    d = args.data
    files = lambda root: sorted(p for p in root.rglob("*") if p.suffix.lower() in EXT)  # noqa: E731
    sets = {"dlib_faces": files(d / "groups" / "dlib_faces"),
            "other groups": files(d / "groups" / "faceapi_bbt") + files(d / "groups" / "misc"),
            "labelled": files(d / "labelled"), "no_face": files(d / "no_face"),
            "lfw": files(d / "lfw" / "images")[::66][: args.lfw]}
    det = RetinaFaceDetector(device="cpu", threshold=0.3, large_face_threshold=0.3)
    t0 = time.perf_counter()
    recs = {k: run(det, v) for k, v in sets.items()}
    print(f"{sum(map(len, sets.values()))} photos, two passes each, in {time.perf_counter() - t0:.0f} s; "
          + ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    truth = truth_boxes(d / "groups" / "dlib_faces")
    ignored = {}
    for xml in sorted((d / "groups" / "dlib_faces").glob("*.xml")):
        for image in ET.parse(xml).getroot().iter("image"):
            ignored[str(d / "groups" / "dlib_faces" / image.get("file"))] = [
                (int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                 int(b.get("top")) + int(b.get("height"))) for b in image.iter("box") if b.get("ignore") == "1"]
    n_truth = sum(len(v) for v in truth.values())
    print(f"\n{'threshold':>9} {'large':>5} {'2x rule':>13} | {'hand boxes':>10} {'false':>5} | {'labelled':>8} "
          f"| {'no_face':>7} {'(printed)':>9} | {'other grp':>9} | {'LFW none':>8} {'LFW s/photo':>11} "
          f"{'groups s/photo':>14}")
    for rule in ("never", "small", "portrait-skip"):
        for thr in (0.5, 0.6, 0.7, 0.8, 0.9):
            for large in (0.95, 0.97):
                found = false = 0
                for r in recs["dlib_faces"]:
                    b, _ = kept(r, thr, large, rule)
                    hand = truth.get(r["path"], [])
                    found += sum(any(iou(tuple(x), h) >= 0.4 for x in b) for h in hand)
                    false += sum(not any(iou(tuple(x), h) >= 0.4 for h in hand + ignored.get(r["path"], []))
                                 for x in b)
                lost = sum(len(kept(r, thr, large, rule)[0]) == 0 for r in recs["labelled"])
                nf = [(r["path"], len(kept(r, thr, large, rule)[0])) for r in recs["no_face"]]
                printed = sum(n for p, n in nf if p.endswith(PRINTED_FACE))
                other = sum(len(kept(r, thr, large, rule)[0]) for r in recs["other groups"])
                lfw = [kept(r, thr, large, rule) for r in recs["lfw"]]
                grp = [kept(r, thr, large, rule)[1] for r in recs["dlib_faces"] + recs["other groups"]]
                print(f"{thr:9.2f} {large:5.2f} {rule:>13} | {found:4d}/{n_truth:<5d} {false:5d} | "
                      f"{lost:3d} lost | {sum(n for _, n in nf) - printed:7d} {printed:9d} | {other:9d} | "
                      f"{sum(len(b) == 0 for b, _ in lfw):8d} {np.median([c for _, c in lfw]):11.3f} "
                      f"{np.median(grp):14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
