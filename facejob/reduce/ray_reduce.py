"""The reducer on Ray: the steps' heavy parts as Ray tasks and actors (`facejob reduce --address
ADDR --workers N`); the steps themselves (facejob.reduce.pipeline) stay the same and call a
`RayReducer` where the single-process path calls its own functions:

- the kNN graph comes from a sharded search index: one actor per cell of a coarse k-means
  (facejob.reduce.partition), each face stored in its SHARD_REPLICAS nearest cells and each
  query sent to its SHARD_PROBE nearest, the actors' answers merged. The shards are filled
  straight from OUT/faces/: one task per part reads it batch by batch and sends each batch's
  descriptors to their cells' actors (the k-means is fitted on a sample the part tasks draw),
  so no shard's faces pass through the driver. A shard's hnswlib labels are face rows (the
  rows of the `Faces` that `read_faces` gave), so its answers need no label table either;
- clustering runs as independent parts (connected components of the candidate graph, packed
  into one task per worker), which gives exactly the single-process clusters for that graph;
  the driver sends a part its rows and edges, the task fetches the descriptors from the shards;
- the per-person SVMs are trained in tasks of a chunk of people each (FIT_TASKS per worker),
  which gives exactly the single-process models (a person's SVM does not depend on the others');
- predictions are made in tasks of PREDICT_ROWS rows (each scoring them in batches), which
  fetch their rows' descriptors from the shards.

The driver reads the faces' other columns itself, part by part (results of part tasks would
pass through the object store, whose pages it maps and touches), but no descriptors: its Faces
hold `embeddings.Descriptors`, fetched from the shards by row as a step reads them (the kNN
graph's queries, QUERY_ROWS at a time; representatives; attaching low-quality faces; training
rows) and streamed from the parts again for a digest. The search index under OUT/index/ (what
`facejob search` loads) is the shards themselves, saved by their actors (`save_index`,
facejob.reduce.shard_index). This is the one module of the reducer that imports Ray (see
pyproject's import contracts).
"""
from __future__ import annotations

import logging
import mmap
import os
import resource
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

import hnswlib
import numpy as np
import pyarrow as pa
import ray

from facejob.contract.layout import FACES_DIR, index_shard_files
from facejob.contract.schema import EMBEDDING_DIM
from facejob.io.storage import Store, open_store

from . import partition as pt
from . import svm as lb
from .embeddings import (BATCH_ROWS, FETCH_ROWS, Descriptors, Faces, batch_embeddings, first_rows, open_part,
                         part_batches, parts, read_faces, read_rows)
from .errors import ReduceError
from .graph import knn_graph
from . import shard_index as si
from .hnsw import IndexParams, save_graph

log = logging.getLogger("facejob.reduce")

# Measured with bench/reduce_scale.py --ray (synthetic LFW-like descriptors): see README.
SHARD_REPLICAS = 2      # cells each face is stored in
SHARD_PROBE = 3         # cells each query visits
PREDICT_ROWS = 100_000  # faces per prediction task (scored in batches of svm.PREDICT_ROWS inside it)
FIT_TASKS = 4           # SVM training tasks per worker: people's SVMs differ in cost, small chunks even it out
SAMPLE_ROWS = 50_000    # descriptors the coarse k-means is fitted on, drawn across every part
# Faces the kNN graph asks the shards about at a time: each chunk's descriptors are fetched, copied
# per probed shard and sent (~6 KiB a row on the driver while it is out), 100k rows cost ~0.5 GiB.
QUERY_ROWS = 20_000
SPILL_ROWS = 1_000_000   # a clustering part of more faces maps their descriptors from local disk
SEAL_ROWS = 65_536       # descriptors a shard inserts into its graph at a time
# Before the shards are started, up to this many descriptors are read from the parts instead, up
# to PART_READS times (each read streams every part): a nightly rerun whose index and clusters are
# kept then never starts them for dedup's few candidates (200k faces: 40 s of shard building).
PART_READ_ROWS = 65_536
PART_READS = 4


