"""Face detectors side by side on hand-labelled group photos and on photos without faces.

    python -m bench.detectors [--data ../shared/data] [--detectors hog:0,hog:1,cnn:1,retinaface:1]

One run, photo by photo, every detector in turn on the same decoded pixels (so the load of a
shared machine hits them alike). Prints per detector:
  * recall on groups/dlib_faces (imglab XML boxes, ignore='1' boxes do not count): a labelled
    box is found at IoU >= 0.5. Those boxes follow dlib HOG's box convention (square, eyebrows
    to lower lip), so RetinaFace is scored with its own box and with its HOG-convention box
    (`hog_box`, the box facejob hands dlib's shape predictor);
  * faces found on every group photo (groups/*: the labelled ones and the unlabelled ones);
  * false detections: faces reported in no_face/;
  * photos/s (median seconds per photo, and total) for detection alone.
Then per group photo: faces found by each detector, and whether RetinaFace found >= HOG up1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# Before torch loads (the CNN port imports it first): OpenMP's busy-waiting makes 2-thread torch
# crawl on a loaded machine (see facejob/face/dlibport/resnet.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from facejob.image.decode import decode_image  # noqa: E402
from facejob.config import ModelConfig  # noqa: E402
from facejob.face.backends import DETECTORS, build  # noqa: E402
from facejob.face.detect import Detection  # noqa: E402
from facejob.io.sources import list_images  # noqa: E402
from bench.boxes import iou, truth_boxes  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")




def matched(truth: list, boxes: list) -> int:
    """Labelled boxes found, each detection used at most once (greedy by IoU)."""
    pairs = sorted(((iou(t, b), i, j) for i, t in enumerate(truth) for j, b in enumerate(boxes)), reverse=True)
    used_t, used_b, n = set(), set(), 0
    for v, i, j in pairs:
        if v < 0.5:
            break
        if i not in used_t and j not in used_b:
            used_t.add(i); used_b.add(j); n += 1
    return n


def exclusive(d: Detection) -> tuple[int, int, int, int]:
    return (d.left, d.top, d.right + 1, d.bottom + 1)


def make(spec: str):
    """A detector by facejob's name (`--detector`), built as `facejob index` builds it, on the CPU."""
    name, up = spec.split(":")
    if name not in DETECTORS:
        raise SystemExit(f"unknown detector {name!r} (facejob's: {', '.join(DETECTORS)})")
    return build(DETECTORS, name, ModelConfig(detector=name, device="cpu")), int(up)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--detectors", default="hog:0,hog:1,cnn:1,retinaface:1",
                    help=f"name:upsample list (names: {', '.join(DETECTORS)})")
    args = ap.parse_args()
    specs = args.detectors.split(",")
    dets = {s: make(s) for s in specs}
    truth = truth_boxes(args.data / "groups" / "dlib_faces")
    groups = sorted(str(r.uri) for r in list_images([str(args.data / "groups")], EXTENSIONS))
    no_face = sorted(str(r.uri) for r in list_images([str(args.data / "no_face")], EXTENSIONS))
    n_truth = sum(len(v) for v in truth.values())

    found = {s: 0 for s in specs}
    found_hogbox = {s: 0 for s in specs}
    per_photo: dict[str, dict[str, int]] = {}
    false = {s: 0 for s in specs}
    secs: dict[str, list[float]] = {s: [] for s in specs}
    for path in groups + no_face:
        img = decode_image(Path(path).read_bytes(), 100_000_000)
        for s in specs:
            det, up = dets[s]
            t = time.perf_counter()
            (boxes,) = det.detect([img], up)
            secs[s].append(time.perf_counter() - t)
            if path in no_face:
                false[s] += len(boxes)
                continue
            per_photo.setdefault(path, {})[s] = len(boxes)
            if path in truth:
                found[s] += matched(truth[path], [exclusive(b) for b in boxes])
                found_hogbox[s] += matched(truth[path], [
                    (b.predictor_box[0], b.predictor_box[1], b.predictor_box[2] + 1, b.predictor_box[3] + 1)
                    if b.predictor_box else exclusive(b) for b in boxes])

    print(f"{len(groups)} group photos ({len(truth)} with {n_truth} hand-labelled boxes), "
          f"{len(no_face)} photos without faces; detection only, CPU, torch threads {__import__('torch').get_num_threads()}")
    print(f"{'detector':<16}{'recall':>14}{'recall(HOG box)':>17}{'faces in groups':>17}{'false (no_face)':>17}"
          f"{'median s/photo':>16}{'photos/s':>10}")
    for s in specs:
        total = sum(secs[s])
        print(f"{s:<16}{found[s]:>6}/{n_truth} {found[s] / n_truth:5.1%}{found_hogbox[s] / n_truth:>17.1%}"
              f"{sum(p[s] for p in per_photo.values()):>17}{false[s]:>17}{np.median(secs[s]):>16.3f}"
              f"{len(secs[s]) / total:>10.2f}")
    print()
    print("faces found per group photo:")
    print(f"{'photo':<40}" + "".join(f"{s:>14}" for s in specs))
    for path, counts in per_photo.items():
        print(f"{Path(path).parent.name + '/' + Path(path).name:<40}" + "".join(f"{counts[s]:>14}" for s in specs))
    rf = next((s for s in specs if s.startswith("retinaface")), None)
    if rf and "hog:1" in specs:
        worse = [p for p, c in per_photo.items() if c[rf] < c["hog:1"]]
        print(f"{rf} finds >= hog:1 faces on {len(per_photo) - len(worse)}/{len(per_photo)} group photos"
              + (f"; fewer on: {', '.join(Path(p).name for p in worse)}" if worse else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
