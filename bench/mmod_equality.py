"""Does the torch MMOD detector give dlib's boxes? Every photo of a folder, upsample 0 and 1.

    nice -n 5 .venv/bin/python -m bench.mmod_equality [--data ../shared/data/groups] [--upsample 0 1]

dlib's CNN takes seconds per photo on CPU, so its boxes are cached in /tmp/facejob_mmod_ref
(keyed by file content and upsample). The torch detector runs on all photos in one batched
call. Pass criteria: same number of boxes per photo, each dlib box matched by a torch box with
IoU >= 0.95 and |score difference| <= 1e-3. Exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from facejob.image.decode import decode_image
from facejob.face.detect import Detection, box_iou, DlibCnnDetector
from facejob.face.dlibport.mmod import TorchCnnDetector

REPO = Path(__file__).resolve().parents[1]

CACHE = Path("/tmp/facejob_mmod_ref")
IMAGE_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}



def dlib_reference(dlib_det: DlibCnnDetector | None, path: Path, img: np.ndarray, upsample: int,
                   ) -> tuple[list[Detection], float | None]:
    key = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    file = CACHE / f"{key}_up{upsample}.json"
    if file.exists():
        return [Detection(**d) for d in json.loads(file.read_text())], None
    assert dlib_det is not None
    t0 = time.perf_counter()
    dets = dlib_det.detect([img], upsample)[0]
    seconds = time.perf_counter() - t0
    CACHE.mkdir(exist_ok=True)
    file.write_text(json.dumps([d.__dict__ for d in dets]))
    return dets, seconds


def compare(ref: list[Detection], got: list[Detection]) -> tuple[bool, float, float, int]:
    """(ok, min IoU, max |score diff|, boxes identical) for one photo."""
    if len(ref) != len(got):
        return False, 0.0, float("inf"), 0
    free = list(got)
    min_iou, max_ds, same = 1.0, 0.0, 0
    for r in ref:
        best = max(free, key=lambda g: box_iou(r.edges, g.edges))
        free.remove(best)
        min_iou = min(min_iou, box_iou(r.edges, best.edges))
        max_ds = max(max_ds, abs(r.score - best.score))
        same += (r.left, r.top, r.right, r.bottom) == (best.left, best.top, best.right, best.bottom)
    return min_iou >= 0.95 and max_ds <= 1e-3, min_iou, max_ds, same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "groups")
    ap.add_argument("--upsample", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    paths = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in IMAGE_EXT)
    images = [decode_image(p.read_bytes(), 1 << 40) for p in paths]
    torch_det = TorchCnnDetector(args.device)
    dlib_det = None
    failures = 0
    for up in args.upsample:
        refs = []
        for p, img in zip(paths, images):
            cached = (CACHE / f"{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}_up{up}.json")
            if dlib_det is None and not cached.exists():
                dlib_det = DlibCnnDetector()
            dets, secs = dlib_reference(dlib_det, p, img, up)
            if secs is not None:
                print(f"  dlib up={up} {p.name}: {len(dets)} faces in {secs:.1f} s", flush=True)
            refs.append(dets)
        t0 = time.perf_counter()
        got = torch_det.detect(images, up)
        secs = time.perf_counter() - t0
        print(f"\nupsample {up}: torch-cnn ({torch_det.device}) on {len(images)} photos "
              f"in {secs:.1f} s")
        n_boxes = n_same = 0
        worst_iou, worst_ds = 1.0, 0.0
        for p, img, r, g in zip(paths, images, refs, got):
            ok, mi, ds, same = compare(r, g)
            n_boxes += len(r)
            n_same += same
            if r:
                worst_iou, worst_ds = min(worst_iou, mi), max(worst_ds, ds)
            flag = "ok  " if ok else "FAIL"
            failures += not ok
            print(f"  {flag} {p.relative_to(args.data)} {img.shape[1]}x{img.shape[0]}: "
                  f"dlib {len(r)} torch {len(g)} boxes, min IoU {mi:.3f}, "
                  f"max |dscore| {ds:.2e}, identical {same}")
            if not ok:
                for who, dets in (("dlib ", r), ("torch", g)):
                    print(f"     {who}:", [(d.left, d.top, d.right, d.bottom, round(d.score, 5))
                                          for d in dets])
        print(f"upsample {up}: {n_boxes} dlib boxes, {n_same} identical, "
              f"worst IoU {worst_iou:.4f}, worst |dscore| {worst_ds:.2e}")
    print("\nRESULT:", "PASS" if failures == 0 else f"FAIL ({failures} photo/upsample pairs)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
