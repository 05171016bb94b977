"""The `facejob index` acceptance figures on the shared photo folders, each next to dlib called directly.

    python -m bench.index_acceptance [--data ../shared/data] [--out /tmp/o]

Prints: images rows vs files listed, the share of labelled photos with a face, hand-labelled
boxes of groups/dlib_faces found by facejob vs by dlib's HOG detector called directly (upsample
1; a box counts as found at IoU >= 0.5), and faces reported in no_face/ by facejob vs by dlib.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import dlib
import numpy as np
import pyarrow.dataset as ds
from PIL import Image, ImageOps

import facejob  # noqa: E402
from facejob.config import IndexConfig, ModelConfig  # noqa: E402
from facejob.io.sources import list_images  # noqa: E402
from bench.boxes import iou, truth_boxes

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDERS = ["labelled", "groups", "no_face", "edge"]




def found(truth, boxes) -> int:
    return sum(any(iou(t, b) >= 0.5 for b in boxes) for t in truth)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--embedder", default="dlib")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="facejob_acceptance_"))
    sources = [str(args.data / f) for f in FOLDERS]
    cfg = IndexConfig(ModelConfig(embedder=args.embedder))

    t = time.perf_counter()
    summary = facejob.index(sources, str(out), cfg, progress=False)
    print(f"facejob index {' '.join(FOLDERS)} → {out}: {time.perf_counter() - t:.1f} s")
    listed = list(list_images(sources, cfg.extensions))
    images = ds.dataset(out / "images").to_table().to_pylist()
    faces = ds.dataset(out / "faces").to_table(columns=["uri", "left", "top", "right", "bottom"]).to_pylist()
    c = summary.report["totals"]
    print(f"images rows {len(images)} = files listed {len(listed)}: {len(images) == len(listed)}; "
          f"ok {c['ok']} + no_face {c['no_face']} + error {c['error']} = {c['ok'] + c['no_face'] + c['error']}")

    labelled = [r for r in images if "/labelled/" in r["uri"]]
    with_face = sum(r["status"] == "ok" for r in labelled)
    print(f"labelled photos with a face: {with_face}/{len(labelled)} = {with_face / len(labelled):.1%} (goal >= 95%)")

    det = dlib.get_frontal_face_detector()
    boxes: dict[str, list] = {}
    for f in faces:
        boxes.setdefault(f["uri"], []).append((f["left"], f["top"], f["right"], f["bottom"]))
    truth = truth_boxes(args.data / "groups/dlib_faces")
    ours = theirs = total = 0
    for uri, tb in truth.items():
        rgb = np.asarray(ImageOps.exif_transpose(Image.open(uri)).convert("RGB"))
        direct = [(r.left(), r.top(), r.right(), r.bottom()) for r in det(rgb, 1)]
        ours += found(tb, boxes.get(uri, []))
        theirs += found(tb, direct)
        total += len(tb)
    print(f"groups/dlib_faces hand-labelled boxes found: facejob {ours}/{total}, dlib direct {theirs}/{total}")

    nf_ours = sum(len(v) for k, v in boxes.items() if "/no_face/" in k)
    nf_theirs = 0
    for r in listed:
        if "/no_face/" in r.uri:
            rgb = np.asarray(ImageOps.exif_transpose(Image.open(r.uri)).convert("RGB"))
            nf_theirs += len(det(rgb, 1))
    print(f"faces reported in no_face/: facejob {nf_ours}, dlib direct {nf_theirs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
