"""S3 versus local folder, and an incremental nightly run, on LFW photos through a real S3 server.

    python -m bench.s3_throughput                      # 2,000 photos, +100 / ~10 / -10
    python -m bench.s3_throughput --photos 200 --add 10 --change 2 --delete 2   # quick look

One process, one local Ray (models loaded once per worker, warmed up first), one moto server
on 127.0.0.1 (boto3 over HTTP, as against AWS). In order:
  1. the first run over a local folder and over the same photos in S3 (same config), built up
     in --rounds rounds that alternate local and S3, so both see the same machine load (this
     matters on a shared machine); throughput = photos / processing seconds, summed per side;
  2. add, change and delete photos in S3, run again: must reprocess exactly add + change;
  3. a run with nothing new;
  4. a from-scratch run over the final photos: must equal the incremental result (face ids,
     embeddings); and the reducer's cluster ids of untouched faces must not have moved unless
     their cluster was merged or split by the changes (a recorded event).
Prints the figures and exits non-zero if any check fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from tests.s3_server import MotoServer, assert_same_results, aws_env, make_client, rows_by_name

REPO = Path(__file__).resolve().parents[1]

BUCKET = "bench"


def pick_photos(data_dir: Path, n: int) -> list[Path]:
    """n LFW photos spread evenly over the whole set (so over many people), in a fixed order."""
    every = sorted((data_dir / "lfw" / "images").glob("*/*.jpg"))
    step = max(1, len(every) // n)
    return every[::step][:n]


def run(label: str, sources: list[str], out: str, config) -> dict:
    import facejob

    s = facejob.index(sources, out, config, progress=False)
    if not s.ok:
        raise SystemExit(f"{label}: failed shards {s.failed_shards}")
    t = s.timings
    row = {"run": label, "processed": s.counts["processed"], "faces": s.counts["faces"],
           "list_s": t["list_s"], "process_s": t["process_s"], "total_s": t["total_s"],
           "images_per_s": s.report["images_per_s"], "read_worker_s": t.get("read_worker_s", 0.0),
           "write_worker_s": t.get("write_worker_s", 0.0), "counts": s.counts}
    print(f"  {label:<22} {row['processed']:>5} photos  {row['process_s']:7.1f} s  {row['images_per_s']:6.2f} photos/s"
          f"  (list {row['list_s']:.2f} s, read {row['read_worker_s']:.2f} worker-s, write {row['write_worker_s']:.2f} worker-s)",
          flush=True)
    return row


def _total(rows: list[dict]) -> dict:
    """One side's rounds added up: photos, processing seconds, worker seconds reading."""
    out = {k: sum(r[k] for r in rows) for k in ("processed", "process_s", "read_worker_s")}
    out["images_per_s"] = out["processed"] / out["process_s"]
    return out


def cluster_ids(out: str) -> dict[str, int]:
    from facejob.io.storage import open_store, read_parquet

    t = read_parquet(open_store(out), "clusters.parquet", ["face_id", "cluster_id"]).to_pydict()
    return dict(zip(t["face_id"], t["cluster_id"]))


