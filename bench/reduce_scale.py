"""The reducer at archive scale: 1,000,000 synthetic face descriptors of 100,000 people, from Parquet.

    nice -n 5 .venv/bin/python -m bench.reduce_scale [--faces 1000000] [--people 100000] [--out /tmp/scale_out] [--json]
    nice -n 5 .venv/bin/python -m bench.reduce_scale --faces 1000000 --nightly [--json]
        [--ray [--workers N] [--shards N] [--replicas R] [--probe P] [--label-people N] [--spill-rows N]]
        [--ray-only]
    nice -n 5 .venv/bin/python -m bench.reduce_scale --faces 200000 --people 20000 --part-rows 10000 --service [--json]

Descriptors are drawn like dlib's on real photos: people's centres spread over a few dominant
directions (real descriptors are far from isotropic), each photo = centre + noise whose size
varies from photo to photo, set so that (measured on LFW's dlib descriptors, 13,176 faces)
two photos of one person are 0.434 apart on average (LFW p90 0.533; here 0.535) and two
people 0.824 (LFW 1st percentile 0.62; here 0.635), and people's photo counts skewed like an
archive's (many with one or two photos, a few with hundreds). With 100,000 people the nearest
other person is closer than in LFW's 5,749, so the clustering has more look-alikes to keep apart.

Writes OUT/faces/part-*.parquet (the FACES schema), then runs the real reducer on it and prints:
index build time, recall@10 against exact search (numpy, 1,000 queries), queries/s at k=10,
clustering time (kNN graph + merging), clustering quality against the true people, peak RSS.

--nightly instead runs the whole `facejob reduce` (all steps) twice, each in its own process: the
first reduce of the archive, then a rerun with nothing changed (what a nightly job does when no
photo came in) — seconds per step and peak RSS of each (`nightly_s` is the rerun's wall time;
`*_own_rss_gib`: sampled RSS less the pages of Ray's object store the driver touched, which are
shared memory the raylet owns and every process mapping them counts; with --ray,
`first_workers_rss_gib`: each Ray worker process that did reducer work, and
`max_process_peak_rss_gib` over them and the driver); then the cold start of one `facejob search
--face-id` (a fresh process: index load, query, cluster and name lookup) and its peak RSS.

With --ray it then runs the reducer's Ray path (facejob/reduce/ray_reduce.py) on a local Ray of
--workers CPUs over the same archive and adds: seconds per step (faces read by tasks, shard
actors built, kNN graph over the shards, clustering in parallel parts), knn_recall_at_10 of the
sharded search against exact search (same 1,000 queries), agreement_f (pairwise F between the
Ray path's clusters and the single-process ones, at this N; `agreement_f_at_1m` at N = 1M) and
max_process_peak_rss_gib (the driver and every Ray worker that did reducer work; each one's
too; ray_merge_own_peak_gib: the clustering tasks' own memory, without the page cache of
descriptors a task over --spill-rows faces maps from disk); then per-person SVMs for
--label-people people trained in one process and in Ray tasks, and every face named both ways
(seconds, how far the models differ, share of equal labels).
--ray-only runs the Ray path alone against the single-process index and clusters
(OUT/reference_clusters.parquet) that an earlier run without it left in --out: at 1M the
reference takes as long as the Ray path, so the two can be run (and timed) apart.
--no-reference runs the Ray path with no single-process run at all (no index, no clusters, no
exact search to compare with: at 10M the reference alone needs ~35 GiB): its seconds, its
clustering against the truth, and each process's peak RSS, the driver's never having held a
single-process index.

--service instead times `facejob search --face-id` in fresh processes, loading OUT/index/ each
time against asking the search service (facejob/reduce/search_service.py, one shard per
--workers CPU of a Ray head the bench starts and ends by pid): the service's cold start, warm
seconds per search (fresh process; and one long-lived caller), peak RSS of the caller and of
each shard.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from facejob.config import MIN_QUALITY, IndexConfig
from facejob.contract.schema import EMBEDDING_DIM, FACES, IMAGES
from facejob.io.storage import LocalStore, write_parquet

INTRA, INTER = 0.434, 0.824    # mean same-person / different-person distance on LFW (dlib)
PHOTO_SPREAD = 0.25            # log-normal sigma of the per-photo noise size
PART_ROWS = 50_000
LOW_QUALITY = 450 / 15_534     # faces below the quality floor on all of LFW (README: facejob cluster)


def person_sizes(n_faces: int, n_people: int, rng: np.random.Generator) -> np.ndarray:
    """Photo count per person: log-normal (most people few photos, some hundreds), summing to n_faces."""
    w = rng.lognormal(0.0, 1.0, n_people)
    sizes = np.maximum(1, np.floor(w / w.sum() * n_faces)).astype(np.int64)
    short = n_faces - sizes.sum()
    order = np.argsort(-w)
    sizes[order[: abs(short)]] += np.sign(short)  # hand the rounding remainder to the biggest
    return sizes


def centres(n_people: int, rng: np.random.Generator) -> np.ndarray:
    """People's centres: Gaussian with a decaying spectrum (variance of axis i ~ 1 / (1 + i / 2))."""
    scale = 1.0 / np.sqrt(1.0 + np.arange(EMBEDDING_DIM) / 2.0)
    c = rng.standard_normal((n_people, EMBEDDING_DIM)).astype(np.float32) * scale.astype(np.float32)
    # Random rotation so no axis is special.
    q, _ = np.linalg.qr(rng.standard_normal((EMBEDDING_DIM, EMBEDDING_DIM)))
    return c @ q.astype(np.float32)


