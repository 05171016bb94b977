"""Peak memory and time of the clustering merge alone (linkage.agglomerate) on a synthetic kNN graph.

    nice -n 5 python -m bench.merge_memory --faces 250000 [--people N] [--impl new,old] [--repeats 1]
        [--graphs /tmp/merge_graphs] [--mmap] [--json]

Descriptors are bench/reduce_scale's (LFW-matched spread, 10 faces per person on average unless
--people); the graph is graph.knn_graph's (k = CLUSTER_K, edges up to CLUSTER_MAX_EDGE) over an
hnswlib index (M 16, ef_construction 40: cheaper than the reducer's, the graph only has to look like
one), kept in --graphs so the merge can be measured again without rebuilding it. Each merge runs in
a fresh process: it loads the descriptors and edges, starts its peak RSS afresh (Linux clear_refs),
runs `agglomerate` with the config's threshold, pair margin and link weight, and reports its peak
RSS above what it held before (`merge_extra_gib`: the merge's own memory, the descriptors excluded)
and in all (`peak_rss_gib`). `--impl old` runs the merge as it was before issue 22
(tests/linkage_reference.py). --mmap: the descriptors are read memory-mapped from a .npy, as a
task could read its part's; `{impl}_anon_peak_gib` is then the process's own (anonymous) memory at
its peak, edges and interpreter included (sampled every 2 ms). The labels of every impl run are
compared (`same_labels`; it exits non-zero where they differ).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def graph_file(folder: Path, faces: int, people: int) -> Path:
    """The cached (x, eu, ev) of this size, built first if missing."""
    path = folder / f"graph_{faces}_{people}.npz"
    if path.is_file():
        return path
    from bench.reduce_scale import calibrate, centres, person_sizes
    from facejob.config import CLUSTER_K, CLUSTER_MAX_EDGE
    from facejob.reduce.graph import knn_graph
    from facejob.reduce.hnsw import FaceIndex, IndexParams, build

    import pyarrow as pa

    rng = np.random.default_rng(0)
    c = centres(people, rng)
    s, sigma = calibrate(c, rng)
    c *= s
    who = rng.permutation(np.repeat(np.arange(people), person_sizes(faces, people, rng)))
    size = rng.lognormal(0.0, 0.25, faces).astype(np.float32) / np.float32(np.exp(0.25 ** 2))
    x = c[who] + rng.standard_normal((faces, c.shape[1])).astype(np.float32) * (sigma * size)[:, None]
    x = x.astype(np.float32)
    params = IndexParams(M=16, ef_construction=40)
    t0 = time.perf_counter()
    fi = FaceIndex(build(x, params), pa.table({"deleted": np.zeros(faces, bool)}), params)
    eu, ev = knn_graph(fi, x, np.arange(faces), CLUSTER_K, max_dist=CLUSTER_MAX_EDGE)
    print(f"graph of {faces:,} faces: {len(eu):,} edges in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, eu=eu.astype(np.int32), ev=ev.astype(np.int32))
    return path


def _vm(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 2**20


def _child(path: str, impl: str, mmap: str = "") -> None:
    """One merge in this fresh process: one JSON line. `mmap`: read the descriptors from this
    .npy memory-mapped (file pages, not the process's own memory; `anon_peak_gib` then is the
    peak of its own memory, sampled every 2 ms)."""
    from facejob.config import CLUSTER_LINK_WEIGHT, CLUSTER_PAIR_MARGIN, CLUSTER_THRESHOLD

    if impl == "old":
        from tests.linkage_reference import agglomerate
    else:
        from facejob.reduce.linkage import agglomerate
    g = np.load(path)
    x, eu, ev = (np.load(mmap, mmap_mode="r") if mmap else g["x"]), g["eu"], g["ev"]
    anon = [0.0]

    def sample():
        while True:
            anon[0] = max(anon[0], _vm("RssAnon:"))
            time.sleep(0.002)

    if mmap:
        threading.Thread(target=sample, daemon=True).start()
    before = _vm("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                  # VmHWM := VmRSS
    t0 = time.perf_counter()
    labels, rounds = agglomerate(x, eu, ev, CLUSTER_THRESHOLD, pair_margin=CLUSTER_PAIR_MARGIN,
                                 link_weight=CLUSTER_LINK_WEIGHT)
    seconds = time.perf_counter() - t0
    peak = _vm("VmHWM:")
    anon[0] = max(anon[0], _vm("RssAnon:"))
    print(json.dumps({"impl": impl, "faces": len(x), "edges": len(eu), "rounds": rounds, "merge_s": round(seconds, 2),
                      "peak_rss_gib": round(peak, 3), "merge_extra_gib": round(peak - before, 3),
                      "clusters": len(np.unique(labels)), **({"anon_peak_gib": round(anon[0], 3)} if mmap else {}),
                      "labels_sha": hashlib.sha256(np.ascontiguousarray(labels, np.int64)).hexdigest()[:16]}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(*sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=250_000)
    ap.add_argument("--people", type=int, default=0, help="default: faces / 10")
    ap.add_argument("--impl", default="new,old", help="comma-separated: new (facejob's), old (before issue 22)")
    ap.add_argument("--repeats", type=int, default=1, help="merges per impl (seconds: the median)")
    ap.add_argument("--graphs", default="/tmp/merge_graphs", help="where the built graphs are kept")
    ap.add_argument("--mmap", action="store_true",
                    help="the merges read the descriptors memory-mapped from a .npy (reports anon_peak_gib)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = graph_file(Path(args.graphs), args.faces, args.people or max(1, args.faces // 10))
    mm = ""
    if args.mmap:
        mm = str(path.with_suffix(".x.npy"))
        if not Path(mm).is_file():
            np.save(mm, np.load(path)["x"])
    line = {"faces": args.faces}
    shas = set()
    for impl in args.impl.split(","):
        runs = []
        for _ in range(args.repeats):
            r = subprocess.run([sys.executable, "-m", "bench.merge_memory", "--child", str(path), impl, mm],
                               capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"merge_memory child {impl} failed:\n{r.stderr[-3000:]}")
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        r = runs[0]
        shas |= {x["labels_sha"] for x in runs}
        extra = max(x["merge_extra_gib"] for x in runs)
        line.update({"edges": r["edges"], "rounds": r["rounds"], "clusters": r["clusters"],
                     f"{impl}_merge_s": float(np.median([x["merge_s"] for x in runs])),
                     f"{impl}_peak_rss_gib": max(x["peak_rss_gib"] for x in runs),
                     f"{impl}_merge_extra_gib": extra,
                     f"{impl}_extra_bytes_per_face": round(extra * 2**30 / args.faces)})
        if args.mmap:
            line[f"{impl}_anon_peak_gib"] = max(x["anon_peak_gib"] for x in runs)
        if not args.json:
            print(f"{impl}: {args.faces:,} faces, {r['edges']:,} edges, {r['rounds']} rounds, {r['clusters']:,} "
                  f"clusters; merge {line[f'{impl}_merge_s']:.1f} s (median of {len(runs)}), peak RSS "
                  f"{line[f'{impl}_peak_rss_gib']:.2f} GiB, of which the merge's own "
                  f"{extra:.3f} GiB ({line[f'{impl}_extra_bytes_per_face']} bytes per face)")
    line["same_labels"] = len(shas) == 1
    print(json.dumps(line) if args.json else f"same labels for every run: {line['same_labels']}")
    if not line["same_labels"]:
        raise SystemExit("merge_memory: the impls gave different labels")


if __name__ == "__main__":
    main()
