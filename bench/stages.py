"""Where a photo's time goes, stage by stage, and facejob's defaults beside the face_recognition loop.

    python -m bench.stages                       # profile (300 LFW photos) + side by side (600)
    python -m bench.stages --no-side-by-side --profile 300 --save /tmp/faces_main.parquet
    python -m bench.stages --compare /tmp/faces_main.parquet   # equality with an earlier version
    python -m bench.stages --floor 96 --profile 0 --no-side-by-side   # each piece's CPU cost

Profile: one FaceModel with the defaults in this process, torch on one thread (what an index
worker with one CPU gets), `--profile` LFW photos in shards of `--shard` (after one warm-up
shard), repeated `--repeat` times. Per stage, the median over the repeats of ms per photo (and per
face): read and decode run on the prefetch thread, beside detect, landmarks + chips and embed on
the main one; write is the Parquet encoding of the two tables; "other" is the main thread's wall
time not in a stage (Python between the stages, waiting for the prefetch thread).

--save / --compare: the faces of the profiled photos (boxes, landmarks, scores, descriptors),
written once (e.g. at main) and compared with this version's: boxes and landmarks must be equal,
descriptors within 1e-5.

--floor: the CPU time (this thread's, best of 5, so a busy machine inflates it less than wall
time) of each piece of a photo's work on `--floor` LFW photos, and the two networks' arithmetic
(multiply-adds, counted on the torch modules) per photo or face and the rate ONNX Runtime runs
it at: how far each stage is from what this core can do.

Side by side: `facejob.index` of `--photos` LFW photos with the defaults and `--workers` workers on
a local Ray started beforehand (its start-up not counted), and the face_recognition loop of
bench/lfw_pairs.py (one process: PIL decode, HOG upsample 1, 5-point landmarks,
compute_face_descriptor) on the same photos, interleaved for `--rounds` rounds; photos/s per
round, medians, and their ratio. facejob's start-up (starting the workers, loading the models,
planning, run.json) is measured in each round by indexing 2 of the photos alone, and is taken off
("start-up off": (photos - 2) / (time - that time)); the rate with it is printed too. The machine is shared: the load average is
printed with every figure, and only the ratio means anything.
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("FACEJOB_DATA", REPO.parent / "shared" / "data"))

MAIN_STAGES = ("detect", "landmarks", "embed", "write")


def load() -> str:
    return "load %.1f %.1f %.1f" % os.getloadavg()


def lfw_sample(data: Path, n: int, offset: int) -> list[Path]:
    """n LFW photos spread over the whole set (every k-th of the sorted paths, from `offset`)."""
    paths = sorted((data / "lfw" / "images").rglob("*.jpg"))
    step = max(1, len(paths) // n)
    return paths[offset % step::step][:n]


def profile(paths: list[Path], shard: int, repeat: int, save: Path | None, compare: Path | None) -> None:
    from facejob.indexing.pipeline import setup_process

    setup_process(1)
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from facejob.config import EXTENSIONS, ModelConfig
    from facejob.indexing.pipeline import FaceModel
    from facejob.io.sources import list_images
    from facejob.io.storage import open_store, write_parquet

    t = time.perf_counter()
    model = FaceModel(ModelConfig())
    setup_process(1)
    print(f"FaceModel built in {time.perf_counter() - t:.1f} s; torch threads {torch.get_num_threads()}; {load()}")
    refs = list(list_images([str(p) for p in paths], EXTENSIONS))
    shards = [refs[i:i + shard] for i in range(0, len(refs), shard)]
    model.process_shard(shards[0][:20], "warm-up")
    store = open_store(tempfile.mkdtemp(prefix="stages_"))
    runs: list[dict[str, float]] = []
    faces_tables = []
    for r in range(repeat):
        per: dict[str, float] = {}
        n_faces = 0
        wall = 0.0
        cpu = time.process_time()
        for i, s in enumerate(shards):
            model.timings.clear()
            t = time.perf_counter()
            images, faces = model.process_shard(s, f"s{i}")
            t1 = time.perf_counter()
            write_parquet(store, f"faces/{i}.parquet", faces)
            write_parquet(store, f"images/{i}.parquet", images)
            wall += time.perf_counter() - t
            model.timings["write"] += time.perf_counter() - t1
            for k, v in model.timings.items():
                per[k] = per.get(k, 0.0) + v
            n_faces += faces.num_rows
            if r == 0:
                faces_tables.append(faces)
        per["other"] = wall - sum(per.get(k, 0.0) for k in MAIN_STAGES)
        per["total"] = wall
        per["cpu"] = time.process_time() - cpu
        runs.append(per)
        print(f"  run {r + 1}: {len(refs) / wall:.1f} photos/s on one thread, {per['cpu'] / len(refs) * 1e3:.1f} "
              f"CPU ms per photo (both threads) ({load()})", flush=True)
    print(f"\n{len(refs)} LFW photos, {n_faces} faces, shards of {shard}, median of {repeat} runs; {load()}")
    print(f"  {'stage':<12} {'ms/photo':>9} {'ms/face':>8}")
    for k in ("read", "decode", "detect", "landmarks", "embed", "write", "other", "total", "cpu"):
        v = statistics.median(run.get(k, 0.0) for run in runs)
        label = {"landmarks": "landmarks+chip", "other": "other (main)", "cpu": "CPU time"}.get(k, k)
        print(f"  {label:<14} {v / len(refs) * 1e3:7.2f} {v / max(n_faces, 1) * 1e3:8.2f}")
    table = pa.concat_tables(faces_tables).select(
        ["uri", "face_idx", "left", "top", "right", "bottom", "det_score", "landmarks", "embedding"])
    if save:
        pq.write_table(table, save)
        print(f"faces written to {save}")
    if compare:
        equality(pq.read_table(compare), table)


def equality(before, after) -> None:
    """Boxes, landmarks, scores and descriptors of two runs over the same photos."""
    key = lambda t: {(u, i): n for n, (u, i) in enumerate(zip(t["uri"].to_pylist(), t["face_idx"].to_pylist()))}  # noqa: E731
    kb, ka = key(before), key(after)
    common = sorted(set(kb) & set(ka))
    b, a = before.take([kb[k] for k in common]), after.take([ka[k] for k in common])
    boxes = np.stack([b[c].to_numpy() for c in ("left", "top", "right", "bottom")], 1)
    boxes_a = np.stack([a[c].to_numpy() for c in ("left", "top", "right", "bottom")], 1)
    lm_b, lm_a = (np.array(t["landmarks"].to_pylist()) for t in (b, a))
    emb_b, emb_a = (np.array(t["embedding"].to_pylist(), np.float32) for t in (b, a))
    score = np.abs(b["det_score"].to_numpy() - a["det_score"].to_numpy())
    print(f"\nequality with the saved run: faces {len(kb)} before, {len(ka)} now, {len(common)} in both")
    print(f"  boxes equal: {int((boxes == boxes_a).all(1).sum())}/{len(common)}; landmarks equal: "
          f"{int((lm_b == lm_a).all(1).sum())}/{len(common)}; max |det_score diff| {score.max():.2g}")
    print(f"  descriptors: max |diff| {np.abs(emb_b - emb_a).max():.3g} (bound 1e-5), "
          f"max L2 {np.linalg.norm(emb_b - emb_a, axis=1).max():.3g}")


def macs(net, x) -> int:
    """Multiply-adds of one forward pass of a torch network (convolutions and linear layers)."""
    import torch

    total = 0

    def count(m, _, out):
        nonlocal total
        if isinstance(m, torch.nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.inference_mode():
        net(x)
    for h in hooks:
        h.remove()
    return total


def floor(paths: list[Path]) -> None:
    """Print each piece's CPU ms on `paths` and the networks' GFLOP/s (see --floor above)."""
    from facejob.indexing.pipeline import setup_process

    setup_process(1)
    import hashlib

    import torch

    from facejob.config import ModelConfig
    from facejob.face import quality
    from facejob.face.dlibport.resnet import load_resnet
    from facejob.face.retinaface import load_retinaface
    from facejob.image import decode, phash
    from facejob.indexing.pipeline import FaceModel

    model = FaceModel(ModelConfig())
    setup_process(1)
    data = [p.read_bytes() for p in paths]
    images = [decode.open_photo(d, 10**8).level(1.0).pixels for d in data]
    boxes = model.detector.detect(images, 1)
    points = [model.aligner.landmarks(im, b) for im, b in zip(images, boxes)]
    chips = np.concatenate([model.aligner.chips(im, p) for im, p in zip(images, points)])
    n, nf = len(images), len(chips)
    if not nf:
        print("no faces on these photos: nothing to time")
        return

    def cpu(fn) -> float:
        best = float("inf")
        for _ in range(5):
            t = time.thread_time()
            fn()
            best = min(best, time.thread_time() - t)
        return best * 1e3

    hw = {im.shape[:2] for im in images}
    det_in = np.zeros((8, 3, 256, 256), np.float32) if hw == {(250, 250)} else None
    emb_in = chips[:32].transpose(0, 3, 1, 2).astype(np.float32)
    det_macs = macs(load_retinaface(), torch.zeros(1, 3, 256, 256))
    emb_macs = macs(load_resnet(), torch.zeros(1, 3, 150, 150))
    print(f"\nCPU ms (this thread, best of 5) on {n} LFW photos, {nf} faces; {load()}")
    rows = [
        ("sha256", cpu(lambda: [hashlib.sha256(d).hexdigest() for d in data]) / n, "photo"),
        ("decode (header + pixels)", cpu(lambda: [decode.open_photo(d, 10**8).level(1.0) for d in data]) / n, "photo"),
        ("pHash", cpu(lambda: [phash.phash(im) for im in images]) / n, "photo"),
        ("detect (RetinaFace, 8 per pass)", cpu(lambda: [model.detector.detect(images[i:i + 8], 1)
                                                        for i in range(0, n, 8)]) / n, "photo"),
        ("dlib 5-point predictor", cpu(lambda: [model.aligner.landmarks(im, b) for im, b in zip(images, boxes)]) / nf,
         "face"),
        ("chip (bit-exact port)", cpu(lambda: [model.aligner.chips(im, p) for im, p in zip(images, points)]) / nf,
         "face"),
        ("sharpness", cpu(lambda: quality.sharpness(chips)) / nf, "face"),
        ("embed (ResNet, 32 per pass)", cpu(lambda: model.embed(chips[:32])) / 32, "face"),
    ]
    for name, ms, per in rows:
        print(f"  {name:<34} {ms:6.3f} ms per {per}")
    session = getattr(model.detector, "_session", None)
    if det_in is not None and session is not None:
        ms = cpu(lambda: session.run(None, {"input": det_in})) / 8
        print(f"  RetinaFace network alone (256x256): {ms:.2f} ms per photo, {det_macs / 1e6:.0f} M multiply-adds: "
              f"{2 * det_macs / ms / 1e6:.0f} GFLOP/s")
    session = getattr(model.embedder, "_session", None)
    if session is not None:
        ms = cpu(lambda: session.run(None, {"chips": emb_in})) / len(emb_in)
        print(f"  ResNet network alone: {ms:.2f} ms per face, {emb_macs / 1e6:.0f} M multiply-adds: "
              f"{2 * emb_macs / ms / 1e6:.0f} GFLOP/s")


def side_by_side(paths: list[Path], workers: int, rounds: int) -> None:
    import ray

    import facejob
    from facejob.config import IndexConfig, ModelConfig, RunConfig
    from bench.lfw_pairs import DlibLoop  # bench/lfw_pairs.py: the face_recognition loop

    t = time.perf_counter()
    os.environ.setdefault("RAY_worker_niceness", "0")  # as facejob's own local Ray does
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING",
             _temp_dir=tempfile.mkdtemp(prefix="ray_stages_"))  # its own, on a shared machine
    print(f"\nside by side: {len(paths)} LFW photos, {workers} facejob workers vs the loop in one process; "
          f"Ray started in {time.perf_counter() - t:.1f} s (not counted)")
    loop = DlibLoop()
    config = IndexConfig(ModelConfig(), RunConfig(workers=workers))
    tmp = Path(tempfile.mkdtemp(prefix="stages_side_"))
    fj, fj_all, lp = [], [], []
    for r in range(rounds):
        t = time.perf_counter()
        facejob.index([str(p) for p in paths[:2]], str(tmp / f"start{r}"), config, progress=False)
        t_start = time.perf_counter() - t
        t = time.perf_counter()
        s = facejob.index([str(p) for p in paths], str(tmp / f"out{r}"), config, progress=False)
        dt = time.perf_counter() - t
        fj.append((len(paths) - 2) / (dt - t_start))
        fj_all.append(len(paths) / dt)
        print(f"  round {r + 1}: facejob {fj[-1]:.1f} photos/s start-up off ({len(paths) / dt:.1f} with its "
              f"{t_start:.1f} s start-up; {s.counts.get('faces', 0)} faces); {load()}", flush=True)
        t = time.perf_counter()
        loop.run(paths)
        lp.append(len(paths) / (time.perf_counter() - t))
        print(f"  round {r + 1}: loop {lp[-1]:.1f} photos/s; {load()}", flush=True)
    ray.shutdown()
    print(f"facejob {statistics.median(fj):.1f} photos/s start-up off, loop {statistics.median(lp):.1f} photos/s "
          f"(medians of {rounds}): {statistics.median(fj) / statistics.median(lp):.2f}x; per round "
          + ", ".join(f"{a / b:.2f}x" for a, b in zip(fj, lp)))
    print(f"with facejob's start-up: {statistics.median(fj_all):.1f} photos/s, "
          f"{statistics.median(fj_all) / statistics.median(lp):.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--profile", type=int, default=300, help="LFW photos to profile (0 = no profile)")
    ap.add_argument("--shard", type=int, default=75, help="photos per shard in the profile")
    ap.add_argument("--repeat", type=int, default=3, help="profile runs (medians)")
    ap.add_argument("--save", type=Path, help="write the profiled photos' faces to this Parquet file")
    ap.add_argument("--compare", type=Path, help="compare the profiled photos' faces with this file")
    ap.add_argument("--photos", type=int, default=600, help="LFW photos in the side-by-side check")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved side-by-side rounds (medians)")
    ap.add_argument("--no-side-by-side", action="store_true")
    ap.add_argument("--floor", type=int, default=0, help="LFW photos to time each piece's CPU cost on (0 = none)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    print(f"{os.cpu_count()} cores; {load()}")
    if args.profile:
        profile(lfw_sample(args.data, args.profile, 0), args.shard, args.repeat, args.save, args.compare)
    if args.floor:
        floor(lfw_sample(args.data, args.floor, 3))
    if not args.no_side_by_side:
        side_by_side(lfw_sample(args.data, args.photos, 7), args.workers, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