def calibrate(c: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """(centre scale, noise sigma) giving mean intra distance INTRA and inter distance INTER."""
    sigma = INTRA / np.sqrt(2 * EMBEDDING_DIM)
    i, j = rng.integers(0, len(c), (2, 20_000))
    dc2 = np.mean(np.sum((c[i] - c[j]) ** 2, 1))
    # inter^2 ~ s^2 * dc2 + 2 * 128 * sigma^2
    s = np.sqrt(max(INTER ** 2 - INTRA ** 2, 1e-6) / dc2)
    return float(s), float(sigma)


# Where 5 landmarks sit in a 100-pixel face box (x, y per point), and how far they move between
# two shots (sd, pixels): two shots' shapes then differ by ~0.2 (duplicates.shape_diff), copies by
# under SHAPE_TOL 0.05.
LANDMARKS = np.array([70, 38, 58, 39, 30, 38, 42, 39, 50, 62], np.float64)
LANDMARK_NOISE = 1.5


def hex_strings(rng: np.random.Generator, n: int, nbytes: int) -> pa.Array:
    """n random strings of 2 * nbytes hex digits (ids, sha256), built without a Python loop."""
    data = np.frombuffer(rng.bytes(n * nbytes).hex().encode(), np.uint8)
    offsets = np.arange(0, n * 2 * nbytes + 1, 2 * nbytes, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def schema_table(schema: pa.Schema, n: int, cols: dict) -> pa.Table:
    """`cols` as a table of `schema`, its other columns null: built from facejob's own schema, the
    archive follows it when columns are added (null = unknown, as in parts written before them)."""
    unknown = set(cols) - set(schema.names)
    if unknown:
        raise KeyError(f"not in the schema: {sorted(unknown)}")
    return pa.table({f.name: cols.get(f.name, pa.nulls(n, f.type)) for f in schema}, schema=schema)


def write_archive(out: Path, n_faces: int, n_people: int, seed: int = 0, part_rows: int = PART_ROWS,
                  landmark_noise: float = LANDMARK_NOISE) -> np.ndarray:
    """Write the synthetic faces/ and images/ parts; returns the true person of each face (in row order).
    `landmark_noise`: pixels (sd) the landmarks move from photo to photo; 0 gives every face one
    shape, so that dedup takes every pair of near faces for a possible copy."""
    rng = np.random.default_rng(seed)
    sizes = person_sizes(n_faces, n_people, rng)
    c = centres(n_people, rng)
    s, sigma = calibrate(c, rng)
    c *= s
    people = rng.permutation(np.repeat(np.arange(n_people), sizes))   # archive order is not by person
    # LOW_QUALITY of the faces below the quality floor, as on LFW: they do not seed the clusters and
    # are attached to them afterwards. Drawn apart, so the other columns stay those of earlier archives.
    qrng = np.random.default_rng([seed, 1])
    low = qrng.random(n_faces) < LOW_QUALITY
    quality = np.where(low, qrng.uniform(0, MIN_QUALITY, n_faces), qrng.uniform(MIN_QUALITY, 1, n_faces)).astype(np.float32)
    store = LocalStore(out)
    for part, lo in enumerate(range(0, n_faces, part_rows)):
        who = people[lo:lo + part_rows]
        n = len(who)
        size = rng.lognormal(0.0, PHOTO_SPREAD, n).astype(np.float32) / np.float32(np.exp(PHOTO_SPREAD ** 2))
        noise = rng.standard_normal((n, EMBEDDING_DIM)).astype(np.float32) * (sigma * size)[:, None]
        emb = (c[who] + noise).astype(np.float32)
        # Strings as long as facejob's own (face ids of 20 hex digits, sha256 of 64, archive
        # paths), 5 landmarks per face and a perceptual hash per photo: the driver holds per face
        # what it holds for a real archive, and near faces are rarely taken for copies.
        ids = hex_strings(rng, n, 10)
        sha = hex_strings(rng, n, 32)
        uris = [f"s3://archive/photos/{2000 + r % 25}/{r % 12 + 1:02d}/p{w}/IMG_{part:04d}{r:06d}.jpg"
                for r, w in enumerate(who)]
        zeros = pa.array(np.zeros(n, np.int32))
        marks = np.rint(LANDMARKS + rng.normal(0, landmark_noise, (n, LANDMARKS.size))).astype(np.int32)
        cols = {
            "face_id": ids, "uri": pa.array(uris), "sha256": sha, "face_idx": zeros,
            "left": zeros, "top": zeros, "right": pa.array(np.full(n, 100, np.int32)),
            "bottom": pa.array(np.full(n, 100, np.int32)), "det_score": pa.array(np.ones(n, np.float32)),
            "landmarks": pa.ListArray.from_arrays(pa.array(np.arange(0, marks.size + 1, LANDMARKS.size, dtype=np.int32)),
                                                  pa.array(marks.reshape(-1))),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), EMBEDDING_DIM),
            "detector": pa.array(["synthetic"] * n), "embedder": pa.array(["synthetic"] * n),
            "shard": pa.array([f"{part:04d}"] * n), "quality": pa.array(quality[lo:lo + n]),
        }
        write_parquet(store, f"faces/part-{part:04d}.parquet", schema_table(FACES, n, cols))
        # The images part is the commit marker: the reducer reads only faces parts that have one.
        write_parquet(store, f"images/part-{part:04d}.parquet", schema_table(IMAGES, n, {
            "uri": pa.array(uris), "size": pa.array(rng.integers(1 << 20, 8 << 20, n)), "etag": ids,
            "sha256": sha, "width": pa.array(np.full(n, 4000, np.int32)),
            "height": pa.array(np.full(n, 3000, np.int32)), "status": pa.array(["ok"] * n),
            "n_faces": pa.array(np.ones(n, np.int32)), "phash": pa.array(rng.integers(-2**63, 2**63 - 1, n)),
            "shard": pa.array([f"{part:04d}"] * n)}))
    store.write_bytes("run.json", json.dumps({"config": IndexConfig().to_dict()}).encode())
    return people


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def image_rss_gib() -> float:
    """This process image's peak RSS (Linux VmHWM): a child's ru_maxrss starts at its parent's at fork."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration, ValueError):
        return rss_gib()


def reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM) afresh (Linux clear_refs "5"); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def face_clusters(path: Path, face_ids: pa.Array) -> np.ndarray:
    """The cluster id of each face, in the faces' row order (the truth's): clusters.parquet is
    sorted by face_id, so its own order is not theirs."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["face_id", "cluster_id"])
    at = pc.index_in(face_ids, t.column("face_id")).fill_null(-1).to_numpy()
    if (at < 0).any():
        raise SystemExit(f"{path}: {(at < 0).sum()} faces have no cluster")
    return t.column("cluster_id").to_numpy()[at]


