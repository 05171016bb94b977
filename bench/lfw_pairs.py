"""LFW View 1 verification through the real `facejob index` output, beside a plain dlib loop.

    python -m bench.lfw_pairs                      # dlib backend vs the loop, all 4,992 images
    python -m bench.lfw_pairs --embedders dlib,torch --limit 400
    python -m bench.lfw_pairs --detectors hog,retinaface --embedders torch --no-loop

The loop is how face_recognition users index a folder: for each image, HOG upsample 1,
5-point landmarks, compute_face_descriptor(img, shape), no jitter, one process. Both sides use
the face nearest the image centre (LFW photos are centred on their subject); a pair with a
missing face counts as "different people". The threshold is the one that maximises accuracy
on pairsDevTrain and is then applied to pairsDevTest. With several --detectors, every
detector x embedder combination indexes the same chunks (accuracy on the same pairs; "no face"
counts the photos where it found none).

To compare speed fairly on a busy machine the images are cut into chunks and each chunk is
indexed by every contender in turn, so all of them see the same background load. Printed
images/s exclude Ray's start-up (printed separately).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

import facejob  # noqa: E402
from facejob.io.lfw_pairs import read_lfw_pairs as read_pairs  # noqa: E402
from facejob.config import IndexConfig, ModelConfig, RunConfig  # noqa: E402
from facejob.face.backends import DETECTORS  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def centre_face(faces: list[tuple[tuple[int, int, int, int], np.ndarray]], w: int, h: int) -> np.ndarray | None:
    if not faces:
        return None
    def dist(box):
        l, t, r, b = box
        return ((l + r) / 2 - w / 2) ** 2 + ((t + b) / 2 - h / 2) ** 2
    return min(faces, key=lambda f: dist(f[0]))[1]


class DlibLoop:
    """The per-image loop of direct dlib calls (what face_recognition does)."""

    def __init__(self) -> None:
        import dlib

        from facejob.face.model_files import model_path

        self.det = dlib.get_frontal_face_detector()
        self.sp = dlib.shape_predictor(str(model_path("landmarks5")))
        self.net = dlib.face_recognition_model_v1(str(model_path("resnet")))

    def run(self, paths: list[Path]) -> dict[str, np.ndarray | None]:
        from PIL import Image

        out = {}
        for p in paths:
            img = np.asarray(Image.open(p).convert("RGB"))
            faces = [((r.left(), r.top(), r.right(), r.bottom()),
                      np.asarray(self.net.compute_face_descriptor(img, self.sp(img, r)), np.float32))
                     for r in self.det(img, 1)]
            out[str(p)] = centre_face(faces, img.shape[1], img.shape[0])
        return out


def facejob_embeddings(out: Path) -> dict[str, np.ndarray | None]:
    images = ds.dataset(out / "images", format="parquet").to_table(columns=["uri", "width", "height"]).to_pylist()
    faces = ds.dataset(out / "faces", format="parquet").to_table(
        columns=["uri", "left", "top", "right", "bottom", "embedding"]).to_pylist()
    by_uri: dict[str, list] = {}
    for f in faces:
        by_uri.setdefault(f["uri"], []).append(((f["left"], f["top"], f["right"], f["bottom"]),
                                                np.asarray(f["embedding"], np.float32)))
    return {r["uri"]: centre_face(by_uri.get(r["uri"], []), r["width"] or 0, r["height"] or 0) for r in images}


def distances(pairs, emb: dict[str, np.ndarray | None], root: Path) -> tuple[np.ndarray, np.ndarray]:
    d, same = [], []
    for a, b, s in pairs:
        ea, eb = emb.get(str(root / a)), emb.get(str(root / b))
        d.append(np.inf if ea is None or eb is None else float(np.linalg.norm(ea - eb)))
        same.append(s)
    return np.array(d), np.array(same)


def best_threshold(d: np.ndarray, same: np.ndarray) -> float:
    finite = np.sort(d[np.isfinite(d)])
    candidates = (finite[:-1] + finite[1:]) / 2 if len(finite) > 1 else np.array([0.6])
    acc = [np.mean((d < t) == same) for t in candidates]
    return float(candidates[int(np.argmax(acc))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--embedders", default="dlib",
                    help="comma-separated facejob embedders to run: dlib, torch, torch:flip (flip TTA)")
    ap.add_argument("--detectors", default="hog",
                    help=f"comma-separated facejob detectors to run (upsample 1): {', '.join(DETECTORS)}")
    ap.add_argument("--chunks", type=int, default=4, help="interleaving chunks (see module doc)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N pairs of each file (quick check)")
    ap.add_argument("--workers", type=int, default=0, help="facejob workers (0 = one per core)")
    ap.add_argument("--no-loop", action="store_true", help="skip the plain dlib loop")
    args = ap.parse_args()

    lfw = args.data / "lfw"
    root = lfw / "images"
    train, test = read_pairs(lfw / "pairsDevTrain.txt"), read_pairs(lfw / "pairsDevTest.txt")
    if args.limit:
        train, test = train[: args.limit // 2] + train[-args.limit // 2:], test[: args.limit // 2] + test[-args.limit // 2:]
    paths = sorted({root / p for a, b, _ in train + test for p in (a, b)})
    print(f"LFW View 1: {len(train)} train pairs, {len(test)} test pairs, {len(paths)} images, {os.cpu_count()} cores")

    import ray

    t = time.perf_counter()
    os.environ.setdefault("RAY_worker_niceness", "0")  # as facejob's own local Ray does
    ray.init(num_cpus=args.workers or os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    print(f"Ray start-up: {time.perf_counter() - t:.1f} s (not included below)")

    def config_of(contender: str) -> IndexConfig:
        embedder, _, tta = contender.split()[-1].partition(":")
        return IndexConfig(ModelConfig(detector=contender.split()[2], embedder=embedder, tta=tta or "none"),
                           RunConfig(workers=args.workers))

    def folder(contender: str) -> Path:
        return tmp / f"{contender.split()[2]}-{contender.split()[-1]}"

    contenders = [f"facejob --detector {d} --embedder {e}"
                  for d in args.detectors.split(",") for e in args.embedders.split(",")]
    if not args.no_loop:
        contenders.append("plain dlib loop")
    tmp = Path(tempfile.mkdtemp(prefix="lfw_pairs_"))
    seconds = {c: [] for c in contenders}
    rates = {c: [] for c in contenders}
    emb: dict[str, dict] = {c: {} for c in contenders}
    loop = DlibLoop() if not args.no_loop else None
    chunks = [paths[i::args.chunks] for i in range(args.chunks)]
    for i, chunk in enumerate(chunks):
        for c in contenders:
            t = time.perf_counter()
            if c == "plain dlib loop":
                emb[c].update(loop.run(chunk))
            else:
                facejob.index([str(p) for p in chunk], str(folder(c) / f"chunk{i}"), config_of(c),
                              progress=False)
            dt = time.perf_counter() - t
            seconds[c].append(dt)
            rates[c].append(len(chunk) / dt)
            print(f"  chunk {i + 1}/{len(chunks)} {c}: {len(chunk) / dt:.1f} images/s", flush=True)
    for c in contenders:
        if c.startswith("facejob"):
            for part in folder(c).iterdir():
                emb[c].update(facejob_embeddings(part))

    print()
    print(f"{'':48s} {'test acc':>9s} {'thresh':>7s} {'train acc':>9s} {'no face':>8s} {'images/s':>9s} {'median/chunk':>13s}")
    base_rate = sum(len(ch) for ch in chunks) / sum(seconds[contenders[-1]])
    for c in contenders:
        d_train, s_train = distances(train, emb[c], root)
        d_test, s_test = distances(test, emb[c], root)
        thr = best_threshold(d_train, s_train)
        no_face = sum(v is None for v in emb[c].values())
        rate = len(paths) / sum(seconds[c])
        print(f"{c:48s} {np.mean((d_test < thr) == s_test):9.2%} {thr:7.3f} {np.mean((d_train < thr) == s_train):9.2%} "
              f"{no_face:8d} {rate:9.2f} {statistics.median(rates[c]):13.2f}")
    detectors = args.detectors.split(",")
    for d in detectors[1:]:
        for e in args.embedders.split(","):
            a, b = f"facejob --detector {d} --embedder {e}", f"facejob --detector {detectors[0]} --embedder {e}"
            print(f"speed ratio {d} / {detectors[0]} (--embedder {e}, same chunks): "
                  f"{sum(seconds[b]) / sum(seconds[a]):.2f}x")
    if not args.no_loop:
        for c in contenders[:-1]:
            ratio = (len(paths) / sum(seconds[c])) / base_rate
            print(f"speed ratio {c} / plain dlib loop: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
