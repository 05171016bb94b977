"""Same faces table from the torch backends as from dlib's own code?

    python -m bench.backends_table [--folders labelled groups] [--upsample 0]

Runs the real per-shard function (facejob.indexing.pipeline.FaceModel.process_shard) over every photo
twice: with `--detector cnn --embedder torch` (facejob's PyTorch ports) and with dlib's own
CNN detector and compute_face_descriptor swapped in. Then matches faces photo by photo and
prints: photos whose face count differs, the worst box IoU, the worst detection-score
difference and the worst descriptor difference (max abs, and L2). dlib's CNN takes seconds per
photo on a CPU, so this is slow; upsample 0 keeps it to minutes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from facejob.config import EXTENSIONS, ModelConfig  # noqa: E402
from facejob.face.detect import box_iou as iou  # noqa: E402
from facejob.indexing.pipeline import FaceModel  # noqa: E402
from facejob.io.sources import list_images  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"



def faces_by_uri(faces) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in faces.to_pylist():
        out.setdefault(f["uri"], []).append(f)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEJOB_DATA", DEFAULT_DATA)))
    ap.add_argument("--folders", nargs="+", default=["labelled", "groups"])
    ap.add_argument("--upsample", type=int, default=0)
    args = ap.parse_args()
    cfg = ModelConfig(detector="cnn", embedder="torch", upsample=args.upsample, device="cpu")
    refs = list(list_images([str(args.data / f) for f in args.folders], EXTENSIONS))

    torch_pipe = FaceModel(cfg)
    dlib_pipe = FaceModel(ModelConfig(detector="cnn-dlib", embedder="dlib", upsample=args.upsample))

    t = time.perf_counter()
    _, ours = torch_pipe.process_shard(refs, "torch")
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    _, theirs = dlib_pipe.process_shard(refs, "dlib")
    t_theirs = time.perf_counter() - t

    ours_by, theirs_by = faces_by_uri(ours), faces_by_uri(theirs)
    count_diff, worst_iou, worst_score, worst_abs, worst_l2, matched = 0, 1.0, 0.0, 0.0, 0.0, 0
    for ref in refs:
        a, b = ours_by.get(ref.uri, []), theirs_by.get(ref.uri, [])
        if len(a) != len(b):
            count_diff += 1
            print(f"  face count differs: {ref.uri}: torch {len(a)}, dlib {len(b)}")
        for fa in a:
            box_a = (fa["left"], fa["top"], fa["right"], fa["bottom"])
            if not b:
                continue
            fb = max(b, key=lambda f: iou(box_a, (f["left"], f["top"], f["right"], f["bottom"])))
            worst_iou = min(worst_iou, iou(box_a, (fb["left"], fb["top"], fb["right"], fb["bottom"])))
            worst_score = max(worst_score, abs(fa["det_score"] - fb["det_score"]))
            d = np.asarray(fa["embedding"]) - np.asarray(fb["embedding"])
            worst_abs, worst_l2 = max(worst_abs, float(np.abs(d).max())), max(worst_l2, float(np.linalg.norm(d)))
            matched += 1
    print(f"{len(refs)} photos of {', '.join(args.folders)} at upsample {args.upsample}: "
          f"torch {ours.num_rows} faces in {t_ours:.1f} s, dlib {theirs.num_rows} faces in {t_theirs:.1f} s "
          f"({t_theirs / t_ours:.1f}x)")
    print(f"photos with a different face count: {count_diff}; faces matched: {matched}")
    print(f"worst box IoU {worst_iou:.4f} (goal >= 0.95); worst score diff {worst_score:.2e} (goal <= 1e-3); "
          f"worst descriptor max-abs diff {worst_abs:.2e}, L2 {worst_l2:.2e} (goal <= 1e-4)")
    return 0 if count_diff == 0 and worst_iou >= 0.95 and worst_score <= 1e-3 and worst_abs <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