def pairwise_f(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Pairwise precision, recall, F over all same-cluster pairs (counted, not enumerated)."""
    def pairs(labels):
        _, c = np.unique(labels, return_counts=True)
        return float((c * (c - 1) // 2).sum())
    joint = truth.astype(np.int64) * (int(pred.max()) + 1) + pred
    tp, pp, tt = pairs(joint), pairs(pred), pairs(truth)
    p, r = tp / max(pp, 1), tp / max(tt, 1)
    return p, r, 2 * p * r / max(p + r, 1e-12)


def _child(argv: list[str]) -> None:
    """In a fresh process: one `reduce`, or `repeat` searches by face id (through the search
    service at `address` if given); prints a JSON line of seconds (the first search, and the median
    of the others) and this process's peak RSS."""
    what, out, *more = argv
    t0 = time.perf_counter()
    if what == "reduce":
        from facejob.reduce.pipeline import reduce

        workers, shards = (int(more[0]), int(more[1])) if more else (0, 0)
        if workers:
            from facejob.reduce.ray_reduce import RayReducer

            with RayReducer(workers=workers, shards=shards) as engine:
                rss = RssSampler()     # from when reduce starts: the steps' timings count from there
                s = reduce(out, engine=engine)
                workers_rss = sorted(engine.process_peaks.values(), reverse=True)
        else:
            rss = RssSampler()
            s = reduce(out)
        res = {"s": time.perf_counter() - t0, "steps": s.timings, "steps_rss_gib": rss.per_step(s.timings),
               "own_rss_gib": rss.own_peak, "steps_own_rss_gib": rss.per_step(s.timings, own=True),
               "workers_rss_gib": [round(w, 2) for w in workers_rss] if workers else []}
    else:
        from facejob.reduce.search_index import search_face

        repeat, address = (int(more[0]), more[1] or None) if more else (1, None)
        times = []
        for _ in range(repeat):
            q = search_face(out, what, k=10, address=address)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert len(q.matches) == 10
            assert q.matches[0].cluster_id is not None or not Path(out, "clusters.parquet").exists()
        res = {"s": times[0], "again_s": float(np.median(times[1:])) if repeat > 1 else None}
    print(json.dumps({**res, "rss_gib": image_rss_gib()}))


class RssSampler:
    """This process's RSS, sampled every 0.1 s in a thread from now on: `per_step` gives the
    peak within each step of a `reduce`, by its timings (steps in order, from when it started).
    Each sample also keeps the RSS less the object store's shared pages this process touched
    (RssShmem: Ray's plasma memory, mapped into every process that puts or gets an object, and
    counted in each one's RSS although the raylet owns it): `per_step(own=True)` and `own_peak`."""

    def __init__(self, every: float = 0.1):
        import threading

        self.t0, self.samples = time.perf_counter(), []
        threading.Thread(target=self._run, args=(every,), daemon=True).start()

    def _run(self, every: float) -> None:
        while True:
            with open("/proc/self/status") as f:
                kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)
                       if k in ("VmRSS", "RssShmem")}
            rss = kib["VmRSS"] / 2**20
            self.samples.append((time.perf_counter() - self.t0, rss, rss - kib.get("RssShmem", 0) / 2**20))
            time.sleep(every)

    def per_step(self, timings: dict[str, float], own: bool = False) -> dict[str, float]:
        peaks, start = {}, 0.0
        samples = list(self.samples)
        for step, seconds in timings.items():
            inside = [g[2 if own else 1] for g in samples if start <= g[0] <= start + seconds + 0.1]
            peaks[step.removesuffix("_s")] = round(max(inside, default=0.0), 2)
            start += seconds
        return peaks

    @property
    def own_peak(self) -> float:
        return max((g[2] for g in self.samples), default=0.0)