# Where a task or actor call ran: (Ray node id, the process's peak RSS in GiB, its pid, its peak
# anonymous RSS in GiB or None), for `RayReducer.work` and its peaks.
Where = tuple[str, float, int, "float | None"]


def _here() -> Where:
    """Where this call runs (the peak anonymous RSS since `_watch_own_memory`, else None)."""
    return (ray.get_runtime_context().get_node_id(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            os.getpid(), _own_peak[0])


_own_peak: list[float | None] = [None]


def _watch_own_memory() -> None:
    """Track this process's peak anonymous RSS from now on (Linux; a thread reads it every 50 ms):
    its own memory, without the page cache of files it maps, which the peak RSS counts too."""
    if _own_peak[0] is not None or not os.path.exists("/proc/self/status"):
        return
    _own_peak[0] = 0.0

    def watch() -> None:
        while True:
            with open("/proc/self/status") as f:
                kib = next((int(ln.split()[1]) for ln in f if ln.startswith("RssAnon:")), 0)
            _own_peak[0] = max(_own_peak[0], kib / 2**20)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


@ray.remote
def _sample_part(root: str, rel: str, want: int, seed: int) -> tuple[int, np.ndarray, Where]:
    """(the part's rows, up to `want` of its descriptors drawn with `seed`): the k-means
    sample, read one batch at a time."""
    f = open_part(open_store(root), rel)
    n = f.metadata.num_rows
    pick = np.sort(np.random.default_rng(seed).choice(n, min(want, n), replace=False))
    got, lo = [], 0
    for b in f.iter_batches(batch_size=BATCH_ROWS, columns=["embedding"]):
        mine = pick[(pick >= lo) & (pick < lo + b.num_rows)] - lo
        if len(mine):
            got.append(batch_embeddings(b.column(0))[mine])
        lo += b.num_rows
    return n, np.concatenate(got) if got else np.empty((0, EMBEDDING_DIM), np.float32), _here()


@ray.remote
def _route_part(root: str, rel: str, first: int, centroids: np.ndarray, replicas: int,
                shards: list) -> tuple[int, Where]:
    """Send the part's descriptors to the shards of their `replicas` nearest cells, batch by
    batch (face rows from `first` on); its rows. A batch is sent once the last one is stored:
    the task holds one batch, whatever the part's size."""
    row = first
    for b in part_batches(open_store(root), rel, ["embedding"]):
        emb = batch_embeddings(b.column(0))
        cells = pt.nearest_cells(emb, centroids, replicas)
        rows = np.arange(row, row + len(emb), dtype=np.int64)
        sent = []
        for c, shard in enumerate(shards):
            mine = (cells == c).any(1)
            if mine.any():
                sent.append(shard.add.remote(emb[mine], rows[mine], cells[mine, 0] == c))
        ray.get(sent)
        row += len(emb)
    return row - first, _here()


OWN_PAGES_BYTES = 1 << 20   # received batches this big get a mapping of their own (small ones: few, reused)


def _own_pages(vectors: np.ndarray) -> np.ndarray:
    """A float32 copy of `vectors`, when it is big in an anonymous mapping of its own: when the
    copy goes, its pages go back to the OS (from the malloc heap, where big arrays often land,
    they would not). Small ones stay on the heap: a mapping each could pass the kernel's limit of
    maps per process (65,530) over an archive of many small parts."""
    if vectors.size * 4 < OWN_PAGES_BYTES:
        return np.array(vectors, np.float32)
    buf = mmap.mmap(-1, vectors.size * 4)
    out = np.frombuffer(buf, np.float32, vectors.size).reshape(vectors.shape)
    out[...] = vectors
    return out


@ray.remote
class _Shard:
    """One cell's faces in an hnswlib index. Faces arrive in batches from the part tasks, in any
    order; `seal` inserts them in row order, so the graph (hnswlib's depends on insertion order)
    is the same whatever order the tasks ran in. Label j is the j-th of those rows (`rows`):
    the graph saves as it is for the sharded OUT/index/ (facejob.reduce.shard_index)."""

    def __init__(self, params: IndexParams):
        self.params = params
        self.batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.live = 0
        self.index: hnswlib.Index | None = None
        self.rows = np.empty(0, np.int64)   # sorted: the read rows stored here, label j = rows[j]
        self.home = np.empty(0, np.int64)   # sorted: the rows whose nearest cell this is (`vectors` gives those)

    def add(self, vectors: np.ndarray, rows: np.ndarray, home: np.ndarray) -> None:
        """Faces (descriptors, rows) to store; `home`: those whose nearest cell this is."""
        # Copies: the sent arrays live in the object store, which may then let them go.
        self.batches.append((_own_pages(vectors), np.array(rows, np.int64), np.array(home, bool)))

    def seal(self, skip: np.ndarray) -> Where:
        """Build the index over the faces received, less the rows `skip` (repeated faces)."""
        batches, self.batches = self.batches, []
        sizes = np.array([len(b[1]) for b in batches], np.int64)
        rows = np.concatenate([b[1] for b in batches]) if batches else np.empty(0, np.int64)
        home = np.concatenate([b[2] for b in batches]) if batches else np.empty(0, bool)
        batch_of = np.repeat(np.arange(len(batches), dtype=np.int32), sizes)
        offset = np.arange(len(rows)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        order = np.argsort(rows, kind="stable")
        order = order[~np.isin(rows[order], skip)]
        self.rows, self.home = rows[order], rows[order[home[order]]]
        # The last position in `order` each batch is read at: after it the batch can go.
        done_at = np.full(len(batches), -1, np.int64)
        np.maximum.at(done_at, batch_of[order], np.arange(len(order)))
        p = self.params
        self.index = hnswlib.Index(space="l2", dim=EMBEDDING_DIM)
        self.index.init_index(max_elements=max(len(order), 1), ef_construction=p.ef_construction, M=p.M,
                              random_seed=p.seed)
        # In row order, SEAL_ROWS at a time, each batch let go once its rows are in: the graph
        # grows as the received descriptors shrink (the part tasks send them in row order), so a
        # shard's peak is about its graph (~0.9 KiB a face), not graph + every descriptor (~1.3).
        # One thread inserts them one by one in that order either way: the same graph.
        for lo in range(0, len(order), SEAL_ROWS):   # one thread per actor: no oversubscription
            at = order[lo:lo + SEAL_ROWS]
            chunk, of = np.empty((len(at), EMBEDDING_DIM), np.float32), batch_of[at]
            for b in np.unique(of).tolist():
                sel = of == b
                if sel.all():     # the usual case: no gathered copy beside the chunk
                    np.take(batches[b][0], offset[at], axis=0, out=chunk)
                else:
                    chunk[sel] = batches[b][0][offset[at[sel]]]
            self.index.add_items(chunk, np.arange(lo, lo + len(at)), num_threads=1)
            for b in np.flatnonzero((done_at >= lo) & (done_at < lo + len(at))).tolist():
                batches[b] = None
        self.live = len(order)
        return _here()

    def query(self, vectors: np.ndarray, k: int, ef: int) -> tuple[np.ndarray, np.ndarray, Where]:
        """The k nearest faces (rows) of each vector among this shard's, and their distances."""
        k = min(k, self.live)
        if k == 0 or len(vectors) == 0:
            return np.full((len(vectors), 0), -1, np.int64), np.empty((len(vectors), 0), np.float32), _here()
        self.index.set_ef(max(ef, k))
        lab, d2 = self.index.knn_query(np.ascontiguousarray(vectors, np.float32), k=k, num_threads=1)
        return self.rows[lab.astype(np.int64)], np.sqrt(np.maximum(d2, 0)).astype(np.float32), _here()

    def vectors(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the rows among `rows` whose nearest cell this is, their descriptors): asked of every
        shard, each face comes back once."""
        mine = rows[np.isin(rows, self.home)]
        if len(mine) == 0:
            return mine, np.empty((0, EMBEDDING_DIM), np.float32)
        labels = np.searchsorted(self.rows, mine)
        return mine, self.index.get_items(labels, return_type="numpy").astype(np.float32, copy=False)

    def stored(self) -> np.ndarray:
        """The read rows stored here, label order."""
        return self.rows

    def save(self, root: str, rel: str) -> Where:
        """This shard's graph to OUT/rel (whole or not at all)."""
        save_graph(open_store(root), rel, self.index)
        return _here()


@ray.remote
def _cluster_part(job: tuple) -> tuple[np.ndarray, int, Where]:
    return (*pt.run_part(job), _here())


def _from_shards(rows: np.ndarray, shards: list) -> np.ndarray:
    """The descriptors of read rows `rows` (sorted, distinct), each from the shard of its
    nearest cell (every shard is asked; each face comes back once)."""
    x = np.empty((len(rows), EMBEDDING_DIM), np.float32)
    found = 0
    for got, vec in ray.get([s.vectors.remote(rows) for s in shards]):
        x[np.searchsorted(rows, got)] = vec
        found += len(got)
    if found != len(rows):
        raise ReduceError(f"the shards hold {found} of the {len(rows)} faces asked for")
    return x


@ray.remote
def _cluster_part_of_shards(job: tuple, shards: list, transform,
                            spill_rows: int) -> tuple[np.ndarray, int, Where]:
    """`_cluster_part` of a job that carries read rows (sorted) in place of descriptors: they
    come from the shards, FETCH_ROWS at a time, and go through `transform` (the metric head, or
    None) here. A part of more than `spill_rows` faces keeps them in a file on the node's local
    disk, memory-mapped (the merge only reads them): a giant component's descriptors (10M
    faces: 4.8 GiB) are then page cache the kernel can drop, not the task's own memory."""
    _watch_own_memory()
    rows = job[0]
    with tempfile.TemporaryDirectory(prefix="facejob-merge-") as tmp:
        spill = len(rows) > spill_rows
        x = (np.lib.format.open_memmap(os.path.join(tmp, "x.npy"), "w+", np.float32, (len(rows), EMBEDDING_DIM))
             if spill else np.empty((len(rows), EMBEDDING_DIM), np.float32))
        for lo in range(0, len(rows), FETCH_ROWS):
            got = _from_shards(rows[lo:lo + FETCH_ROWS], shards)
            x[lo:lo + len(got)] = got if transform is None else transform(got)
        if spill:
            x.flush()
            del x
            x = np.load(os.path.join(tmp, "x.npy"), mmap_mode="r")
        result = pt.run_part((x, *job[1:]))
        del x        # unmapped before its file goes
    return (*result, _here())


@ray.remote
def _fit_classes(x: np.ndarray, y: np.ndarray, first: int, end: int, C: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray, Where]:
    return (*lb.fit_classes(x, y, first, end, C, seed), _here())


@ray.remote
def _predict(clf, x: np.ndarray, forbidden: dict[int, set[str]],
             transform) -> tuple[np.ndarray, np.ndarray, Where]:
    return (*clf.predict(x, forbidden, transform), _here())


@ray.remote
def _predict_rows(clf, rows: np.ndarray, shards: list, forbidden: dict[int, set[str]],
                  transform) -> tuple[np.ndarray, np.ndarray, Where]:
    """`_predict` of read rows (sorted) whose descriptors the task fetches from the shards."""
    return (*clf.predict(_from_shards(rows, shards), forbidden, transform), _here())


def _part_descriptors(root: str, rels: list[str], keep: np.ndarray | None) -> Iterable[np.ndarray]:
    """The descriptors of parts `rels` in order, a batch at a time, less the rows `keep` marks
    False (repeats): what `RayReducer.read_faces`'s Descriptors stream (a digest needs no shard)."""
    store, row = open_store(root), 0
    for rel in rels:
        for b in part_batches(store, rel, ["embedding"]):
            x = batch_embeddings(b.column(0))
            if keep is not None:
                x = x[keep[row:row + len(x)]]
            row += b.num_rows
            yield x


def _from_parts(root: str, rels: list[str], want: np.ndarray) -> np.ndarray:
    """The descriptors of read rows `want` (sorted, distinct) of parts `rels`, read again from
    them a batch at a time."""
    x, row = np.empty((len(want), EMBEDDING_DIM), np.float32), 0
    for batch in _part_descriptors(root, rels, None):
        lo, hi = np.searchsorted(want, [row, row + len(batch)])
        x[lo:hi] = batch[want[lo:hi] - row]
        row += len(batch)
    return x


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
    `peak_rss_gib` the highest, `process_own_peaks` the peak anonymous RSS (without mapped files'
    page cache) of the processes that ran clustering tasks, `part_rows` the rows of each
    clustering task of the last clustering;
    `spill_rows`: a clustering task of more faces maps their descriptors from local disk.
    In order: `read_faces`, `build`, then `save_index`, `query`, `knn_graph`, `agglomerate` (the
    shards hold what `read_faces` read), `fit_svms`, `predict`."""

    def __init__(self, address: str | None = None, workers: int = 0, shards: int = 0,
                 params: IndexParams = IndexParams(), replicas: int = SHARD_REPLICAS, probe: int = SHARD_PROBE):
        start_ray(address, workers)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = workers or cpus
        self.shards = shards or self.workers
        self.params, self.replicas, self.probe = params, replicas, probe
        self.spill_rows = SPILL_ROWS
        self.work: Counter[str] = Counter()
        self.process_peaks: dict[tuple[str, int], float] = {}
        self.process_own_peaks: dict[tuple[str, int], float] = {}
        self.part_rows: list[int] = []
        self._actors: list = []
        self._centroids: np.ndarray | None = None
        self._live = 0
        self._pending = False
        self._part_reads = 0    # descriptors read from the parts while the shards were not started
        # What the last read_faces read: the store's root and parts (the shards are filled from
        # the same ones), their rows, and per read row its face row when some face was read
        # twice (-1: a repeat; None: every read row is a face row).
        self._source: tuple[str, list[str]] | None = None
        self._read_rows = 0
        self._face_row: np.ndarray | None = None
        self._read_of: np.ndarray | None = None          # per face row its read row (None: the same)
        self._descriptors: Descriptors | None = None    # the ones read_faces gave (predict knows them)

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

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """The read rows (what the shards are labelled by) of face rows `rows`."""
        return rows if self._read_of is None else self._read_of[rows]

    def _seen(self, where: Where) -> None:
        node, rss, pid, own = where
        self.work[node] += 1
        self.process_peaks[node, pid] = max(self.process_peaks.get((node, pid), 0.0), rss)
        if own is not None:
            self.process_own_peaks[node, pid] = max(self.process_own_peaks.get((node, pid), 0.0), own)

    def read_faces(self, store: Store, columns: Sequence[str], embeddings: bool = True) -> Faces:
        """`embeddings.read_faces` (the same rows, in the same order), remembering which parts
        were read: `build` fills the shards from the same ones. Without `embeddings` the driver
        reads no descriptors: the Faces hold `Descriptors`, fetched from the shards by row (a
        digest streams them from the parts again)."""
        rels = parts(store, FACES_DIR)
        faces = read_faces(store, columns, embeddings=embeddings, rels=rels, drop_repeated=False)
        self._source, self._read_rows = (store.root, rels), len(faces)
        keep = first_rows(faces.face_ids)
        self._face_row, self._read_of = None, keep
        if keep is not None:      # rare: a part written twice; its repeats are no faces
            self._face_row = np.full(len(faces), -1, np.int64)
            self._face_row[keep] = np.arange(len(keep))
            faces = faces.take(keep) if embeddings else Faces(faces.meta.take(keep), None)
        if not embeddings:
            first = None if self._face_row is None else self._face_row >= 0
            faces.embeddings = Descriptors(len(faces), self.vectors,
                                           stream=partial(_part_descriptors, store.root, rels, first))
        self._descriptors = faces.embeddings if not embeddings else None
        return faces

    def columns(self, store: Store, names: Sequence[str], rows: np.ndarray) -> pa.Table:
        """Columns of some face rows (of the Faces the last `read_faces` gave), e.g. the paths
        and landmarks of the faces dedup checks, read again from the same parts: those rows only,
        in the order of `rows`."""
        if self._source is None:
            raise ReduceError("RayReducer.columns: read_faces first")
        return read_rows(store, self._source[1], names, self._read(np.asarray(rows, np.int64)))

    def batches(self, store: Store, names: Sequence[str]) -> Iterator[pa.RecordBatch]:
        """Columns of every face row (of the Faces the last `read_faces` gave), read again from
        the same parts a record batch at a time, in order: for a step that reduces a column as
        it reads it (dedup's landmark shapes)."""
        if self._source is None:
            raise ReduceError("RayReducer.batches: read_faces first")
        start = 0
        for rel in self._source[1]:
            for b in part_batches(store, rel, names):
                read, start = start, start + b.num_rows
                if self._face_row is not None:     # rare: a part written twice; its repeats go
                    b = b.filter(pa.array(self._face_row[read:start] >= 0))
                yield b

    def build(self) -> None:
        """The shard actors over the faces the last `read_faces` gave (their answers are rows of
        that `Faces`), started at the first query: a rerun whose clustering is kept never pays
        for them."""
        if self._source is None:
            raise ReduceError("RayReducer.build: read_faces first (the shards hold the faces it read)")
        self.close()
        self._pending, self._part_reads = True, 0

    def save_index(self, store: Store, faces: Faces, rebuild: bool = False, log=log.info) -> None:
        """Write the shards as the sharded OUT/index/ (facejob.reduce.shard_index): each actor
        saves its graph, the driver each shard's label table (rows of `faces`, what `read_faces`
        gave: meta columns), then the manifest. Kept as it is when it was made of the same
        settings and faces (unless `rebuild`)."""
        key = si.inputs_key(self.params, self.replicas, self.probe, self.shards, faces.face_ids)
        if not rebuild and si.unchanged(store, key):
            log(f"index: unchanged, {len(faces)} faces in shards")
            return
        if self._pending:
            self._start_shards()
        build = si.begin(store)
        saving = [a.save.remote(store.root, index_shard_files(build, p)[0]) for p, a in enumerate(self._actors)]
        counts = []
        for p, a in enumerate(self._actors):       # one shard's labels at a time on the driver
            rows = ray.get(a.stored.remote())
            counts.append(si.save_labels(store, build, p, faces.meta,
                                         rows if self._face_row is None else self._face_row[rows]))
        for where in ray.get(saving):
            self._seen(where)
        centroids = self._centroids if self._actors else np.empty((0, EMBEDDING_DIM), np.float32)
        si.finish(store, build, key, self.params, self.replicas, self.probe, centroids, counts, len(faces))
        log(f"index: {len(faces)} faces saved in {len(counts)} shards")

    def _start_shards(self) -> None:
        """Fit the cells on a sample the part tasks draw, then let one task per part send its
        faces to their cells' actors; the driver holds the sample, never the shards' faces."""
        self._pending = False
        root, rels = self._source
        self._live = self._read_rows if self._face_row is None else int((self._face_row >= 0).sum())
        if self._live == 0:     # nothing to shard: every query finds nothing
            return
        opts = dict(scheduling_strategy="SPREAD")
        want = -(-SAMPLE_ROWS // len(rels))
        counts, sample = [], []
        for i, (n, smp, where) in enumerate(ray.get([_sample_part.options(**opts).remote(
                root, rel, want, self.params.seed + i) for i, rel in enumerate(rels)])):
            self._seen(where)
            counts.append(n)
            sample.append(smp)
        if sum(counts) != self._read_rows:
            raise ReduceError(f"{root}/{FACES_DIR} changed while it was reduced ({sum(counts)} rows now, "
                              f"{self._read_rows} read); run again")
        self._centroids = pt.kmeans(np.concatenate(sample), max(1, min(self.shards, self._live)),
                                    seed=self.params.seed)
        del sample
        # No CPU held: idle shards holding CPUs would leave none for the clustering tasks (a
        # deadlock when shards >= CPUs); they work only while queried, between those tasks.
        self._actors = [_Shard.options(num_cpus=0, **opts).remote(self.params) for _ in self._centroids]
        firsts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        cells = ray.put(self._centroids)
        for _, where in ray.get([_route_part.options(**opts).remote(root, rel, int(first), cells, self.replicas,
                                                                    self._actors)
                                 for rel, first in zip(rels, firsts)]):
            self._seen(where)
        skip = np.empty(0, np.int64) if self._face_row is None else np.flatnonzero(self._face_row < 0)
        for where in ray.get([a.seal.remote(skip) for a in self._actors]):   # built (in parallel)
            self._seen(where)

    def query(self, vectors: np.ndarray, k: int, ef: int | None = None, threads: int = -1
              ) -> tuple[np.ndarray, np.ndarray]:
        """FaceIndex.query over the shards: (face rows, distances) of the k nearest (-1: fewer found)."""
        if self._pending:
            self._start_shards()
        vectors = np.ascontiguousarray(vectors, np.float32).reshape(-1, EMBEDDING_DIM)
        if len(vectors) > QUERY_ROWS:     # each vector's answer is its own: asked a chunk at a time
            got = [self.query(vectors[lo:lo + QUERY_ROWS], k, ef) for lo in range(0, len(vectors), QUERY_ROWS)]
            return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        k = min(k, self._live)
        if k <= 0 or len(vectors) == 0:
            return np.empty((len(vectors), max(k, 0)), np.int64), np.empty((len(vectors), max(k, 0)), np.float32)
        ef = ef or self.params.ef_search
        asked = pt.probed(vectors, self._centroids, self.probe)
        refs = {p: a.query.remote(vectors[asked[p]], k, ef) for p, a in enumerate(self._actors) if len(asked[p])}

        def answers() -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            for p, ref in refs.items():
                lab, d, where = ray.get(ref)
                self._seen(where)
                yield asked[p], lab, d

        lab, dist = pt.merge_answers(len(vectors), answers(), k)
        if self._face_row is not None:   # read rows -> face rows (repeats are in no shard)
            lab = np.where(lab >= 0, self._face_row[np.maximum(lab, 0)], -1)
        return lab, dist

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The descriptors of face rows `rows` (any order, repeats allowed), fetched from the
        shards: the driver needs no copy of the embeddings to look some up. Before the shards
        are started, a few rows are read from the parts instead (see PART_READ_ROWS)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) == 0:
            return np.empty((0, EMBEDDING_DIM), np.float32)
        want, back = np.unique(self._read(rows), return_inverse=True)
        if self._pending and len(want) <= PART_READ_ROWS and self._part_reads < PART_READS:
            self._part_reads += 1
            root, rels = self._source
            return _from_parts(root, rels, want)[back]
        if self._pending:
            self._start_shards()
        return _from_shards(want, self._actors)[back]

    def knn_graph(self, embeddings: np.ndarray, rows: np.ndarray, n: int, k: int, max_dist: float = np.inf,
                  ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """graph.knn_graph over the shards among the faces `rows` (of `n` face rows; `embeddings`
        are theirs): edges between positions in `rows`."""
        at = np.full(n + 1, -1, np.int64)    # face row -> position in rows; the trailing -1: "no face"
        at[rows] = np.arange(len(rows))
        return knn_graph(self, embeddings, at, k, max_dist, ef, chunk=QUERY_ROWS)

    def agglomerate(self, x: np.ndarray, eu: np.ndarray, ev: np.ndarray, threshold: float, max_rounds: int = 100_000,
                    must_link: np.ndarray | None = None, cannot_link: np.ndarray | None = None,
                    pair_margin: float = 0.0, link_weight: float = 0.0, rows: np.ndarray | None = None,
                    transform=None) -> tuple[np.ndarray, int]:
        """linkage.agglomerate as parallel tasks over the graph's components (exactly the same labels).

        With `rows` (the face rows of x's rows, sorted), x is not sent: each task fetches its
        faces' descriptors from the shards and applies `transform` (what made x of them: the
        metric head's, or None), so no copy of x passes through the driver's object store."""
        if rows is None or self._pending or not self._actors:
            return pt.split_agglomerate(x, eu, ev, threshold, max_rounds, must_link, cannot_link, pair_margin,
                                        link_weight, groups=self.workers, run=self._run_parts)
        read = self._read(rows)
        return pt.split_agglomerate(x, eu, ev, threshold, max_rounds, must_link, cannot_link, pair_margin,
                                    link_weight, groups=self.workers, carry=lambda r: read[r],
                                    run=lambda jobs: self._run_parts(jobs, fetch=True, transform=transform))

    def _run_parts(self, jobs: Iterable[tuple], fetch: bool = False, transform=None) -> list[tuple[np.ndarray, int]]:
        """The parts' results in order; the jobs carry descriptors, or with `fetch` read rows
        whose descriptors the tasks fetch from the shards (see `agglomerate`)."""
        jobs = list(jobs)
        self.part_rows = [len(j[0]) for j in jobs]
        opts = dict(scheduling_strategy="SPREAD")
        if fetch:
            fn = ray.put(transform)
            refs = [_cluster_part_of_shards.options(**opts).remote(j, self._actors, fn, self.spill_rows) for j in jobs]
        else:
            refs = [_cluster_part.options(**opts).remote(j) for j in jobs]
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
        per worker are in flight: the rows sent to the object store are a window, not all of x.
        When x is the Descriptors `read_faces` gave, the tasks fetch their rows from the shards:
        the driver sends row numbers only."""
        if len(x) == 0:
            return clf.predict(x, forbidden, transform)
        model, fn = ray.put(clf), ray.put(transform)
        own = self._descriptors is not None and x is self._descriptors
        if own and self._pending:
            self._start_shards()
        starts = list(range(0, len(x), PREDICT_ROWS))
        label, prob = np.empty(len(x), object), np.empty(len(x), np.float32)
        running: dict = {}
        opts = dict(scheduling_strategy="SPREAD")
        while starts or running:
            while starts and len(running) < 2 * self.workers:
                lo = starts.pop(0)
                hi = min(lo + PREDICT_ROWS, len(x))
                mine = {r - lo: v for r, v in forbidden.items() if lo <= r < hi}
                running[_predict_rows.options(**opts).remote(model, self._read(np.arange(lo, hi)), self._actors,
                                                             mine, fn) if own else
                        _predict.options(**opts).remote(model, x[lo:hi], mine, fn)] = lo
            done, _ = ray.wait(list(running), num_returns=1)
            lo = running.pop(done[0])
            p, q, where = ray.get(done[0])
            self._seen(where)
            label[lo:lo + len(p)], prob[lo:lo + len(p)] = p, q
        return label, prob
