"""How close is the PyTorch ResNet port to dlib, over every face chip of a photo set?

Chips are cut by dlib itself (HOG detector, 5-point landmarks, get_face_chips 150/0.25), so
only the descriptor network is compared. Default photo set: all of labelled/ plus the LFW
View 1 images named in lfw/pairsDevTest.txt.

    nice -n 5 .venv/bin/python -m bench.port_equality [--data ../shared/data] [--limit N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from facejob.face.model_files import model_path

REPO = Path(__file__).resolve().parents[1]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def labelled_paths(data: Path) -> list[Path]:
    return sorted(p for p in (data / "labelled").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def view1_paths(data: Path, pairs_file: str = "pairsDevTest.txt") -> list[Path]:
    """Unique LFW images named in a View 1 pairs file (`name i j` / `name1 i name2 j`)."""
    out: dict[Path, None] = {}
    for line in (data / "lfw" / pairs_file).read_text().splitlines()[1:]:
        f = line.split()
        if len(f) not in (3, 4):
            continue
        named = [(f[0], f[1]), (f[0], f[2])] if len(f) == 3 else [(f[0], f[1]), (f[2], f[3])]
        for name, i in named:
            out[data / "lfw" / "images" / name / f"{name}_{int(i):04d}.jpg"] = None
    return list(out)


def dlib_chips(paths: list[Path], limit: int = 0, upsample: int = 1) -> tuple[np.ndarray, list[str]]:
    """(n, 150, 150, 3) uint8 chips of every face dlib's HOG finds, and their source paths."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(model_path("landmarks5")))
    chips: list[np.ndarray] = []
    sources: list[str] = []
    for path in paths:
        try:
            img = dlib.load_rgb_image(str(path))
        except RuntimeError as e:  # an unreadable file is reported, not fatal
            print(f"skip {path}: {e}", file=sys.stderr)
            continue
        shapes = dlib.full_object_detections([predictor(img, r) for r in detector(img, upsample)])
        if len(shapes):
            for chip in dlib.get_face_chips(img, shapes, size=150, padding=0.25):
                chips.append(np.asarray(chip))
                sources.append(str(path))
        if limit and len(chips) >= limit:
            break
    if limit:
        chips, sources = chips[:limit], sources[:limit]
    return np.stack(chips) if chips else np.zeros((0, 150, 150, 3), np.uint8), sources


def dlib_descriptors(chips: np.ndarray) -> np.ndarray:
    import dlib

    rec = dlib.face_recognition_model_v1(str(model_path("resnet")))
    return np.array(rec.compute_face_descriptor(list(chips)), dtype=np.float64).reshape(-1, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--limit", type=int, default=0, help="stop after this many chips per set (0 = all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()

    import torch

    from facejob.face.dlibport.resnet import TorchEmbedder

    if args.threads:
        torch.set_num_threads(args.threads)
    embedder = TorchEmbedder(device="cpu")
    sets = {"labelled": labelled_paths(args.data), "lfw_view1_devtest": view1_paths(args.data)}
    all_diff, all_dist = [], []
    for name, paths in sets.items():
        t0 = time.perf_counter()
        chips, sources = dlib_chips(paths, args.limit)
        t1 = time.perf_counter()
        ref = dlib_descriptors(chips)
        t2 = time.perf_counter()
        got = embedder.embed(chips).astype(np.float64)
        t3 = time.perf_counter()
        diff = np.abs(got - ref)
        dist = np.linalg.norm(got - ref, axis=1)
        all_diff.append(diff.ravel())
        all_dist.append(dist)
        worst = int(dist.argmax()) if len(dist) else -1
        print(f"{name}: {len(paths)} images, {len(chips)} chips "
              f"(chips {t1 - t0:.0f}s, dlib {t2 - t1:.1f}s, torch {t3 - t2:.1f}s)")
        if len(chips):
            print(f"  max |diff| {diff.max():.3g}  median |diff| {np.median(diff):.3g}  "
                  f"max L2 {dist.max():.3g}  median L2 {np.median(dist):.3g}  worst: {sources[worst]}")
    d, l2 = np.concatenate(all_diff), np.concatenate(all_dist)
    print(f"ALL: {len(l2)} chips  max |diff| {d.max():.3g}  median |diff| {np.median(d):.3g}  "
          f"max L2 {l2.max():.3g}  (torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
