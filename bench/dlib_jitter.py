"""dlib's own pipeline on LFW pairs, one pass against jittered copies (issue 20's reference figure).

    nice -n 5 .venv/bin/python -m bench.dlib_jitter [--pairs lfw/pairsDevTest.txt] [--jitters 10] [--json]

dlib, called directly (no facejob code on the face path): HOG upsample 1, the face nearest the
photo's centre (a central box where HOG finds none), 5-point landmarks, and its network's
descriptor from one pass over the chip and averaged over --jitters copies
(`compute_face_descriptor(img, shape, N)`: random crops of scale 0.97-1, shift 2 %, rotation
+-3 degrees, mirrored half the time). Accuracy is `facejob eval`'s: 10 folds, each tested at the
threshold best on the other nine. dlib's python example says 99.13 % one pass, 99.38 % with 100
copies and 99.3 % with 10, on its own LFW test.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
import warnings
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from facejob.reduce.evaluate import fold_accuracy, read_pairs

DATA = Path(os.environ.get("FACEJOB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
_dlib = {}      # per worker process: the detector, landmark model and network, loaded once


def _load(jitters: int) -> None:
    import dlib

    models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    _dlib.update(dlib=dlib, det=dlib.get_frontal_face_detector(), jitters=jitters,
                 sp=dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
                 rec=dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")))


def describe(path: Path) -> tuple[str, np.ndarray, np.ndarray, bool]:
    """(path, one-pass descriptor, jittered descriptor, whether HOG found a face)."""
    dlib, rec = _dlib["dlib"], _dlib["rec"]
    img = dlib.load_rgb_image(str(path))
    h, w = img.shape[:2]
    boxes = list(_dlib["det"](img, 1))
    centre = lambda b: ((b.left() + b.right()) / 2 - w / 2) ** 2 + ((b.top() + b.bottom()) / 2 - h / 2) ** 2  # noqa: E731
    box = min(boxes, key=centre) if boxes else dlib.rectangle(w // 2 - 55, h // 2 - 55, w // 2 + 55, h // 2 + 55)
    shape = _dlib["sp"](img, box)
    return (str(path), np.array(rec.compute_face_descriptor(img, shape)),
            np.array(rec.compute_face_descriptor(img, shape, _dlib["jitters"])), bool(boxes))


def accuracy(d: np.ndarray, same: np.ndarray, fold: np.ndarray) -> dict:
    with warnings.catch_warnings():      # a tiny run leaves some folds without test pairs
        warnings.simplefilter("ignore", RuntimeWarning)
        acc = fold_accuracy(d, same, fold)
    return {"accuracy": round(float(np.nanmean(acc)) * 100, 2), "std": round(float(np.nanstd(acc)) * 100, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=str(DATA / "lfw" / "pairsDevTest.txt"))
    ap.add_argument("--images", default=str(DATA / "lfw" / "images"))
    ap.add_argument("--jitters", type=int, default=10)
    ap.add_argument("--limit", type=int, default=0, help="only this many pairs, spread over the file")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    pairs = read_pairs(args.pairs)
    keep = np.arange(len(pairs.same))
    if args.limit:
        keep = np.unique(np.linspace(0, len(keep) - 1, args.limit).astype(np.int64))
    a, b = [pairs.a[i] for i in keep], [pairs.b[i] for i in keep]
    same, fold = pairs.same[keep], pairs.fold[keep]
    names = sorted(set(a) | set(b))
    t0 = time.perf_counter()
    with Pool(args.workers, initializer=_load, initargs=(args.jitters,)) as pool:
        got = {p: (one, many, found) for p, one, many, found in
               pool.imap_unordered(describe, [Path(args.images) / n for n in names], chunksize=8)}
    seconds = time.perf_counter() - t0
    line = {"pairs": len(keep), "images": len(names), "no_face": sum(not f for _, _, f in got.values()),
            "jitters": args.jitters, "seconds": round(seconds, 1)}
    for k, key in ((0, "one_pass"), (1, "jittered")):
        d = np.array([np.linalg.norm(got[str(Path(args.images) / x)][k] - got[str(Path(args.images) / y)][k])
                      for x, y in zip(a, b)])
        line[key] = accuracy(d, same, fold)
    if not args.json:
        print(f"{line['images']} photos in {seconds:.0f} s ({line['no_face']} without a HOG face); "
              f"one pass {line['one_pass']['accuracy']:.2f} % +- {line['one_pass']['std']:.2f}, "
              f"{args.jitters} jitters {line['jittered']['accuracy']:.2f} % +- {line['jittered']['std']:.2f}")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
