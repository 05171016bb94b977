"""The reducer on Ray: the steps' heavy parts as Ray tasks and actors (`facejob reduce --address
ADDR --workers N`); the steps themselves (facejob.reduce.pipeline) stay the same and call a
`RayReducer` where the single-process path calls its own functions:

- faces/ is read by one task per part (streamed Arrow batches), gathered in part order;
- the kNN graph comes from a sharded search index: one actor per cell of a coarse k-means
  (facejob.reduce.partition), each face stored in its SHARD_REPLICAS nearest cells and each
  query sent to its SHARD_PROBE nearest, the actors' answers merged;
- clustering runs as independent parts (connected components of the candidate graph, packed
  into one task per worker), which gives exactly the single-process clusters for that graph;
- the per-person SVMs are trained in tasks of a chunk of people each (FIT_TASKS per worker),
  which gives exactly the single-process models (a person's SVM does not depend on the others');
- predictions are made in tasks of PREDICT_ROWS rows (each scoring them in batches).

The search index under OUT/index/ (what `facejob search` loads) is still built by the driver.
This is the one module of the reducer that imports Ray (see pyproject's import contracts).
"""
from __future__ import annotations

import logging
import os
import resource
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import ray

from facejob.contract.layout import FACES_DIR
from facejob.contract.schema import EMBEDDING_DIM, FACES
from facejob.io.storage import Store, open_store

from . import partition as pt
from . import svm as lb
from .embeddings import Faces, _drop_repeated, batch_embeddings, part_batches, parts, require_indexed
from .errors import ReduceError
from .graph import knn_graph
from .hnsw import FaceIndex, IndexParams, build

log = logging.getLogger("facejob.reduce")

# Measured with bench/reduce_scale.py --ray (synthetic LFW-like descriptors): see README.
SHARD_REPLICAS = 2      # cells each face is stored in
SHARD_PROBE = 3         # cells each query visits
PREDICT_ROWS = 100_000  # faces per prediction task (scored in batches of svm.PREDICT_ROWS inside it)
FIT_TASKS = 4           # SVM training tasks per worker: people's SVMs differ in cost, small chunks even it out


