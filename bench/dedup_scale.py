"""Dedup's perceptual-hash candidate search at archive scale: N synthetic photos, half without faces.

    nice -n 5 .venv/bin/python -m bench.dedup_scale [--photos 1000000] [--nightly] [--json]

The images table the reducer reads (sha256, status, phash), in memory: random 64-bit hashes, with
2 % of the photos near copies of another (0-16 bits flipped) and 1 % identical files. Times the
reducer's own path (reduce/deduping.py `_faceless_candidates`: every pair with a faceless photo whose
hashes differ in at most PHASH_MAX bits) and prints the candidates, seconds and the process's peak
RSS (the catalog included). --nightly adds a nightly run's search (the last 1 % of the photos new,
the rest's pairs saved by an earlier run): nightly_s, and that its pairs equal the full search's.
Random hashes are a floor for the candidate count: real photos' hashes are closer (bench/dedup_phash.py: 0.1 % of distinct pairs within 18 bits, random 0.05 %).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import pyarrow as pa


def catalog(n: int, seed: int = 0) -> pa.Table:
    """n photos (sha256, status, phash), every second one without faces."""
    rng = np.random.default_rng(seed)
    h = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64, endpoint=True)
    raw = rng.bytes(32 * n)
    sha = np.array([raw[i:i + 32].hex() for i in range(0, 32 * n, 32)], object)
    near = rng.choice(n, n // 50, replace=False)
    bits = np.argsort(rng.random((len(near), 64)), 1) < rng.integers(0, 17, len(near))[:, None]  # k of 64
    flip = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)
    h[near] = (h[rng.integers(0, n, len(near))].view(np.uint64) ^ flip).view(np.int64)
    same = rng.choice(n, n // 100, replace=False)
    src = rng.integers(0, n, len(same))
    h[same], sha[same] = h[src], sha[src]
    status = np.where(np.arange(n) % 2 == 0, "no_face", "ok")
    return pa.table({"sha256": pa.array(sha, pa.string()), "status": pa.array(status), "phash": pa.array(h)})


def nightly(images: pa.Table, full) -> dict:
    """A nightly run's search, as the reducer does it with OUT/dedup/phash.parquet: saved from a
    run over all but the last 1 % of the photos, which are then new."""
    import tempfile

    from facejob.io.storage import LocalStore
    from facejob.reduce import deduping

    new = max(1, images.num_rows // 100)
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        deduping._faceless_candidates(images.slice(0, images.num_rows - new), store)
        t0 = time.perf_counter()
        got, searched = deduping._faceless_candidates(images, store)
        wall = time.perf_counter() - t0
    same = np.array_equal(got.a, full.a) and np.array_equal(got.b, full.b)
    return {"nightly_new": new, "nightly_searched": searched, "nightly_s": round(wall, 1), "nightly_equal": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--nightly", action="store_true",
                    help="also time a nightly search: saved pairs of all but the last 1%% of photos, those new")
    args = ap.parse_args()
    from facejob.reduce import deduping
    from facejob.reduce import duplicates as dd

    images = catalog(args.photos)
    load0 = os.getloadavg()[0]      # other work on the machine skews the wall time
    t0, c0 = time.perf_counter(), time.process_time()
    cand, _ = deduping._faceless_candidates(images)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = {"photos": args.photos, "faceless": args.photos - args.photos // 2, "candidates": len(cand),
           "seconds": round(wall, 1), "cpu_s": round(cpu, 1), "threads": os.cpu_count(),
           "load_before": round(load0, 1),
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}
    if args.nightly:
        res.update(nightly(images, cand))
    if not args.json:
        if args.nightly:
            print(f"nightly with {res['nightly_new']:,} new photos: {res['nightly_searched']:,} contents searched in "
                  f"{res['nightly_s']:.1f} s wall (pairs equal the full search's: {res['nightly_equal']})")
        print(f"{args.photos:,} photos ({res['faceless']:,} without faces): {len(cand):,} candidate pairs within "
              f"{dd.PHASH_MAX} bits in {wall:.1f} s wall, {cpu:.1f} CPU-s on {os.cpu_count()} threads "
              f"(load before {load0:.1f}); peak RSS {res['peak_rss_gib']:.2f} GiB")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
