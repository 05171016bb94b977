"""The GPU path in one run: photos/s, faces/s and descriptor drift per precision / compile setting.

    python -m bench.gpu_check                        # 600 LFW photos from FACEJOB_DATA, on cuda
    python -m bench.gpu_check --photos DIR --device cuda --variants fp32,fp32+compile,bf16,fp16
    python -m bench.gpu_check --device cpu --limit 100 --variants fp32,bf16   # drift on a CPU

On a lent GPU machine (no shared data there): copy ~600 photos into an untracked folder of the
work tree first (600 LFW photos are ~10 MB) and pass it as --photos.

The reference is the CPU default (ONNX Runtime, fp32) over the same photos. Each variant is a
FaceModel(ModelConfig(device, runtime="torch", precision, compile)) that first processes a warm-up
shard (compilation, cuDNN autotuning: not counted), then all photos as one shard (RetinaFace 32
photos per pass, 512 faces per embedder pass on a GPU). Printed per variant: photos/s and faces/s
(wall time of process_shard: read, decode, detect, align, embed), seconds per stage, faces whose
box or landmarks differ from the reference, and the descriptor drift (max |diff|, max L2 distance)
of the faces with the reference's box. fp32 must stay within 1e-5 (it shares an output with the
CPU); bf16 and fp16 change the model fingerprint (ModelConfig.precision).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from bench.stages import DEFAULT_DATA, lfw_sample, load


def faces_of(model, refs) -> tuple[dict, float, dict]:
    """{(uri, face_idx): (box, landmarks, embedding)}, seconds, stage seconds of one shard."""
    model.timings.clear()
    t = time.perf_counter()
    _, faces = model.process_shard(refs, "check")
    dt = time.perf_counter() - t
    rows = faces.select(["uri", "face_idx", "left", "top", "right", "bottom", "landmarks", "embedding"]).to_pylist()
    out = {(r["uri"], r["face_idx"]): ((r["left"], r["top"], r["right"], r["bottom"]), r["landmarks"],
                                       np.asarray(r["embedding"], np.float32)) for r in rows}
    return out, dt, dict(model.timings)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--photos", type=Path, help="a folder of photos instead of the LFW sample")
    ap.add_argument("--limit", type=int, default=600, help="photos (LFW sample size, or the first N of --photos)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", default="fp32,fp32+compile,bf16,fp16,bf16+compile")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)

    import torch

    from facejob.config import EXTENSIONS, ModelConfig
    from facejob.indexing.pipeline import FaceModel
    from facejob.io.sources import list_images

    paths = (sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.limit]
             if args.photos else lfw_sample(args.data, args.limit, 7))
    refs = list(list_images([str(p) for p in paths], EXTENSIONS))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"{len(refs)} photos; device {args.device} ({gpu}); torch {torch.__version__}; {os.cpu_count()} CPUs; {load()}")

    t = time.perf_counter()
    ref, dt, _ = faces_of(FaceModel(ModelConfig(device="cpu")), refs)
    print(f"reference (CPU default, fp32): {len(ref)} faces, {len(refs) / dt:.1f} photos/s "
          f"(torch threads {torch.get_num_threads()}; {time.perf_counter() - t:.0f} s with model loading)")

    print(f"\n{'variant':<14} {'photos/s':>9} {'faces/s':>8} {'warm-up s':>9} {'boxes':>9} {'landmarks':>9} "
          f"{'max|diff|':>10} {'max L2':>8}  stage seconds")
    for variant in args.variants.split(","):
        precision, _, flag = variant.partition("+")
        try:
            t = time.perf_counter()
            model = FaceModel(ModelConfig(device=args.device, runtime="torch", precision=precision,
                                          compile=flag == "compile"))
            model.process_shard(refs[:64], "warm-up")
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            warm = time.perf_counter() - t
            got, dt, stages = faces_of(model, refs)
        except Exception as e:  # one variant failing (e.g. no compiler for torch.compile) is a finding
            print(f"{variant:<14} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]}")
            continue
        same_box = [k for k in ref if k in got and got[k][0] == ref[k][0]]
        same_lm = sum(got[k][1] == ref[k][1] for k in same_box)
        diff = np.array([np.abs(got[k][2] - ref[k][2]).max() for k in same_box] or [np.nan])
        l2 = np.array([np.linalg.norm(got[k][2] - ref[k][2]) for k in same_box] or [np.nan])
        print(f"{variant:<14} {len(refs) / dt:9.1f} {len(got) / dt:8.1f} {warm:9.1f} "
              f"{len(same_box):>4}/{len(ref):<4} {same_lm:>4}/{len(same_box):<4} {diff.max():10.2g} {l2.max():8.2g}  "
              + " ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