def _here() -> tuple[str, float, int]:
    """(this process's Ray node id, its peak RSS in GiB, its pid)."""
    return (ray.get_runtime_context().get_node_id(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            os.getpid())


@ray.remote
def _read_part(root: str, rel: str, columns: list[str]) -> tuple[pa.Table, np.ndarray, tuple[str, float, int]]:
    store = open_store(root)
    metas, embs = [], []
    for b in part_batches(store, rel, [*columns, "embedding"]):
        embs.append(batch_embeddings(b.column("embedding")))
        metas.append(b.select(columns))
    meta = pa.Table.from_batches(metas) if metas else pa.schema([FACES.field(c) for c in columns]).empty_table()
    emb = np.concatenate(embs) if embs else np.empty((0, EMBEDDING_DIM), np.float32)
    return meta, emb, _here()


@ray.remote
class _Shard:
    """One cell's faces in an hnswlib index; answers with the faces' labels in OUT's index."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, params: IndexParams):
        self.labels = labels
        self.index = build(vectors, params, threads=1)   # one CPU per actor: no oversubscription

    def query(self, vectors: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray, tuple[str, float, int]]:
        k = min(k, len(self.labels))
        if k == 0 or len(vectors) == 0:
            return np.full((len(vectors), 0), -1, np.int64), np.empty((len(vectors), 0), np.float32), _here()
        self.index.set_ef(max(ef, k))
        lab, d2 = self.index.knn_query(np.ascontiguousarray(vectors, np.float32), k=k, num_threads=1)
        return self.labels[lab.astype(np.int64)], np.sqrt(np.maximum(d2, 0)).astype(np.float32), _here()

    def where(self) -> tuple[str, float, int]:
        return _here()


@ray.remote
def _cluster_part(job: tuple) -> tuple[np.ndarray, int, tuple[str, float, int]]:
    return (*pt.run_part(job), _here())


@ray.remote
def _fit_classes(x: np.ndarray, y: np.ndarray, first: int, end: int, C: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, float, int]]:
    return (*lb.fit_classes(x, y, first, end, C, seed), _here())


@ray.remote
def _predict(clf, x: np.ndarray, forbidden: dict[int, set[str]],
             transform) -> tuple[np.ndarray, np.ndarray, tuple[str, float, int]]:
    return (*clf.predict(x, forbidden, transform), _here())


def start_ray(address: str | None, workers: int):
    """Join the Ray at `address` (or RAY_ADDRESS), else start a local one of `workers` CPUs;
    a Ray this process already joined (the nightly job's index step) is used as it is."""
    if ray.is_initialized():
        return
    from facejob.indexing.pool import worker_env

    # The workers need this process's settings (the S3 endpoint above all) to read its parts.
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  runtime_env={"env_vars": worker_env()})
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ReduceError(f"cannot join the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    else:
        os.environ.setdefault("RAY_worker_niceness", "0")   # our own Ray: its workers are the job
        ray.init(num_cpus=workers or os.cpu_count(), **kwargs)


class RayReducer:
    """The reducer's heavy parts on a Ray cluster (see the module doc). Use as a context
    manager: the shard actors end with it. `work` counts the tasks and actors per node id,
    `process_peaks` holds each of their processes' peak RSS in GiB ((node id, pid) -> GiB),
    `peak_rss_gib` the highest, `part_rows` the rows of each clustering task of the last clustering."""

    def __init__(self, address: str | None = None, workers: int = 0, shards: int = 0,
                 params: IndexParams = IndexParams(), replicas: int = SHARD_REPLICAS, probe: int = SHARD_PROBE):
        start_ray(address, workers)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or cpus
        self.shards = shards or self.workers
        self.params, self.replicas, self.probe = params, replicas, probe
        self.work: Counter[str] = Counter()
        self.process_peaks: dict[tuple[str, int], float] = {}
        self.part_rows: list[int] = []
        self._actors: list = []
        self._centroids: np.ndarray | None = None
        self._live = 0
        self._pending: tuple[Faces, FaceIndex] | None = None

    def __enter__(self) -> RayReducer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for a in self._actors:
            ray.kill(a)
        self._actors = []

    @property
    def shard_count(self) -> int:
        """Shard actors running (after `build` and a query)."""
        return len(self._actors)

    @property
    def peak_rss_gib(self) -> float:
        """The highest peak RSS any task or actor process reported (GiB)."""
        return max(self.process_peaks.values(), default=0.0)

    def _seen(self, where: tuple[str, float, int]) -> None:
        node, rss, pid = where
        self.work[node] += 1
        self.process_peaks[node, pid] = max(self.process_peaks.get((node, pid), 0.0), rss)

    def read_faces(self, store: Store, columns: Sequence[str]) -> Faces:
        """`embeddings.read_faces` with one task per part (the same rows, in the same order)."""
        require_indexed(store)
        cols = list(dict.fromkeys(["face_id", *columns]))
        refs = [_read_part.options(scheduling_strategy="SPREAD").remote(store.root, rel, cols)
                for rel in parts(store, FACES_DIR)]
        metas, embs = [], []
        for meta, emb, where in ray.get(refs):
            self._seen(where)
            metas.append(meta)
            embs.append(emb)
        if not metas:
            return Faces(pa.schema([FACES.field(c) for c in cols]).empty_table(),
                         np.empty((0, EMBEDDING_DIM), np.float32))
        return _drop_repeated(Faces(pa.concat_tables(metas).combine_chunks(), np.concatenate(embs)))

    def build(self, faces: Faces, fi: FaceIndex) -> None:
        """The shard actors over `faces`, labelled as in `fi` (so answers mean what fi's do),
        started at the first query: a rerun whose clustering is kept never pays for them."""
        self.close()
        self._pending = (faces, fi)

    def _start_shards(self) -> None:
        faces, fi = self._pending
        self._pending = None
        label = np.full(len(faces), -1, np.int64)
        rows = fi.rows_for(faces)
        label[rows[rows >= 0]] = np.flatnonzero(rows >= 0)
        self._live = len(faces)
        if not len(faces):     # nothing to shard: every query finds nothing
            return
        parts_n = max(1, min(self.shards, len(faces)))
        self._centroids = pt.kmeans(faces.embeddings, parts_n, seed=self.params.seed)
        cells = pt.nearest_cells(faces.embeddings, self._centroids, self.replicas)
        cell_rows = pt.cell_rows(cells, len(self._centroids), self.replicas)
        # No CPU held: idle shards holding CPUs would leave none for the clustering tasks (a
        # deadlock when shards >= CPUs); they work only while queried, between those tasks.
        opts = dict(num_cpus=0, scheduling_strategy="SPREAD")
        self._actors = [_Shard.options(**opts).remote(ray.put(faces.embeddings[r]), label[r], self.params)
                        for r in cell_rows]
        for where in ray.get([a.where.remote() for a in self._actors]):   # built (in parallel)
            self._seen(where)

    def query(self, vectors: np.ndarray, k: int, ef: int | None = None, threads: int = -1
              ) -> tuple[np.ndarray, np.ndarray]:
        """FaceIndex.query over the shards: (labels, distances) of the k nearest (-1: fewer found)."""
        if self._pending is not None:
            self._start_shards()
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, EMBEDDING_DIM)
        k = min(k, self._live)
        if k <= 0 or len(vectors) == 0:
            return np.empty((len(vectors), max(k, 0)), np.int64), np.empty((len(vectors), max(k, 0)), np.float32)
        ef = ef or self.params.ef_search
        cells = pt.nearest_cells(vectors, self._centroids, self.probe)
        asked = [np.flatnonzero((cells == p).any(1)) for p in range(len(self._actors))]
        refs = {p: a.query.remote(vectors[asked[p]], k, ef) for p, a in enumerate(self._actors) if len(asked[p])}
        lab = np.full((len(vectors), len(refs) * k), -1, np.int64)
        dist = np.full(lab.shape, np.inf, np.float32)
        for i, (p, ref) in enumerate(refs.items()):
            l, d, where = ray.get(ref)
            self._seen(where)
            lab[asked[p], i * k:i * k + l.shape[1]] = l
            dist[asked[p], i * k:i * k + l.shape[1]] = d
        return pt.merge_nearest(lab, dist, k)

    def knn_graph(self, fi: FaceIndex, embeddings: np.ndarray, rows_of_label: np.ndarray, k: int,
                  max_dist: float = np.inf, ef: int | None = None, threads: int = -1
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """graph.knn_graph over the shards (`fi` is not searched: the shards hold its faces)."""
        # A trailing -1: a label of -1 (fewer than k found) maps to "no face".
        return knn_graph(self, embeddings, np.append(rows_of_label, -1), k, max_dist, ef)

    def agglomerate(self, x: np.ndarray, eu: np.ndarray, ev: np.ndarray, threshold: float, max_rounds: int = 100_000,
                    must_link: np.ndarray | None = None, cannot_link: np.ndarray | None = None,
                    pair_margin: float = 0.0, link_weight: float = 0.0) -> tuple[np.ndarray, int]:
        """linkage.agglomerate as parallel tasks over the graph's components (exactly the same labels)."""
        return pt.split_agglomerate(x, eu, ev, threshold, max_rounds, must_link, cannot_link, pair_margin,
                                    link_weight, groups=self.workers, run=self._run_parts)

    def _run_parts(self, jobs: Iterable[tuple]) -> list[tuple[np.ndarray, int]]:
        jobs = list(jobs)
        self.part_rows = [len(j[0]) for j in jobs]
        refs = [_cluster_part.options(scheduling_strategy="SPREAD").remote(j) for j in jobs]
        out = []
        for lab, rounds, where in ray.get(refs):
            self._seen(where)
            out.append((lab, rounds))
        return out

    def fit_svms(self, x: np.ndarray, y: np.ndarray, n_classes: int, C: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
        """svm.fit_classes over classes 0..n_classes-1 (an svm.FitRun) in parallel tasks, each
        a chunk of people: the same models as in one process."""
        chunks = max(1, min(n_classes, FIT_TASKS * self.workers))
        bounds = np.linspace(0, n_classes, chunks + 1).astype(int)
        xr, yr = ray.put(x), ray.put(y)
        refs = [_fit_classes.options(scheduling_strategy="SPREAD").remote(xr, yr, int(lo), int(hi), C, seed)
                for lo, hi in zip(bounds[:-1], bounds[1:])]
        coef, icpt = [], []
        for c, i, where in ray.get(refs):
            self._seen(where)
            coef.append(c)
            icpt.append(i)
        return np.concatenate(coef), np.concatenate(icpt)

    def predict(self, clf, x: np.ndarray, forbidden: dict[int, set[str]], transform=None
                ) -> tuple[np.ndarray, np.ndarray]:
        """clf.predict(x, forbidden, transform) in tasks of PREDICT_ROWS rows (predictions are
        per row; `transform`, e.g. the metric head, is applied in the tasks). At most two tasks
        per worker are in flight: the rows sent to the object store are a window, not all of x."""
        if len(x) == 0:
            return clf.predict(x, forbidden, transform)
        model, fn = ray.put(clf), ray.put(transform)
        starts = list(range(0, len(x), PREDICT_ROWS))
        label, prob = np.empty(len(x), object), np.empty(len(x), np.float32)
        running: dict = {}
        while starts or running:
            while starts and len(running) < 2 * self.workers:
                lo = starts.pop(0)
                running[_predict.options(scheduling_strategy="SPREAD").remote(
                    model, x[lo:lo + PREDICT_ROWS],
                    {r - lo: v for r, v in forbidden.items() if lo <= r < lo + PREDICT_ROWS}, fn)] = lo
            done, _ = ray.wait(list(running), num_returns=1)
            lo = running.pop(done[0])
            p, q, where = ray.get(done[0])
            self._seen(where)
            label[lo:lo + len(p)], prob[lo:lo + len(p)] = p, q
        return label, prob
