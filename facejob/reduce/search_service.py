"""The search service: `facejob search OUT ... --address ADDR` answers from long-lived Ray actors
instead of loading OUT/index/ into every search process.

Each of N shard actors (detached, named in the "facejob" namespace after OUT's root, so any later
`facejob search` of the same OUT finds them) holds the faces of its share of OUT/faces/ parts (a
part goes to shard crc32(name) mod N, so no process holds every face) in an hnswlib index of
its own, built with one thread. A call lists OUT/faces/ once, sends every shard its share with
the query, and each shard first syncs with that listing: it reads the parts it has not seen,
marks deleted the faces of parts that are gone or were rewritten (compaction, retirement; a
part's identity is its name plus its Store.list_versions token) and takes back parts that returned. So
an answer always covers exactly the faces of OUT/faces/ as listed by the call, like a search of
an index rebuilt from them. Each shard returns its n nearest distinct faces; the caller keeps
the n nearest of all (a face found in two parts counts once, at its nearest).

The actors hold no CPU (num_cpus=0): a standing service must not starve the cluster's other
work, and they work only while asked. They end with `facejob search OUT --address ADDR --stop`
(`stop`), or with the cluster. A shard that dies is restarted by Ray and reloads its share at
the next call.

This is the one module besides ray_reduce that imports Ray (see pyproject's import contracts).
"""
from __future__ import annotations

import hashlib
import os
import resource
import time
import zlib

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from facejob.contract.layout import FACES_DIR
from facejob.contract.schema import EMBEDDING_DIM, FACES
from facejob.io.storage import Store, open_store

from .embeddings import META_COLUMNS, batch_embeddings, part_batches, parts, require_indexed
from .errors import ReduceError
from .hnsw import IndexParams
from .ray_reduce import start_ray

NAMESPACE = "facejob"
GROW = 1.5            # the hnswlib index grows by this factor when a shard's new parts do not fit
REBUILD_DEAD = 100_000   # a shard with more deleted rows than this and than live ones starts over


def _key(store: Store) -> str:
    return hashlib.blake2b(store.root.encode(), digest_size=6).hexdigest()


def shard_of(rel: str, shards: int) -> int:
    """The shard a part belongs to: by its name, so a part stays put while its version changes."""
    return zlib.crc32(rel.encode()) % shards


def _empty_meta() -> pa.Table:
    return pa.schema([FACES.field(c) for c in META_COLUMNS]).empty_table()


