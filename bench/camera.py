"""Camera-size photos: facejob's defaults against a face_recognition-style loop, in one run.

    python -m bench.camera --photos /tmp/camphotos  # 10 photos x 2 sizes x JPEG/HEIC, sweep, memory
    python -m bench.camera --sources 3 --sweep 1200,1600 --no-memory

Builds camera originals from ../shared/data: the 9 group photos with hand-labelled boxes
(groups/dlib_faces) and a portrait, each scaled to fit 4032x3024 and 6000x4000 (padded with
grey, so the known boxes scale with them) and saved as JPEG (q90) and HEIC (q90): 40 photos, in a
temp dir or --photos (HEIC encoding takes minutes; a kept folder is reused).

Contenders, each over the same photos with 2 worker processes:
- loop: what a face_recognition user writes: PIL decode of the full photo, dlib HOG with
  upsample 1 on it, 5-point landmarks and one compute_face_descriptor per face.
- facejob: `facejob.index` with its defaults (working copy of `work_size` px), on a local Ray
  started beforehand; photos/s from run.json's processing time (Ray's start-up excluded, model
  loading included); twice (before and after the loop), the median reported. Also with
  `--embedder dlib` (the same descriptors from dlib's own code), and per format. The sweep reruns
  it at other working sizes: recall vs photos/s.

Recall: a face counts as found when a box has IoU >= 0.5 with it. "known": the hand-labelled
boxes of the group photos, and the portrait's face as dlib finds it in the original (small)
photo, scaled with the photo; facejob must find at least as many of them as the loop. "loop
faces": every box the loop found (false positives included), for reference.
Peak RSS per worker: run.json's worker_peak_rss_mb, and VmHWM of the loop's processes.
Memory: one 50 MP JPEG and one 50 MP PNG (decoded in full, like HEIC) through the FaceModel in a
fresh process each, and its peak RSS (the documented bound: 1.5 GB per worker); --no-memory skips.
The machine is shared: absolute speeds are low; the ratio is measured side by side.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
from PIL import Image

import facejob
from facejob.config import IndexConfig, ModelConfig, RunConfig
from bench.boxes import iou, truth_boxes

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data"
SIZES = ((4032, 3024), (6000, 4000))
# The group photos of groups/dlib_faces with hand-labelled boxes (bench/boxes.py reads them).
GROUPS = [f"groups/dlib_faces/{n}.jpg" for n in ("2008_002470", "2008_007676", "2009_004587", "2008_001322",
                                                  "2008_002506", "2008_004176", "2007_007763", "2008_002079",
                                                  "2008_001009")]
PORTRAIT = "labelled/fr_knn/train/obama/obama.jpg"


def known_boxes(data: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    return {"groups/dlib_faces/" + Path(k).name: v for k, v in truth_boxes(data / "groups/dlib_faces").items()}


def build(data: Path, sources: list[str], formats: list[str], dest: Path) -> dict[str, list]:
    """Write the camera photos; name -> known boxes in its pixels ([] when none are labelled)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    truth = known_boxes(data)
    out = {}
    import dlib

    hog = dlib.get_frontal_face_detector()
    for rel in sources:
        src = Image.open(data / rel).convert("RGB")
        for w, h in SIZES:
            s = min(w / src.width, h / src.height)
            size = (round(src.width * s), round(src.height * s))
            ox, oy = (w - size[0]) // 2, (h - size[1]) // 2
            canvas = Image.new("RGB", (w, h), (128, 128, 128))
            canvas.paste(src.resize(size, Image.LANCZOS), (ox, oy))
            if rel not in truth:   # a portrait: its face as dlib finds it in the original photo
                truth[rel] = [(r.left(), r.top(), r.right(), r.bottom()) for r in hog(np.asarray(src), 1)]
            boxes = [(l * s + ox, t * s + oy, r * s + ox, b * s + oy) for l, t, r, b in truth[rel]]
            for fmt in formats:
                name = f"{Path(rel).stem}_{w}x{h}.{fmt}"
                if not (dest / name).exists():   # HEIC encoding is slow: --photos reuses a folder
                    canvas.save(dest / name, "JPEG" if fmt == "jpg" else "HEIF", quality=90)
                out[name] = boxes
    return out


# ---------------------------------------------------------------------------- the loop

_models = None


def _loop_init() -> None:
    global _models
    import dlib
    import pillow_heif

    from facejob.face.model_files import model_path

    pillow_heif.register_heif_opener()
    _models = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model_path("landmarks5"))),
               dlib.face_recognition_model_v1(str(model_path("resnet"))))


