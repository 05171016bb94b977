"""Planning a nightly rerun at archive scale: N catalogued photos, nothing changed.

    nice -n 5 .venv/bin/python -m bench.catalog_scale [--photos 3000000] [--parts 3000] [--json]

Writes a synthetic output (images/ parts of the IMAGES schema, each with its empty faces part) of
N photos in --parts parts, with the catalog checkpoint the run that wrote them leaves
(plan.save_checkpoint, once the folders have settled: the next night comes later), and a listing
that matches it (the ImageRefs `facejob index` lists), then plans in a fresh process, as a run
does (plan.read_catalog + plan.make_plan), and prints that process's peak RSS (the listing
included) and the plan time. Then the same for 100,000 photos (--ratio-photos) in 10,000 parts
and in 10: parts_ratio = plan time with 10,000 / with 10 (medians of --repeats, interleaved);
parts_ratio_listed, the same when the part folders changed since the checkpoint (the night after
a run that wrote parts: every part is listed and its version checked, none is read); and
parts_ratio_compacted after `facejob compact` of the 10,000 parts (and a run since).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from facejob.indexing import plan as planning
from facejob.indexing.compact import compact
from facejob.contract.schema import FACES, IMAGES
from facejob.io.sources import ImageRef
from facejob.io.storage import SETTLE_S, LocalStore, write_parquet

ROOT = "/archive"


def listing(n: int) -> Iterator[ImageRef]:
    """The photos as a listing streams them (sources.list_images): 1,000 to a folder."""
    return (ImageRef(f"{ROOT}/{i // 1000:05d}/{i:08d}.jpg", 100_000 + i % 7919, 1.7e9 + i) for i in range(n))


def write_catalog(out: Path, n: int, parts: int) -> None:
    """The output of an earlier run that indexed listing(n), in `parts` parts."""
    store = LocalStore(out)
    empty_faces = FACES.empty_table()
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    for p in range(parts):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        i = np.arange(lo, hi)
        k = hi - lo
        shard = f"{p:016x}"
        cols = {"uri": pa.array([f"{ROOT}/{j // 1000:05d}/{j:08d}.jpg" for j in range(lo, hi)]),
                "size": pa.array(100_000 + i % 7919), "mtime": pa.array(1.7e9 + i.astype(np.float64)),
                "sha256": pa.array([f"{j:064x}" for j in range(lo, hi)]), "width": pa.array(np.full(k, 4000, np.int32)),
                "height": pa.array(np.full(k, 3000, np.int32)), "phash": pa.array(i),
                "status": pa.array(["no_face"] * k), "n_faces": pa.array(np.zeros(k, np.int32)),
                "shard": pa.array([shard] * k)}
        images = pa.table({f.name: cols.get(f.name, pa.nulls(k, f.type)) for f in IMAGES}, schema=IMAGES)
        write_parquet(store, planning.FACES_DIR + planning.part_name(shard), empty_faces)
        write_parquet(store, planning.IMAGES_DIR + planning.part_name(shard), images)


def previous_run(*outs: Path) -> None:
    """Leave each output as the run that wrote its parts does: with an up-to-date checkpoint,
    written once the part folders have settled (a night later, as a rerun comes)."""
    time.sleep(SETTLE_S)
    for out in outs:
        planning.save_checkpoint(LocalStore(out))


def touch_folders(*outs: Path) -> None:
    """Change each output's part folders (a file added and removed) without changing a part."""
    for out in outs:
        for folder in (planning.IMAGES_DIR, planning.FACES_DIR):
            (out / folder / ".touched").write_bytes(b"")
            (out / folder / ".touched").unlink()


def measure(out: str, n: int) -> dict:
    """Plan a rerun of listing(n) against `out` (this process: the driver)."""
    listed = planning.listing_table(listing(n))   # as the driver turns list_images' stream into columns
    t0 = time.perf_counter()
    catalog = planning.read_catalog(LocalStore(out))
    plan = planning.make_plan(listed, catalog, [ROOT])
    plan_s = time.perf_counter() - t0
    assert plan.unchanged == n and not plan.todo and not plan.retire, "the listing should match the catalog"
    return {"plan_s": plan_s, "peak_rss_gib": peak_rss_gib(), "parts_read": catalog.parts_read}