@ray.remote
class _SearchShard:
    """One shard of the service: the faces of its share of OUT/faces/ parts."""

    def __init__(self, root: str, params: IndexParams):
        self.store = open_store(root)
        self.params = params
        self.reads = 0             # parts read since the actor started (a second call reads none)
        self._reset()

    def _reset(self) -> None:
        self.index = hnswlib.Index(space="l2", dim=EMBEDDING_DIM)
        self.index.init_index(max_elements=1024, ef_construction=self.params.ef_construction, M=self.params.M,
                              random_seed=self.params.seed)
        self.parts: dict[str, tuple[int, int]] = {}   # "rel@version" -> its labels [lo, hi)
        self.live: set[str] = set()
        self.chunks: list[pa.Table] = []
        self.ids = _empty_meta()                      # row = hnsw label
        self.deleted = np.zeros(0, bool)
        self.repeats = 0                              # rows whose face_id an earlier row has

    def sync(self, listed: list[str]) -> None:
        """Bring the shard to the parts `listed` ("rel@version", its share of one listing)."""
        want = set(listed)
        for key in self.live - want:
            self._mark(key, True)
        for key in want - self.live:
            if key in self.parts:              # a part that came back (a listing older than the last)
                self._mark(key, False)
        dead = int(self.deleted.sum())
        if dead > max(len(self.deleted) - dead, REBUILD_DEAD):   # mostly dead rows: start over from the live parts
            self._reset()
        new = sorted(want - self.parts.keys())
        for key in new:
            self._load(key)
        if new:
            self.ids = pa.concat_tables([self.ids, *self.chunks]).combine_chunks()
            self.chunks = []
            self.deleted = np.concatenate([self.deleted, np.zeros(len(self.ids) - len(self.deleted), bool)])
            self.repeats = len(self.ids) - pc.count_distinct(self.ids.column("face_id")).as_py()

    def _mark(self, key: str, dead: bool) -> None:
        lo, hi = self.parts[key]
        for label in range(lo, hi):
            (self.index.mark_deleted if dead else self.index.unmark_deleted)(label)
        self.deleted[lo:hi] = dead
        (self.live.discard if dead else self.live.add)(key)

    def _load(self, key: str) -> None:
        rel = key.rsplit("@", 1)[0]
        metas, embs = [], []
        try:
            for b in part_batches(self.store, rel, [*META_COLUMNS, "embedding"]):
                embs.append(batch_embeddings(b.column("embedding")))
                metas.append(b.select(list(META_COLUMNS)))
        except FileNotFoundError:      # removed since the caller listed it: as if not listed
            return
        self.reads += 1
        lo = self.index.element_count
        emb = np.concatenate(embs) if embs else np.empty((0, EMBEDDING_DIM), np.float32)
        if lo + len(emb) > self.index.get_max_elements():
            self.index.resize_index(int(max(lo + len(emb), GROW * self.index.get_max_elements())))
        if len(emb):
            self.index.add_items(emb, np.arange(lo, lo + len(emb)), num_threads=1)
            self.chunks.append(pa.Table.from_batches(metas).cast(_empty_meta().schema))
        self.parts[key] = (lo, lo + len(emb))
        self.live.add(key)

    def nearest(self, listed: list[str], vectors: np.ndarray, n: int, ef: int, with_vectors: bool
                ) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
        """The n nearest distinct faces of each vector in this shard (fewer when it holds fewer):
        their rows (query-major), distances (m, n') and, with `with_vectors`, embeddings."""
        self.sync(listed)
        m = len(vectors)
        live = len(self.ids) - int(self.deleted.sum())
        # A face_id held twice (a part written twice) takes two places: ask for enough to drop them.
        k = min(n + self.repeats, live)
        if k <= 0 or m == 0:
            return _empty_meta(), np.empty((m, 0), np.float32), np.empty((m, 0, EMBEDDING_DIM), np.float32)
        self.index.set_ef(max(ef, k))
        lab, d2 = self.index.knn_query(np.ascontiguousarray(vectors, np.float32), k=k, num_threads=1)
        lab = lab.astype(np.int64)
        dist = np.sqrt(np.maximum(d2, 0)).astype(np.float32)
        if self.repeats:
            lab, dist = _distinct(self.ids.column("face_id").to_numpy(zero_copy_only=False), lab, dist, n)
        lab, dist = lab[:, :n], dist[:, :n]
        vecs = (np.asarray(self.index.get_items(lab.reshape(-1)), np.float32).reshape(*lab.shape, EMBEDDING_DIM)
                if with_vectors else None)
        return self.ids.take(pa.array(lab.reshape(-1))), dist, vecs

    def vector(self, listed: list[str], face_id: str) -> tuple[np.ndarray | None, dict | None]:
        """The embedding and row of a live face of this shard, or (None, None)."""
        self.sync(listed)
        hit = np.flatnonzero(pc.equal(self.ids.column("face_id"), face_id).to_numpy(zero_copy_only=False)
                             & ~self.deleted)
        if not len(hit):
            return None, None
        label = int(hit[0])
        return np.asarray(self.index.get_items([label]), np.float32)[0], self.ids.slice(label, 1).to_pylist()[0]

    def info(self) -> dict:
        """pid, parts read since start, faces held and live, peak RSS (GiB): what tests and the bench watch."""
        return {"pid": os.getpid(), "reads": self.reads, "faces": len(self.ids),
                "live": len(self.ids) - int(self.deleted.sum()),
                "peak_rss_gib": _peak_rss_gib()}


def _peak_rss_gib() -> float:
    """Linux's VmHWM (of this process image: ru_maxrss would start at the forking parent's), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _distinct(face_ids: np.ndarray, lab: np.ndarray, dist: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first (nearest) hit of each face_id: n of them, or as many as every row has."""
    keep = [np.sort(np.unique(face_ids[row], return_index=True)[1]) for row in lab]
    width = min([n, *map(len, keep)])
    cols = np.array([k[:width] for k in keep], np.int64).reshape(len(lab), width)
    return np.take_along_axis(lab, cols, 1), np.take_along_axis(dist, cols, 1)