def _loop_one(path: str) -> tuple[str, list[tuple[int, int, int, int]], float, float]:
    detector, predictor, net = _models
    t = time.perf_counter()
    img = np.asarray(Image.open(path).convert("RGB"))         # face_recognition.load_image_file
    rects = detector(img, 1)                                  # face_locations(img, 1, "hog")
    for r in rects:                                           # face_encodings(img, locations)
        net.compute_face_descriptor(img, predictor(img, r))
    rss = peak_mib()
    return Path(path).name, [(r.left(), r.top(), r.right(), r.bottom()) for r in rects], rss, time.perf_counter() - t


def peak_mib() -> float:
    """This process image's peak resident memory (VmHWM; ru_maxrss would include the parent's
    at fork time)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_loop(paths: list[Path], workers: int) -> tuple[dict[str, list], float, float, dict[str, float]]:
    """Boxes per photo, photos/s, peak RSS of a worker, and seconds per photo (in a worker)."""
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, initializer=_loop_init) as pool:
        res = pool.map(_loop_one, [str(p) for p in paths], chunksize=1)
    dt = time.perf_counter() - t
    return {n: b for n, b, _, _ in res}, len(paths) / dt, max(r for _, _, r, _ in res), {n: s for n, _, _, s in res}


# ---------------------------------------------------------------------------- facejob

def run_facejob(folder: Path | list[Path], out: Path, config: IndexConfig) -> tuple[dict[str, list], float, dict]:
    srcs = [str(p) for p in folder] if isinstance(folder, list) else [str(folder)]
    s = facejob.index(srcs, str(out), config, progress=False)
    boxes: dict[str, list] = {Path(r["uri"]).name: [] for r in ds.dataset(out / "images").to_table().to_pylist()}
    for f in ds.dataset(out / "faces").to_table(columns=["uri", "left", "top", "right", "bottom"]).to_pylist():
        boxes[Path(f["uri"]).name].append((f["left"], f["top"], f["right"], f["bottom"]))
    return boxes, s.report["images_per_s"], s.report



def found(truth: dict[str, list], got: dict[str, list]) -> int:
    return sum(any(iou(t, g) >= 0.5 for g in got.get(name, [])) for name, ts in truth.items() for t in ts)


def memory(tmp: Path, data: Path) -> None:
    """Peak RSS of a fresh process that runs one 50 MP photo through the FaceModel."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    big = Image.open(data / "groups/dlib_faces/2008_002470.jpg").convert("RGB").resize((8660, 5773), Image.BILINEAR)
    code = ("import resource, sys, time; from facejob.config import ModelConfig; from facejob.indexing.pipeline import FaceModel; "
            "hwm = lambda: int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]); p = FaceModel(ModelConfig()); base = hwm(); "
            "t = time.perf_counter(); r = p.process_bytes(open(sys.argv[1], 'rb').read()); "
            "print(r.status.value, len(r.faces), round(time.perf_counter() - t, 2), base // 1024, "
            "hwm() // 1024)")
    for fmt in ("JPEG", "PNG"):   # PNG: no reduced decode, the whole 50 MP are decoded, then resized
        path = tmp / f"50mp.{fmt.lower()}"
        big.save(path, fmt, quality=90, compress_level=1)
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()
        print(f"  50 MP {fmt:4s} (8660x5773, {path.stat().st_size / 1e6:.1f} MB): status {out[0]}, {out[1]} faces, "
              f"{out[2]} s; peak RSS {out[4]} MiB (models loaded: {out[3]} MiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--sources", type=int, default=len(GROUPS) + 1,
                    help="source photos: the first N-1 labelled group photos plus one portrait")
    ap.add_argument("--formats", default="jpg,heic")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sweep", default="800,1024,1200,1600,2400", help="working sizes to rerun facejob at")
    ap.add_argument("--photos", type=Path, help="folder for the camera photos (kept; reused when rerun)")
    ap.add_argument("--no-loop", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="camera_"))
    folder = args.photos or tmp / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    sources = GROUPS[:max(args.sources - 1, 1)] + [PORTRAIT]
    t = time.perf_counter()
    truth = build(args.data, sources, args.formats.split(","), folder)
    paths = sorted(folder.iterdir())
    print(f"{len(paths)} photos ({', '.join(f'{w}x{h}' for w, h in SIZES)}; {args.formats}) from {len(sources)} "
          f"sources in {folder}, built in {time.perf_counter() - t:.0f} s; {sum(map(len, truth.values()))} known faces")

    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
    print(f"Ray started in {time.perf_counter() - t:.1f} s (not counted)")
    # facejob's defaults; only the shard size is set, to the auto rule's ~4 shards per worker
    # without its 10-photo minimum (meant for archives, it would give 12 photos one 10-photo shard).
    shard = max(1, len(paths) // (4 * args.workers))
    run = RunConfig(workers=args.workers, shard_size=shard)
    default = IndexConfig(ModelConfig(), run)
    fj_rates = []
    fj_boxes, rate, report = run_facejob(folder, tmp / "out_default_1", default)
    fj_rates.append(rate)
    if not args.no_loop:
        loop_boxes, loop_rate, loop_rss, loop_secs = run_loop(paths, args.workers)
    _, rate, report2 = run_facejob(folder, tmp / "out_default_2", default)   # after the loop: same load
    fj_rates.append(rate)
    dlib_boxes, dlib_rate, _ = run_facejob(folder, tmp / "out_dlib", IndexConfig(ModelConfig(embedder="dlib"), run))
    fmts = args.formats.split(",")
    per_format = {}
    for fmt in fmts:   # each format alone, with the same shard size as above
        subset = [p for p in paths if p.suffix == "." + fmt]
        _, r, _ = run_facejob(subset, tmp / f"out_{fmt}", default)
        per_format[fmt] = r
    fj_rate = statistics.median(fj_rates)
    known = sum(map(len, truth.values()))

    print(f"\nfacejob defaults (work_size {default.model.work_size}, upsample {default.model.upsample}), "
          f"{args.workers} workers:")
    print(f"  {fj_rate:.3f} photos/s (runs: {', '.join(f'{r:.3f}' for r in fj_rates)}), "
          f"{report['megapixels_per_s']:.1f} MP/s; peak RSS per worker {report['worker_peak_rss_mb']:.0f} / "
          f"{report2['worker_peak_rss_mb']:.0f} MiB")
    print("  worker seconds per stage: " + ", ".join(
        f"{k[:-9]} {v:.1f}" for k, v in report["timings"].items() if k.endswith("_worker_s")))
    print(f"  faces {sum(map(len, fj_boxes.values()))}; known faces found {found(truth, fj_boxes)}/{known}")
    if not args.no_loop:
        loop_truth = {n: b for n, b in loop_boxes.items()}
        print(f"face_recognition-style loop (HOG upsample 1 on the full photo), {args.workers} processes:")
        print(f"  {loop_rate:.4f} photos/s; peak RSS per worker {loop_rss:.0f} MiB; seconds per photo in a worker: "
              + ", ".join(f"{n} {s:.0f}" for n, s in sorted(loop_secs.items())))
        for fmt, r in per_format.items():
            secs = [s for n, s in loop_secs.items() if n.endswith("." + fmt)]
            loop_fmt = args.workers / statistics.mean(secs)   # the loop's photos/s on this format alone
            print(f"  {fmt}: facejob {r:.3f} photos/s, loop {loop_fmt:.4f} (from its seconds per photo): "
                  f"{r / loop_fmt:.1f}x")
        print(f"  faces {sum(map(len, loop_boxes.values()))}; known faces found {found(truth, loop_boxes)}/{known}")
        print(f"facejob --embedder dlib (the same descriptors, dlib's own code): {dlib_rate:.3f} photos/s, "
              f"{dlib_rate / loop_rate:.1f}x the loop; known faces found {found(truth, dlib_boxes)}/{known}")
        print(f"\nspeed-up: {fj_rate / loop_rate:.1f}x photos/s (target >= 10x); of the loop's "
              f"{sum(map(len, loop_boxes.values()))} faces facejob finds {found(loop_truth, fj_boxes)} "
              f"(IoU >= 0.5); known faces: facejob {found(truth, fj_boxes)}, loop {found(truth, loop_boxes)}")
        missed = {n: [b for b in bs if not any(iou(b, g) >= 0.5 for g in fj_boxes.get(n, []))]
                  for n, bs in loop_boxes.items()}
        if any(missed.values()):
            print("  loop faces facejob missed: " + json.dumps({n: m for n, m in missed.items() if m}))

    sweep = [int(v) for v in args.sweep.split(",") if v]
    if sweep:
        print("\nsweep (recall vs speed); loop faces = those the loop found" + (" (no loop run)" if args.no_loop else ""))
        print(f"  {'work_size':>9} {'photos/s':>9} {'MP/s':>7} {'known':>7} {'loop faces':>10} {'faces':>6} {'peak MiB':>8}")
        for ws in sweep:
            boxes, r, rep = run_facejob(folder, tmp / f"out_{ws}", IndexConfig(ModelConfig(work_size=ws), run))
            lf = f"{found(loop_truth, boxes)}/{sum(map(len, loop_boxes.values()))}" if not args.no_loop else "-"
            print(f"  {ws:>9} {r:>9.3f} {rep['megapixels_per_s']:>7.1f} {found(truth, boxes):>3}/{known:<3} {lf:>10} "
                  f"{sum(map(len, boxes.values())):>6} {rep['worker_peak_rss_mb']:>8.0f}")
    ray.shutdown()
    if not args.no_memory:
        print("\nmemory, one photo in a fresh process (bound: 1536 MiB per worker):")
        memory(tmp, args.data)
    print(f"\n(temp files in {tmp}; remove when done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