def peak_rss_gib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: the latter keeps the peak of the
    process that started this one (Linux carries it across exec), here the bench's own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def fresh(out: Path, n: int) -> dict:
    """measure() in a new process, so its peak RSS is the plan's alone."""
    r = subprocess.run([sys.executable, __file__, "--measure", str(out), "--photos", str(n)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=3_000_000)
    ap.add_argument("--parts", type=int, default=3000)
    ap.add_argument("--ratio-photos", type=int, default=100_000, help="photos of the parts_ratio catalogs")
    ap.add_argument("--ratio-parts", type=int, nargs=2, default=[10_000, 10], metavar=("MANY", "FEW"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.photos)))
        return
    say = (lambda *a: None) if args.json else print
    work = args.work or Path(tempfile.mkdtemp(prefix="catalog_scale_"))
    try:
        t0 = time.perf_counter()
        write_catalog(work / "big", args.photos, args.parts)
        many, few = args.ratio_parts
        write_catalog(work / "many", args.ratio_photos, many)
        write_catalog(work / "few", args.ratio_photos, few)
        previous_run(work / "big", work / "many", work / "few")
        say(f"catalog: {args.photos:,} photos in {args.parts:,} parts (and {args.ratio_photos:,} photos in {many:,} "
            f"and in {few:,}), written in {time.perf_counter() - t0:.0f} s")
        load0 = os.getloadavg()[0]
        big = fresh(work / "big", args.photos)
        say(f"plan of a rerun, nothing changed: {big['plan_s']:.1f} s, driver peak RSS {big['peak_rss_gib']:.2f} GiB, "
            f"{big['parts_read']} parts read (load before {load0:.1f})")

        def plan_medians() -> tuple[float, float]:
            """Median plan seconds of the many-part and the few-part catalog, interleaved."""
            t_many, t_few = [], []
            for _ in range(args.repeats):
                t_many.append(fresh(work / "many", args.ratio_photos)["plan_s"])
                t_few.append(fresh(work / "few", args.ratio_photos)["plan_s"])
            return statistics.median(t_many), statistics.median(t_few)

        m_many, m_few = plan_medians()
        ratio = m_many / m_few
        say(f"{args.ratio_photos:,} photos: plan {m_many:.2f} s in {many:,} parts, "
            f"{m_few:.2f} s in {few:,} (medians of {args.repeats}): ratio {ratio:.2f}")
        touch_folders(work / "many", work / "few")
        m_listed, m_few_listed = plan_medians()
        ratio_l = m_listed / m_few_listed
        say(f"part folders changed since the checkpoint: plan {m_listed:.2f} s in {many:,} parts, "
            f"{m_few_listed:.2f} s in {few:,}: ratio {ratio_l:.2f}")
        c = compact(str(work / "many"))
        say(f"facejob compact: {c.parts_before:,} parts → {c.parts_after:,} in {c.seconds:.1f} s")
        previous_run(work / "many", work / "few")   # the next night: both checkpoints up to date again
        m_comp, m_few2 = plan_medians()
        ratio_c = m_comp / m_few2
        say(f"after compaction: plan {m_comp:.2f} s in {c.parts_after:,} parts, "
            f"{m_few2:.2f} s in {few:,}: ratio {ratio_c:.2f}")
        print(json.dumps({"photos": args.photos, "parts": args.parts, "plan_s": round(big["plan_s"], 2),
                          "driver_peak_rss_gib": round(big["peak_rss_gib"], 3), "parts_read": big["parts_read"],
                          "parts_ratio": round(ratio, 2), "plan_s_many_parts": round(m_many, 2),
                          "parts_ratio_listed": round(ratio_l, 2), "plan_s_many_parts_listed": round(m_listed, 2),
                          "parts_ratio_compacted": round(ratio_c, 2), "compacted_parts": c.parts_after,
                          "compact_s": round(c.seconds, 2),
                          "plan_s_few_parts": round(m_few, 2), "cores": os.cpu_count(),
                          "load_before": round(load0, 1)}))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