class SearchService:
    """The shard actors of one OUT on the Ray at `address`: found by name, started when missing
    (`shards` of them; 0 = as many as are running, else one per CPU of the cluster). With a
    different `shards` than are running, the running ones are stopped and new ones started."""

    def __init__(self, out: str | Store, address: str, shards: int = 0, params: IndexParams = IndexParams()):
        if shards < 0:
            raise ReduceError(f"--shards must be >= 0, got {shards}")
        self.store = open_store(out)
        self.params = params
        start_ray(address, 0)
        running = _running(self.store)
        shards = shards or len(running) or int(ray.cluster_resources().get("CPU", 1))
        if running and len(running) != shards:
            self.stop()
        opts = dict(namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
                    max_restarts=-1, scheduling_strategy="SPREAD")
        self.actors = [_SearchShard.options(name=_name(self.store, i, shards), **opts).remote(self.store.root, params)
                       for i in range(shards)]

    def _listing(self) -> list[list[str]]:
        """Each shard's share of OUT/faces/ as listed now: "rel@version" of every committed part."""
        require_indexed(self.store)
        versions = self.store.list_versions(FACES_DIR)
        share: list[list[str]] = [[] for _ in self.actors]
        for rel in parts(self.store, FACES_DIR):
            share[shard_of(rel, len(self.actors))].append(f"{rel}@{versions.get(rel, '')}")
        return share

    def nearest(self, vectors: np.ndarray, n: int, with_vectors: bool = False
                ) -> tuple[pa.Table, np.ndarray, np.ndarray | None]:
        """The n nearest distinct faces of each vector among every shard's: rows (m x n', query-major),
        distances (m, n'), embeddings (m, n', 128) with `with_vectors`; n' = min(n, live faces)."""
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, EMBEDDING_DIM)
        m = len(vectors)
        refs = [a.nearest.remote(share, vectors, n, self.params.ef_search, with_vectors)
                for a, share in zip(self.actors, self._listing())]
        got = _get(refs)
        metas = [g[0] for g in got if g[1].shape[1]]
        if not metas:
            return _empty_meta(), np.empty((m, 0), np.float32), np.empty((m, 0, EMBEDDING_DIM), np.float32)
        widths = [g[1].shape[1] for g in got if g[1].shape[1]]
        dist = np.concatenate([g[1] for g in got if g[1].shape[1]], axis=1)
        # Row of each candidate in the concatenated tables (each is query-major, `width` per query).
        offsets = np.cumsum([0, *[mt.num_rows for mt in metas[:-1]]])
        row = np.concatenate([off + np.arange(m)[:, None] * w + np.arange(w)[None]
                              for off, w in zip(offsets, widths)], axis=1)
        meta = pa.concat_tables(metas)
        ids = meta.column("face_id").to_numpy(zero_copy_only=False)
        vecs = np.concatenate([g[2] for g in got if g[1].shape[1]], axis=1) if with_vectors else None
        order = np.argsort(dist, axis=1, kind="stable")
        keep_cols = []
        for q in range(m):
            seen, cols = set(), []
            for c in order[q]:
                if ids[row[q, c]] not in seen:
                    seen.add(ids[row[q, c]])
                    cols.append(c)
            keep_cols.append(cols)
        width = min(n, min(len(c) for c in keep_cols))
        cols = np.array([c[:width] for c in keep_cols], np.int64).reshape(m, width)
        take = np.take_along_axis(row, cols, 1).reshape(-1)
        return (meta.take(pa.array(take)), np.take_along_axis(dist, cols, 1),
                np.take_along_axis(vecs, cols[..., None], 1) if with_vectors else None)

    def vector(self, face_id: str) -> tuple[np.ndarray, dict] | None:
        """The embedding and row of the live face `face_id`, or None when OUT/faces/ has none."""
        for vec, row in _get([a.vector.remote(share, face_id) for a, share in zip(self.actors, self._listing())]):
            if vec is not None:
                return vec, row
        return None

    def info(self) -> list[dict]:
        return _get([a.info.remote() for a in self.actors])

    def stop(self) -> int:
        """End this OUT's shard actors; how many there were."""
        return stop(self.store)


def _name(store: Store, i: int, shards: int) -> str:
    return f"search-{_key(store)}-{i}-of-{shards}"


def _running(store: Store) -> list[str]:
    prefix = f"search-{_key(store)}-"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == NAMESPACE and a["name"].startswith(prefix))


STOP_WAIT_S = 60    # how long `stop` waits for killed shards to end


def stop(out: str | Store, address: str | None = None) -> int:
    """End the search service of OUT (its shard actors) on the Ray at `address`; how many ended."""
    store = open_store(out)
    if address is not None:
        start_ray(address, 0)
    names = _running(store)
    ended = []
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:      # ended meanwhile (another --stop)
            continue
        ray.kill(handle, no_restart=True)
        ended.append(handle)
    # ray.kill returns before the actor is gone (a busy box answers a call or two after it):
    # "stopped" means no shard answers any more.
    deadline = time.monotonic() + STOP_WAIT_S
    for handle in ended:
        while time.monotonic() < deadline:
            try:
                ray.get(handle.info.remote(), timeout=STOP_WAIT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                break
            time.sleep(0.1)
    return len(names)


def _get(refs: list) -> list:
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:   # a shard's own error (e.g. a damaged part): its first line
        cause = e.cause if getattr(e, "cause", None) is not None else e
        if isinstance(cause, (ReduceError, FileNotFoundError, OSError)):
            raise ReduceError(str(cause).splitlines()[0]) from None
        raise