def _in_child(*argv: str) -> dict:
    """What `_child` printed, and `wall_s`: the child's whole life (interpreter start, imports)."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bench.reduce_scale", "--child", *argv],
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"reduce_scale child {argv} failed:\n{r.stderr[-3000:]}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "wall_s": time.perf_counter() - t0}


def nightly(out: Path, n_people: int, say, workers: int = 0, shards: int = 0) -> None:
    """First reduce, then a rerun with nothing changed, then a cold search: one JSON line. With
    `workers`, each reduce runs on a local Ray of that many CPUs (`shards` search shards)."""
    for p in out.iterdir():      # the reducer's outputs of an earlier bench run: so the first is a first reduce
        if p.name not in ("faces", "images", "run.json", "truth.npy"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    runs = {}
    for name in ("first", "nightly"):
        runs[name] = r = _in_child("reduce", str(out), *([str(workers), str(shards)] if workers else []))
        say(f"{name} reduce: {r['s']:.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in r['steps'].items())}), "
            f"peak RSS {r['rss_gib']:.2f} GiB (by step: "
            f"{', '.join(f'{k} {v:.2f}' for k, v in r['steps_rss_gib'].items())}); less the object store's "
            f"shared pages {r['own_rss_gib']:.2f} GiB" + (f"; Ray worker processes {r['workers_rss_gib']}" if workers else ""))
    import pyarrow.parquet as pq

    face_id = pq.read_table(out / "faces/part-0000.parquet", columns=["face_id"]).column(0)[0].as_py()
    q = _in_child(face_id, str(out))
    say(f"search --face-id cold start: {q['s']:.2f} s, peak RSS {q['rss_gib']:.2f} GiB")
    print(json.dumps({"faces": len(np.load(out / "truth.npy")), "people": n_people,
                      "first_s": round(runs["first"]["s"], 1), "nightly_s": round(runs["nightly"]["s"], 1),
                      "first_steps": runs["first"]["steps"], "nightly_steps": runs["nightly"]["steps"],
                      "first_rss_gib": round(runs["first"]["rss_gib"], 2),
                      "nightly_rss_gib": round(runs["nightly"]["rss_gib"], 2),
                      "first_steps_rss_gib": runs["first"]["steps_rss_gib"],
                      "nightly_steps_rss_gib": runs["nightly"]["steps_rss_gib"],
                      "first_own_rss_gib": round(runs["first"]["own_rss_gib"], 2),
                      "nightly_own_rss_gib": round(runs["nightly"]["own_rss_gib"], 2),
                      "first_steps_own_rss_gib": runs["first"]["steps_own_rss_gib"], "ray_workers": workers,
                      # every Ray worker process that did reducer work (shards, tasks), highest first
                      "first_workers_rss_gib": runs["first"]["workers_rss_gib"],
                      "max_process_peak_rss_gib": round(max([runs["first"]["rss_gib"], runs["nightly"]["rss_gib"],
                                                             *runs["first"]["workers_rss_gib"],
                                                             *runs["nightly"]["workers_rss_gib"]]), 2),
                      "search_cold_s": round(q["s"], 2), "search_rss_gib": round(q["rss_gib"], 2)}))


def _ray_head(cpus: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    """A Ray head of our own (own --temp-dir and ports), for the service's detached actors to
    outlive the processes that search; ended by its pid (`_end_head`), never `ray stop`."""
    from bench.fake_gpu import WORKER_PORTS, free_ports, worker_ports_from

    ports = free_ports(8)
    port, nm, om, client, agent, metrics, renv, grpc = ports
    lo = worker_ports_from(ports)
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--num-cpus={cpus}",
           f"--temp-dir={tmp}", f"--port={port}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={renv}",
           f"--dashboard-agent-grpc-port={grpc}", f"--min-worker-port={lo}", f"--max-worker-port={lo + WORKER_PORTS}",
           "--include-dashboard=false", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    env = {**os.environ, "RAY_worker_niceness": "0", "RAY_ADDRESS": ""}
    log = open(tmp.parent / "head.log", "w+b")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while subprocess.run([str(Path(sys.executable).with_name("ray")), "health-check", f"--address={address}"],
                         env=env, capture_output=True, timeout=60).returncode:
        if head.poll() is not None or time.monotonic() > deadline:
            _end_head(head)
            log.seek(0)
            raise SystemExit(f"ray head did not start: {log.read().decode(errors='replace')[-2000:]}")
        time.sleep(1)
    return head, address


def _end_head(head: subprocess.Popen) -> None:
    import signal

    # SIGKILL to its process group (it and what it started): on SIGTERM `ray start --block` can hang.
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:     # it ended already (a head that failed to start): its log says why
        pass
    head.wait()


def service(out: Path, args, say) -> None:
    """`facejob search --face-id` in fresh processes, loading OUT/index/ each time against asking
    the search service (facejob.reduce.search_service) on a Ray head of --workers CPUs: seconds
    of the cold start (actors started, shards loaded) and of warm calls, per process peak RSS."""
    import pyarrow.parquet as pq

    from facejob.reduce.embeddings import read_faces
    from facejob.reduce.hnsw import update_index

    store = LocalStore(out)
    faces = read_faces(store)
    t0 = time.perf_counter()
    update_index(store, faces, rebuild=not args.keep, log=lambda m: None)
    say(f"single-process index: {time.perf_counter() - t0:.1f} s for {len(faces):,} faces")
    del faces
    face_ids = pq.read_table(out / "faces", columns=["face_id"]).column(0)
    pick = [face_ids[i].as_py() for i in np.random.default_rng(2).choice(len(face_ids), 2 * args.repeats + 1)]
    single = [_in_child(f, str(out)) for f in pick[:args.repeats]]
    single_s, single_wall = (float(np.median([r[k] for r in single])) for k in ("s", "wall_s"))
    say(f"single process, fresh per search: median {single_s:.2f} s in search_face ({single_wall:.2f} s with "
        f"interpreter start and imports), peak RSS {single[0]['rss_gib']:.2f} GiB")
    tmp = Path(tempfile.mkdtemp(prefix="fj-svc-", dir="/tmp"))
    # `ray start` turns token auth on: the head, this process and the searching children share one token.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(16))
    head, address = _ray_head(args.workers, tmp / "ray")
    try:
        cold = _in_child(pick[-1], str(out), "1", address)
        say(f"service cold start ({args.workers} shards: actors started, parts read, shards built): {cold['s']:.2f} s")
        warm = [_in_child(f, str(out), "1", address) for f in pick[args.repeats:2 * args.repeats]]
        warm_s, warm_wall = (float(np.median([r[k] for r in warm])) for k in ("s", "wall_s"))
        say(f"service, fresh process per search: median {warm_s:.2f} s in search_face, joining Ray included "
            f"({warm_wall:.2f} s with interpreter start and imports), caller peak RSS {warm[0]['rss_gib']:.2f} GiB")
        loop = _in_child(pick[0], str(out), "21", address)
        say(f"service, one long-lived caller: {loop['again_s'] * 1000:.1f} ms per search (median of 20)")
        import ray

        from facejob.reduce.search_service import SearchService, stop
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        shards = SearchService(str(out), address).info()
        stop(str(out))
        ray.shutdown()
    finally:
        _end_head(head)
        shutil.rmtree(tmp, ignore_errors=True)
    shard_rss = max(i["peak_rss_gib"] for i in shards)
    say(f"service shards: {[i['live'] for i in shards]} faces, peak RSS {[round(i['peak_rss_gib'], 2) for i in shards]} GiB")
    print(json.dumps({"faces": len(face_ids), "shards": len(shards), "search_single_s": round(single_s, 2),
                      "search_single_wall_s": round(single_wall, 2),
                      "search_single_rss_gib": round(single[0]["rss_gib"], 2), "service_cold_s": round(cold["s"], 2),
                      "service_warm_s": round(warm_s, 2),
                      "service_warm_wall_s": round(warm_wall, 2), "service_query_ms": round(loop["again_s"] * 1000, 1),
                      "service_caller_rss_gib": round(max(r["rss_gib"] for r in [cold, *warm, loop]), 2),
                      "service_shard_rss_gib": round(shard_rss, 2),
                      "service_shard_faces": [i["live"] for i in shards]}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return _child(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=1_000_000)
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--out", default="/tmp/facejob_scale_out")
    ap.add_argument("--keep", action="store_true", help="reuse an archive already written at --out")
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    ap.add_argument("--nightly", action="store_true", help="time a first `reduce` and a rerun with nothing changed")
    ap.add_argument("--ray", action="store_true", help="also run the Ray path and compare it")
    ap.add_argument("--workers", type=int, default=2, help="--ray: local Ray CPUs (default: %(default)s)")
    ap.add_argument("--shards", type=int, default=0, help="--ray: search shards (0 = one per worker)")
    ap.add_argument("--replicas", type=int, default=None, help="--ray: cells each face is stored in")
    ap.add_argument("--probe", type=int, default=None, help="--ray: cells each query visits")
    ap.add_argument("--ray-only", action="store_true",
                    help="--ray against the index and clusters an earlier full run left in --out (implies --keep)")
    ap.add_argument("--no-reference", action="store_true",
                    help="--ray without the single-process run (no agreement or recall figures)")
    ap.add_argument("--label-people", type=int, default=100,
                    help="--ray: people whose SVMs are trained both ways (0: none)")
    ap.add_argument("--service", action="store_true",
                    help="time `facejob search` loading OUT/index/ per call against the search service on a Ray "
                         "head of --workers CPUs (one shard each)")
    ap.add_argument("--repeats", type=int, default=3, help="--service: fresh-process searches per way (median)")
    ap.add_argument("--part-rows", type=int, default=PART_ROWS, help="faces per faces/ part written")
    ap.add_argument("--spill-rows", type=int, default=None,
                    help="--ray: clustering tasks of more faces map their descriptors from local disk")
    args = ap.parse_args()
    if args.no_reference and (not args.ray or args.ray_only):
        ap.error("--no-reference goes with --ray (and not --ray-only, which compares with a reference)")
    args.keep = args.keep or args.ray_only
    say = (lambda *a: None) if args.json else print
    from facejob.reduce.clustering import cluster
    from facejob.reduce.embeddings import read_faces
    from facejob.reduce.hnsw import IndexParams, update_index

    out = Path(args.out)
    t0 = time.perf_counter()
    if args.keep and (out / "truth.npy").is_file():
        what = "reused"
    else:
        shutil.rmtree(out, ignore_errors=True)
        people = write_archive(out, args.faces, args.people, part_rows=args.part_rows)   # creates out/
        np.save(out / "truth.npy", people)
        what = f"written in {time.perf_counter() - t0:.1f} s"
    truth = np.load(out / "truth.npy")
    say(f"archive: {len(truth):,} faces of {len(np.unique(truth)):,} people, {what}")
    if args.nightly:
        return nightly(out, args.people, say, args.workers if args.ray else 0, args.shards)
    if args.service:
        return service(out, args, say)
    store = LocalStore(out)
    if args.ray_only:
        return ray_only(args, store, truth, say)
    if args.no_reference:
        for rel in ("index/params.json", "clusters.parquet", "clusters.json", REFERENCE):
            store.delete(rel)
        line = {"faces": len(truth), "people": args.people, "reference": None}
        line.update(ray_path(args, store, None, None, None, None, truth, say))
        return print(json.dumps(line))
    for rel in ("index/params.json", "clusters.parquet", "clusters.json", REFERENCE):
        store.delete(rel)

    load0 = os.getloadavg()[0]      # other work on the machine skews the wall times
    t0 = time.perf_counter()
    faces = read_faces(store)
    t_read = time.perf_counter() - t0
    say(f"read faces/: {len(faces):,} rows in {t_read:.1f} s (embeddings {faces.embeddings.nbytes / 2**20:.0f} MiB), "
          f"peak RSS so far {rss_gib():.2f} GiB")

    t0, c0 = time.perf_counter(), time.process_time()
    fi = update_index(store, faces, IndexParams(), rebuild=True, log=lambda m: None)
    t_build, c_build = time.perf_counter() - t0, time.process_time() - c0
    say(f"index build: {t_build:.1f} s wall, {c_build:.1f} CPU-s (M={fi.params.M}, "
          f"ef_construction={fi.params.ef_construction}, {os.cpu_count()} cores, load before {load0:.1f}), "
          f"file {(out / 'index/faces.hnsw').stat().st_size / 2**20:.0f} MiB")

    q = query_rows(len(faces))
    x = faces.embeddings
    exact = exact_nearest(x, q)
    rows_of_label = fi.rows_for(faces)
    nq = min(100_000, len(faces))
    for ef in (fi.params.ef_search, 2 * fi.params.ef_search):
        got, _ = fi.query(x[q], 10, ef=ef)
        got = rows_of_label[got]
        r = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
        t0, c0 = time.perf_counter(), time.process_time()
        fi.query(x[:nq], 10, ef=ef)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        say(f"search ef_search={ef}{' (default)' if ef == fi.params.ef_search else ''}: recall@10 {r:.4f} vs exact "
              f"({len(q):,} queries); {nq / wall:,.0f} queries/s at k=10 ({nq:,} queries, all cores; "
              f"{nq / cpu:,.0f} per CPU-second)")
        if ef == fi.params.ef_search:
            recall, qps = r, nq / wall

    t0, c0 = time.perf_counter(), time.process_time()
    s = cluster(store, faces=faces, fi=fi)
    t_cluster, c_cluster = time.perf_counter() - t0, time.process_time() - c0
    cid = face_clusters(out / "clusters.parquet", faces.face_ids)
    shutil.copyfile(out / "clusters.parquet", out / REFERENCE)     # for a later --ray-only
    p, r, f = pairwise_f(truth, cid)
    say(f"cluster: {t_cluster:.1f} s wall, {c_cluster:.1f} CPU-s (kNN graph {s.timings['knn_s']:.1f} s, merging {s.timings['merge_s']:.1f} s, "
          f"{s.rounds} rounds, {s.edges:,} edges): {s.clusters:,} clusters for {args.people:,} people; "
          f"pairwise P {p:.4f} R {r:.4f} F {f:.4f}")
    say(f"peak RSS: {rss_gib():.2f} GiB")
    line = {"faces": len(faces), "people": args.people, "read_s": round(t_read, 1),
            "build_s": round(t_build, 1), "recall_at_10": round(float(recall), 4), "qps": round(qps),
            "cluster_s": round(t_cluster, 1), "pairwise_f": round(f, 4), "peak_rss_gib": round(rss_gib(), 2)}
    if args.ray:
        del faces, x, s   # the Ray path reads its own faces: its driver's peak is measured without these
        line.update(ray_path(args, store, fi, cid, q, exact, truth, say))
    print(json.dumps(line))


REFERENCE = "reference_clusters.parquet"   # the single-process clusters of the last full run


def query_rows(n: int) -> np.ndarray:
    """The rows whose recall@10 is measured (fixed seed: a --ray-only run asks the same)."""
    return np.random.default_rng(1).choice(n, min(1000, n), replace=False)


def exact_nearest(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rows of the 10 nearest rows of `x` to each row q of x (numpy, exact)."""
    norms = (x * x).sum(1)
    exact = np.empty((len(q), 10), np.int64)
    for lo in range(0, len(q), 25):
        d = norms[None, :] - 2 * x[q[lo:lo + 25]] @ x.T          # + |q|^2, constant per row
        exact[lo:lo + 25] = np.argpartition(d, 10, axis=1)[:, :10]
    return exact