def last_events(out: str) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
    """The reducer's merge and split events of its latest run: kept id → absorbed ids, and
    split id → ids that took some of its faces."""
    from facejob.io.storage import open_store, read_parquet

    store = open_store(out)
    if not store.exists("cluster_events.parquet"):
        return {}, {}
    rows = read_parquet(store, "cluster_events.parquet").to_pylist()
    latest = max(r["run_at"] for r in rows)
    merges: dict[int, set[int]] = {}
    splits: dict[int, set[int]] = {}
    for r in rows:
        if r["run_at"] == latest and r["event"] in ("merge", "split"):
            (merges if r["event"] == "merge" else splits).setdefault(r["cluster_id"], set()).update(r["other_ids"])
    return merges, splits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=2000)
    p.add_argument("--add", type=int, default=100)
    p.add_argument("--change", type=int, default=10)
    p.add_argument("--delete", type=int, default=10)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--rounds", type=int, default=4, help="rounds the first run is built in (see above)")
    p.add_argument("--detector", default="hog")
    p.add_argument("--embedder", default="dlib", help="dlib: bit-exact reference; torch: faster, "
                   "embeddings equal to ~1e-6 (float32 sums depend on the batch)")
    p.add_argument("--data", default=os.environ.get("FACEJOB_DATA", str(REPO.parent / "shared" / "data")))
    args = p.parse_args()

    import ray

    import facejob
    from facejob import reduce as fr
    from facejob.io import s3 as fs3
    from facejob.config import IndexConfig, ModelConfig, RunConfig

    config = IndexConfig(ModelConfig(detector=args.detector, embedder=args.embedder),
                         RunConfig(workers=args.workers, shard_size=args.shard_size))
    chosen = pick_photos(Path(args.data), args.photos + args.add + args.change + 8)
    warmup, chosen = chosen[-8:], chosen[:-8]
    first, added = chosen[:args.photos], chosen[args.photos:args.photos + args.add]
    replacements = chosen[args.photos + args.add:]
    key = lambda p: f"lfw/{p.parent.name}/{p.name}"  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="fj-bench-"))
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            failures.append(what)

    with MotoServer() as moto:
        os.environ.update(aws_env(moto.endpoint))  # before Ray starts: its workers inherit it
        fs3.configure()
        client = make_client(moto.endpoint)
        client.create_bucket(Bucket=BUCKET)
        local = work / "lfw"

        def stage(batch: list[Path]) -> None:
            for ph in batch:
                (local / ph.parent.name).mkdir(parents=True, exist_ok=True)
                (local / ph.parent.name / ph.name).symlink_to(ph)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda ph: client.put_object(Bucket=BUCKET, Key=key(ph), Body=ph.read_bytes()), batch))

        print(f"{len(first)} LFW photos ({sum(ph.stat().st_size for ph in first) / 1e6:.1f} MB), moto at "
              f"{moto.endpoint}; config {config.detector}/{config.embedder}, {config.workers} workers, "
              f"{config.shard_size} photos per shard", flush=True)

        ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING")
        try:
            (work / "warmup").mkdir()
            for ph in warmup:
                (work / "warmup" / ph.name).symlink_to(ph)
            facejob.index([str(work / "warmup")], str(work / "warmup-out"), replace(config, shard_size=4),
                          progress=False)

            print(f"\n1. first run, local folder and S3, in {args.rounds} alternating rounds")
            sides = {"local": [], "s3": []}
            per_round = -(-len(first) // args.rounds)
            for i in range(args.rounds):
                stage(first[i * per_round:(i + 1) * per_round])
                order = ["local", "s3"] if i % 2 == 0 else ["s3", "local"]
                for side in order:
                    if side == "local":
                        sides[side].append(run(f"round {i + 1} local", [str(local)], str(work / "out"), config))
                    else:
                        sides[side].append(run(f"round {i + 1} S3", [f"s3://{BUCKET}/lfw/"], f"s3://{BUCKET}/out", config))
            loc, s3r = (_total(sides["local"]), _total(sides["s3"]))
            print(f"  local folder: {loc['processed']} photos in {loc['process_s']:.1f} s = {loc['images_per_s']:.2f} photos/s")
            print(f"  S3:           {s3r['processed']} photos in {s3r['process_s']:.1f} s = {s3r['images_per_s']:.2f} photos/s")
            ratio = s3r["images_per_s"] / loc["images_per_s"]
            # (The read stage's worker-seconds are no I/O measure: reads run on a prefetch thread
            # that waits for the GIL while dlib computes, so they are not compared here.)
            print(f"  S3 / local throughput: {ratio:.3f}")
            check(ratio >= 0.85, f"S3 throughput within 15% of local ({ratio:.3f})")
            atol = 0.0 if config.embedder == "dlib" else 1e-5
            diff = assert_same_results(f"s3://{BUCKET}/out", str(work / "out"), same_uris=False, atol=atol)
            check(True, f"S3 and local runs found the same faces, embeddings max |diff| {diff:.1e}")
            t = time.perf_counter()
            fr.reduce(f"s3://{BUCKET}/out")
            print(f"  reducer over S3 output: {time.perf_counter() - t:.1f} s")
            clusters_before = cluster_ids(f"s3://{BUCKET}/out")
            _, faces_before = rows_by_name(f"s3://{BUCKET}/out")

            print(f"\n2. incremental: +{len(added)} new, ~{len(replacements)} changed, -{args.delete} deleted")
            changed = first[:len(replacements)]
            deleted = first[len(replacements):len(replacements) + args.delete]
            for ph in added:
                client.put_object(Bucket=BUCKET, Key=key(ph), Body=ph.read_bytes())
            for ph, other in zip(changed, replacements):
                client.put_object(Bucket=BUCKET, Key=key(ph), Body=other.read_bytes())
            for ph in deleted:
                client.delete_object(Bucket=BUCKET, Key=key(ph))
            inc = run("S3 incremental", [f"s3://{BUCKET}/lfw/"], f"s3://{BUCKET}/out", config)
            c = inc["counts"]
            print(f"  counts: new {c['new']}, changed {c['changed']}, deleted {c['deleted']}, unchanged {c['unchanged']}")
            check(c["processed"] == len(added) + len(changed), f"reprocessed exactly {len(added) + len(changed)} photos")
            check((c["new"], c["changed"], c["deleted"]) == (len(added), len(changed), len(deleted)),
                  "new / changed / deleted counted right")
            t = time.perf_counter()
            fr.reduce(f"s3://{BUCKET}/out")
            print(f"  reducer after the incremental run: {time.perf_counter() - t:.1f} s")

            print("\n3. nothing new")
            t = time.perf_counter()
            idle = run("S3, nothing new", [f"s3://{BUCKET}/lfw/"], f"s3://{BUCKET}/out", config)
            check(idle["processed"] == 0, f"nothing reprocessed ({time.perf_counter() - t:.1f} s wall)")

            print("\n4. from scratch over the final photos")
            run("S3 from scratch", [f"s3://{BUCKET}/lfw/"], f"s3://{BUCKET}/scratch", config)
            try:
                diff = assert_same_results(f"s3://{BUCKET}/out", f"s3://{BUCKET}/scratch", atol=atol)
                check(True, f"incremental tables equal the from-scratch tables (face ids; embeddings max |diff| {diff:.1e})")
            except AssertionError as e:
                check(False, f"incremental tables equal the from-scratch tables: {e}")
            gone = {changed_ph.name for changed_ph in changed} | {d.name for d in deleted}
            after = cluster_ids(f"s3://{BUCKET}/out")
            untouched = [f["face_id"] for k, f in faces_before.items() if k[0] not in gone]
            moved = [(clusters_before[fid], after[fid]) for fid in untouched if after[fid] != clusters_before[fid]]
            # A face may only move with its cluster: merged into another (the new faces bridged two
            # people's clusters) or split off (a changed or deleted photo's face held it together),
            # and the reducer must have recorded that event.
            merges, splits = last_events(f"s3://{BUCKET}/out")
            unexplained = [(a, b) for a, b in moved if a not in merges.get(b, ()) and b not in splits.get(a, ())]
            print(f"  after the incremental run: {len(moved)} of {len(untouched)} untouched faces changed cluster id; "
                  f"the reducer recorded {sum(map(len, merges.values()))} merges and {len(splits)} splits")
            check(not unexplained, f"every cluster id change of an untouched face is a recorded merge or split "
                                   f"({len(unexplained)} unexplained: {unexplained[:5]})")
        finally:
            ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    print("\nall checks passed" if not failures else f"\n{len(failures)} check(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
