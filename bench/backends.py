"""dlib vs the batched PyTorch ports, measured side by side in one run on the same inputs.

Embedder: faces/s of dlib's compute_face_descriptor and of TorchEmbedder at several batch
sizes, on the same real chips (cut by dlib from LFW View 1 images), medians of interleaved
repeats, and the speed-up ratio. The machine is shared, so read the ratios, not the
absolute numbers.

    nice -n 5 .venv/bin/python -m bench.backends --threads 1,2 --chips 96 --repeats 5

"ms/face" is wall time; "cpu ms/face" is CPU time of the process (all threads), which the
other jobs on a shared machine disturb much less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bench_embedder(chips: np.ndarray, batch_sizes: list[int], threads: list[int], repeats: int,
                   device: str = "cpu", tta: str = "none") -> dict:
    """Faces/s of dlib and of TorchEmbedder per thread count and batch size. Repeats are
    interleaved so that load from other processes hits all candidates alike. Returns the
    medians and the ratios to dlib."""
    import dlib
    import torch

    from facejob.face.dlibport.resnet import TorchEmbedder
    from facejob.face.embed import embed_chips
    from facejob.face.model_files import model_path

    n = len(chips)
    rec = dlib.face_recognition_model_v1(str(model_path("resnet")))
    chip_list = list(chips)
    embedders = {bs: TorchEmbedder(device=device, batch_size=bs) for bs in batch_sizes}

    def torch_run(e: TorchEmbedder, t: int):
        def run():
            torch.set_num_threads(t)
            embed_chips(e, chips, tta)  # the FaceModel's TTA path
        return run

    # dlib's CPU DNN runs on one thread whatever the settings.
    fns = {"dlib": lambda: rec.compute_face_descriptor(chip_list)}
    for t in threads:
        fns.update({f"torch t{t} b{bs}": torch_run(e, t) for bs, e in embedders.items()})
    for fn in fns.values():  # warm-up: allocators, oneDNN kernels, page cache
        fn()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(_timed(fn))

    def medians(name: str) -> tuple[float, float]:
        return (statistics.median(w for w, _ in runs[name]), statistics.median(c for _, c in runs[name]))

    dlib_wall, dlib_cpu = medians("dlib")
    print(f"\nembedder: {n} real chips, median of {repeats} interleaved repeats, torch {torch.__version__} "
          f"on {device}, tta={tta}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    print(f"{'backend':<16} {'faces/s':>8} {'ms/face':>8} {'x dlib':>7} {'cpu ms/face':>12} {'x dlib':>7}")
    result = {"chips": n, "repeats": repeats, "device": device, "tta": tta, "rows": {}}
    for name in runs:
        wall, cpu = medians(name)
        row = {"faces_per_s": n / wall, "ms_per_face": 1000 * wall / n, "ratio": dlib_wall / wall,
               "cpu_ms_per_face": 1000 * cpu / n, "cpu_ratio": dlib_cpu / cpu, "runs": runs[name]}
        result["rows"][name] = row
        print(f"{name:<16} {row['faces_per_s']:8.1f} {row['ms_per_face']:8.2f} {row['ratio']:6.1f}x "
              f"{row['cpu_ms_per_face']:12.2f} {row['cpu_ratio']:6.1f}x")
    return result


def bench_detector(images: list[np.ndarray], upsample: int, threads: list[int], repeats: int,
                   device: str = "cpu", batch_sizes: tuple[int, ...] = (0,)) -> dict:
    """Images/s of dlib's CNN face detector and of TorchCnnDetector on the same photos, per
    torch thread count and batch size (0 = by pixel budget). Repeats are interleaved; medians.
    Also checks, on the first repeat, that both find the same boxes."""
    import torch

    from facejob.face.detect import DlibCnnDetector
    from facejob.face.dlibport.mmod import TorchCnnDetector

    n = len(images)
    dlib_det = DlibCnnDetector()
    detectors = {bs: TorchCnnDetector(device=device, batch_size=bs) for bs in batch_sizes}
    outputs: dict[str, list] = {}

    def run(name: str, fn):
        def go():
            outputs.setdefault(name, fn())
        return go

    fns = {"dlib-cnn": run("dlib-cnn", lambda: dlib_det.detect(images, upsample))}
    for t in threads:
        for bs, det in detectors.items():
            def torch_fn(det=det, t=t):
                torch.set_num_threads(t)
                return det.detect(images, upsample)
            fns[f"torch t{t} b{bs}"] = run(f"torch t{t} b{bs}", torch_fn)
    small = [im[: min(200, im.shape[0]), : min(200, im.shape[1])] for im in images[:2]]
    dlib_det.detect(small, upsample)  # warm-up (a full dlib pass would cost minutes)
    for det in detectors.values():
        det.detect(images, upsample)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(_timed(fn))

    def boxes(dets):
        return [[(d.left, d.top, d.right, d.bottom) for d in per_image] for per_image in dets]

    ref = boxes(outputs["dlib-cnn"])
    pixels = sum(im.shape[0] * im.shape[1] for im in images)
    print(f"\ndetector: {n} real photos ({pixels / n / 1e6:.2f} Mpx mean), upsample {upsample}, "
          f"median of {repeats} interleaved repeats, torch {torch.__version__} on {device}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}")
    print(f"{'backend':<16} {'images/s':>8} {'s/image':>8} {'x dlib':>7} {'cpu s/image':>12} "
          f"{'x dlib':>7} {'same boxes':>11}")
    wall0 = statistics.median(w for w, _ in runs["dlib-cnn"])
    cpu0 = statistics.median(c for _, c in runs["dlib-cnn"])
    result = {"images": n, "upsample": upsample, "repeats": repeats, "device": device, "rows": {}}
    for name in runs:
        wall = statistics.median(w for w, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        same = sum(a == b for a, b in zip(ref, boxes(outputs[name])))
        row = {"images_per_s": n / wall, "s_per_image": wall / n, "ratio": wall0 / wall,
               "cpu_s_per_image": cpu / n, "cpu_ratio": cpu0 / cpu, "same_boxes": same,
               "runs": runs[name]}
        result["rows"][name] = row
        print(f"{name:<16} {row['images_per_s']:8.2f} {row['s_per_image']:8.3f} {row['ratio']:6.1f}x "
              f"{row['cpu_s_per_image']:12.3f} {row['cpu_ratio']:6.1f}x {same:>6}/{n}")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path,
                    default=Path(os.environ.get("FACEJOB_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--parts", nargs="+", default=["embedder"], choices=["embedder", "detector"],
                    help="which benchmarks to run")
    ap.add_argument("--threads", default="2", help="torch CPU thread counts to try, e.g. 1,2")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE"],
                    help="OpenMP idle threads: sleep (PASSIVE) or spin (ACTIVE, OpenMP's default)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu, cuda, auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chips", type=int, default=96, help="number of face chips for the embedder")
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--tta", default="none", choices=["none", "flip"])
    ap.add_argument("--photos", default="groups",
                    help="detector: folder under --data whose photos are timed")
    ap.add_argument("--max-side", type=int, default=1000,
                    help="detector: skip photos larger than this (dlib needs ~1 min for 3 Mpx)")
    ap.add_argument("--upsample", type=int, default=0, help="detector: upsample_num_times")
    ap.add_argument("--detector-batch-sizes", default="0", help="detector: 0 = by pixel budget")
    args = ap.parse_args(argv)

    # OpenMP reads this once, when torch loads.
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy

    results = {}
    if "embedder" in args.parts:
        from bench.port_equality import dlib_chips, view1_paths

        chips, _ = dlib_chips(view1_paths(args.data), limit=args.chips)
        sizes = [int(s) for s in args.batch_sizes.split(",")]
        threads = [int(t) for t in args.threads.split(",")]
        results["embedder"] = bench_embedder(chips, sizes, threads, args.repeats, args.device, args.tta)
    if "detector" in args.parts:
        from facejob.image.decode import decode_image

        paths = sorted(p for p in (args.data / args.photos).rglob("*")
                       if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        images = [decode_image(p.read_bytes(), 1 << 40) for p in paths]
        images = [im for im in images if max(im.shape[:2]) <= args.max_side]
        threads = [int(t) for t in args.threads.split(",")]
        sizes = tuple(int(s) for s in args.detector_batch_sizes.split(","))
        results["detector"] = bench_detector(images, args.upsample, threads, args.repeats,
                                             args.device, sizes)
    return results


if __name__ == "__main__":
    main()