def ray_only(args, store, truth: np.ndarray, say) -> None:
    """--ray-only: the Ray path alone, against the single-process index and clusters an earlier
    full run left in --out (the reference takes as long again at 1M; one JSON line)."""
    from facejob.reduce.embeddings import read_faces
    from facejob.reduce.hnsw import load

    if not (store.exists("index/params.json") and store.exists(REFERENCE)):
        raise SystemExit(f"--ray-only: no single-process index and {REFERENCE} in {args.out}; run once without it")
    fi = load(store)
    faces = read_faces(store)
    cid_single = face_clusters(Path(args.out) / REFERENCE, faces.face_ids)
    x = faces.embeddings                   # the same queries as a full run's, answered exactly, before
    q = query_rows(len(x))                 # the Ray path's driver peak is measured (it holds no matrix)
    exact = exact_nearest(x, q)
    del x, faces
    line = {"faces": len(truth), "people": args.people, "reference": REFERENCE}
    line.update(ray_path(args, store, fi, cid_single, q, exact, truth, say))
    print(json.dumps(line))


def svm_side_by_side(eng, x: np.ndarray, truth: np.ndarray, clusters: np.ndarray, people: int, say) -> dict:
    """Per-person SVMs for `people` synthetic people (3 labelled faces each) trained in one
    process and in Ray tasks (eng.fit_svms), then every face named both ways: seconds, the
    largest difference between the two models' coefficients, the share of equal labels."""
    from facejob.reduce.svm import IdentityClassifier

    rng = np.random.default_rng(3)
    ids, counts = np.unique(truth, return_counts=True)
    named = rng.choice(ids[counts >= 4], min(people, int((counts >= 4).sum())), replace=False)
    rows = np.concatenate([rng.choice(np.flatnonzero(truth == p), 3, replace=False) for p in named])
    names = [f"p{truth[r]}" for r in rows]
    fits, ts = [], []
    for run in (None, eng.fit_svms):
        t0 = time.perf_counter()
        clf = IdentityClassifier().fit_archive(x, rows, x[rows], names, clusters, run=run)
        t1 = time.perf_counter()
        pred = clf.predict(x) if run is None else eng.predict(clf, x, {})
        ts.append((t1 - t0, time.perf_counter() - t1))
        fits.append((clf, pred))
    (one, p1), (par, p2) = fits
    diff = float(max(np.abs(one.model_.coef - par.model_.coef).max(),
                     np.abs(one.model_.intercept - par.model_.intercept).max()))
    same = float(np.mean(p1[0] == p2[0]))
    say(f"SVMs for {len(named)} people (3 labels each, {len(one.pool_):,} background): trained in one process "
        f"{ts[0][0]:.1f} s, in Ray tasks {ts[1][0]:.1f} s (largest coefficient difference {diff:.2g}); every face "
        f"named: {ts[0][1]:.1f} s / {ts[1][1]:.1f} s in tasks; labels equal for {same:.4%} of faces")
    return {"svm_people": len(named), "svm_train_s": round(ts[0][0], 1), "ray_svm_train_s": round(ts[1][0], 1),
            "svm_coef_max_diff": diff, "predict_s": round(ts[0][1], 1), "ray_predict_s": round(ts[1][1], 1),
            "labels_equal": round(same, 6)}


def ray_path(args, store, fi, cid_single: np.ndarray | None, q: np.ndarray | None, exact: np.ndarray | None,
             truth: np.ndarray, say) -> dict:
    """The Ray path over the same archive: its figures, against the single-process ones (none
    with --no-reference: `cid_single` None). `fi`, the single-process index, is only held (as
    `facejob reduce` holds OUT/index/): the Ray path searches its own shards."""
    from facejob.reduce import ray_reduce as rr
    from facejob.reduce.clustering import cluster
    from facejob.reduce.embeddings import META_COLUMNS

    opts = {k: v for k, v in (("replicas", args.replicas), ("probe", args.probe)) if v is not None}
    fresh = reset_peak_rss()     # the driver's peak from here on (it still holds the saved index, as reduce's does)
    with rr.RayReducer(workers=args.workers, shards=args.shards, **opts) as eng:
        if args.spill_rows is not None:
            eng.spill_rows = args.spill_rows
        t0 = time.perf_counter()
        faces = eng.read_faces(store, META_COLUMNS, embeddings=False)   # as `facejob reduce` does on Ray
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        eng.build()
        eng.query(faces.embeddings[:1], 1)        # the shards start at the first query
        t_shards = time.perf_counter() - t0
        recall = t_query = None
        if q is not None:
            t0 = time.perf_counter()
            got, _ = eng.query(faces.embeddings[q], 10)     # face rows
            t_query = time.perf_counter() - t0
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]))
        store.delete("clusters.json")     # else the single-process clustering is kept (same inputs)
        t0 = time.perf_counter()
        s = cluster(store, faces=faces, engine=eng)
        t_cluster = time.perf_counter() - t0
        cid = face_clusters(Path(args.out) / "clusters.parquet", faces.face_ids)
        agree = None if cid_single is None else pairwise_f(cid_single, cid)[2]
        driver = image_rss_gib() if fresh else rss_gib()
        workers = sorted(eng.process_peaks.values(), reverse=True)
        merge_own = max(eng.process_own_peaks.values(), default=None)    # without mapped descriptors
        peak = max(driver, eng.peak_rss_gib)
        svm = svm_side_by_side(eng, faces.embeddings, truth, cid, args.label_people, say) if args.label_people else {}
        shards, nodes, part_rows = eng.shard_count, len(eng.work), eng.part_rows
        replicas, probe, spill_rows = eng.replicas, eng.probe, eng.spill_rows
    _, _, f_truth = pairwise_f(truth, cid)
    say(f"ray ({args.workers} workers, {shards} shards, each face in {replicas} cells, queries visit {probe}): "
        f"read {t_read:.1f} s, shards built {t_shards:.1f} s, kNN graph {s.timings['knn_s']:.1f} s, "
        f"merging {s.timings['merge_s']:.1f} s (cluster step {t_cluster:.1f} s); "
        + ("" if recall is None else f"recall@10 {recall:.4f} ({len(q):,} queries in {t_query:.2f} s); ")
        + ("" if agree is None else f"clusters agree with single-process: pairwise F {agree:.4f} ")
        + f"(vs truth {f_truth:.4f}); max process peak RSS {peak:.2f} GiB (driver {driver:.2f}, "
        f"{len(workers)} Ray worker processes {[round(w, 2) for w in workers]}); {nodes} node(s); clustering "
        f"tasks of {part_rows} rows (own memory at most {merge_own or 0:.2f} GiB; tasks over {spill_rows:,} rows "
        f"map their descriptors from disk)")
    out = {"ray_read_s": round(t_read, 1), "ray_shards_build_s": round(t_shards, 1),
           "ray_knn_graph_s": s.timings["knn_s"], "ray_merge_s": s.timings["merge_s"],
           "ray_cluster_s": round(t_cluster, 1),
           "knn_recall_at_10": None if recall is None else round(recall, 4),
           "agreement_f": None if agree is None else round(agree, 4), "agreement_at_faces": len(faces), "ray_pairwise_f": round(f_truth, 4),
           "max_process_peak_rss_gib": round(peak, 2), "ray_driver_peak_rss_gib": round(driver, 2),
           "ray_worker_peak_rss_gib": [round(w, 2) for w in workers],
           "ray_merge_own_peak_gib": None if merge_own is None else round(merge_own, 2),
           "spill_rows": spill_rows, "shards": shards, "replicas": replicas,
           "probe": probe,
           "cluster_task_rows": part_rows, **svm}
    if len(faces) == 1_000_000 and agree is not None:
        out["agreement_f_at_1m"] = out["agreement_f"]
    return out


if __name__ == "__main__":
    main()
