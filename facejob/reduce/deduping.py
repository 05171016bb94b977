"""The dedup step: byte-identical and near-duplicate photos → OUT/duplicates.parquet. The
candidates come from the search index (photos with near faces) and the perceptual hashes
(photos without faces); the checks are facejob.reduce.duplicates.

Incremental: the near faces of every face (OUT/dedup/near_faces.parquet), the perceptual-hash
pairs (OUT/dedup/phash.parquet), the pixel verdicts of checked pairs (OUT/dedup/checked.parquet)
and the photos whose bytes do not decode (OUT/dedup/unreadable.parquet) are kept, so a rerun
searches the index and the hashes only for faces and photos new since the last one, decodes only
pairs it has not judged and does not try again a photo that does not decode while that path holds
the same content (sha256). The relations are
symmetric facts about pairs (near: within NEAR_MAX_DIST among a face's k nearest; verdict: a
function of the two photos' bytes), so the union of saved and new equals what a from-scratch
run finds (exactly so under exact search, when no face has more than k near faces).
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.contract.layout import DEDUP_CHECKED, DEDUP_NEAR, DEDUP_PHASH, DEDUP_UNREADABLE, DUPLICATES, RUN_JSON
from facejob.io.lock import writes_output
from facejob.io.storage import Store, write_parquet
from facejob.io.storage import open_store as _store

from . import duplicates as dd
from . import saved
from .embeddings import ALL_COLUMNS, Faces, one_chunk, read_faces, read_images, whole
from .hnsw import FaceIndex, IndexParams, update_index

if TYPE_CHECKING:   # the Ray path, imported only when asked for (it imports Ray)
    from .ray_reduce import RayReducer

log = logging.getLogger("facejob.reduce")


@dataclass
class DedupSummary:
    photos: int
    groups: int
    identical_groups: int
    near_groups: int
    duplicates: int          # photos that are not the kept copy
    candidates: int          # photo pairs with faces whose pixels were compared
    faceless_candidates: int = 0  # photo pairs without faces (similar perceptual hash) compared
    queried: int = 0         # faces whose near faces were searched tonight (new since the last run)
    decoded: int = 0         # pairs whose pixels were compared tonight (the rest: verdicts kept)
    hashed: int = 0          # photo contents whose perceptual hash was searched tonight (new since the last run)
    unreadable: int = 0      # photos known or found tonight not to be readable (their pairs are not judged)
    unreadable_known: int = 0  # of those, found unreadable by an earlier run and not tried again


K_NEAR = 8                 # near faces looked for per face (a burst of one shot rarely has more copies)
NEAR_FORMAT = 1            # bump when what near_faces.parquet holds changes
NEAR_ROWS = 100_000        # faces searched at a time (their descriptors: 51 MB)
# hnswlib search breadth for near faces: copies lie very near, so a short search finds them (200k
# synthetic faces, 8 nearest: ef 32 finds 99.98 % of the pairs within NEAR_MAX_DIST that ef 192
# finds, all within 0.2, in a fifth of the time).
NEAR_EF = 32


@writes_output("dedup")
def dedup(out: str | Store, faces: Faces | None = None, fi: FaceIndex | None = None,
          engine: RayReducer | None = None) -> DedupSummary:
    """Find byte-identical and near-duplicate photos → OUT/duplicates.parquet. `faces` and `fi`:
    OUT's faces (with ALL_COLUMNS) and index when the caller has them. An `engine`
    (facejob.reduce.ray_reduce.RayReducer, after its `read_faces`) searches its shards and gives
    the descriptors, and the columns this step reads come from the parts it read (`faces` and
    `fi` are not used): the single-process result wherever both searches find the exact nearest
    faces (as at test sizes)."""
    store = _store(out)
    if engine is None:
        if faces is None or any(c not in faces.meta.column_names for c in ALL_COLUMNS):
            faces = read_faces(store, ALL_COLUMNS)
        fi = fi if fi is not None else update_index(store, faces, log=log.info)
        rows_of_label = fi.rows_for(faces)
        params, vectors = fi.params, lambda rows: faces.embeddings[rows]
        ids, sha, columns_of = faces.face_ids, faces.meta.column("sha256"), _columns_in(faces.meta)
        shape = _shapes([faces.meta.column("landmarks")])

        def nearest(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            labels, d = fi.query(faces.embeddings[rows], k, ef=NEAR_EF)
            return rows_of_label[labels], d
    else:
        # Of the parts the engine read (row i is face row i), every face's id, sha256 and landmark
        # shape only (the landmarks are read a batch at a time); the paths, boxes and landmarks
        # of the few faces a check needs are read again (`columns_of`). The caller's faces need
        # not be held into this step (10M faces: ~1 GiB).
        params, vectors = engine.params, engine.vectors
        kept: list[pa.RecordBatch] = []

        def landmarks() -> Iterator[pa.Array]:
            for b in engine.batches(store, ["face_id", "sha256", "landmarks"]):
                kept.append(b.select(["face_id", "sha256"]))
                yield b.column("landmarks")

        shape = _shapes(landmarks())
        read = one_chunk(kept, pa.schema([("face_id", pa.string()), ("sha256", pa.string())]))
        ids, sha = whole(read.column("face_id")), whole(read.column("sha256"))
        del read

        def columns_of(rows: np.ndarray, names: list[str]) -> pa.Table:
            return engine.columns(store, names, rows)

        def nearest(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return engine.query(engine.vectors(rows), k, ef=NEAR_EF)
    code, names = dd.content_codes(sha)
    del sha       # (on Ray: the last of it; `names` holds each content's once)
    i, j, queried = _near_faces(store, nearest, params, ids, code, shape)
    del shape
    key = np.unique(np.minimum(code[i], code[j]) * len(names) + np.maximum(code[i], code[j]))
    a, b = key // len(names), key % len(names)
    contents = np.unique(np.concatenate([a, b]))      # the descriptors of these photos' faces only
    checked = dd.face_checks(_face_table(columns_of, code, contents, vectors),
                             np.searchsorted(contents, a), np.searchsorted(contents, b))
    checked = dataclasses.replace(checked, a=contents[checked.a], b=contents[checked.b])
    # From here on only the checked pairs' sha256: every face's coding (and on Ray the ids and
    # sha256 read for dedup) goes before the photos' own (faceless candidates, groups).
    near_a, near_b = (names.take(pa.array(c, pa.int64())) for c in (checked.a, checked.b))
    candidates = len(key)
    del code, names, i, j, key, a, b, contents, ids
    faces = None      # (`nearest`, `vectors` and `columns_of` above, which read it, are done)
    # The photos only now: their table (a row per photo) and the faces' columns are not held at once.
    images = read_images(store, ["uri", "sha256", "size", "width", "height", "status"], optional=["phash"])
    from facejob.config import DEFAULT_MAX_PIXELS, load_run_config

    max_pixels = load_run_config(store).max_pixels if store.exists(RUN_JSON) else DEFAULT_MAX_PIXELS
    faceless, hashed = _faceless_candidates(images, store)
    wanted = pa.concat_arrays([near_a, near_b,
                               faceless.names.take(pa.array(np.concatenate([faceless.a, faceless.b]), pa.int64()))])
    load = _PictureLoader(store, images, wanted, max_pixels)
    del wanted

    # The pairs to judge, made one at a time as _judge asks (a list of them all, with a closure
    # each, takes about 1 KiB a pair).
    def near_pairs() -> Iterator[tuple[str, str, float, Callable[[], float | None]]]:
        for k, (d, sc, st) in enumerate(zip(checked.dist.tolist(), checked.scale.tolist(), checked.shift)):
            x, y = near_a[k].as_py(), near_b[k].as_py()
            yield x, y, d, functools.partial(_near_verdict, load, x, y, sc, st)

    def faceless_pairs() -> Iterator[tuple[str, str, float, Callable[[], float | None]]]:
        for x, y in faceless:
            yield x, y, 0.0, functools.partial(_faceless_verdict, load, x, y)

    todo = itertools.chain(near_pairs(), faceless_pairs())
    near, decoded = _judge(store, todo, max_pixels, load)
    load.save()
    faceless_candidates, faceless = len(faceless), None     # its sha256 of every photo with a hash: freed
    table = dd.groups_table(images, near)
    write_parquet(store, DUPLICATES, table)
    groups = pc.count_distinct(table.column("group")).as_py() if table.num_rows else 0
    ident_groups = len(set(table.filter(pc.equal(table.column("kind"), "identical")).column("group").to_pylist()))
    s = DedupSummary(photos=images.num_rows, groups=groups, identical_groups=ident_groups,
                     near_groups=groups - ident_groups, duplicates=int(table.num_rows - groups), candidates=candidates,
                     faceless_candidates=faceless_candidates, queried=queried, decoded=decoded, hashed=hashed,
                     unreadable=len(load.unreadable), unreadable_known=load.known)
    log.info("dedup: %d groups (%d identical, %d near), %d duplicate photos; %d pairs with faces and %d "
             "without compared (%d faces and %d perceptual hashes searched, %d pairs decoded tonight)", s.groups,
             s.identical_groups, s.near_groups, s.duplicates, s.candidates, s.faceless_candidates, s.queried,
             s.hashed, s.decoded)
    if s.unreadable_known:
        log.info("dedup: %d photos found unreadable by an earlier run were not tried again (they are when their "
                 "content changes; delete %s to try them all)", s.unreadable_known, DEDUP_UNREADABLE)
    return s


def _near_verdict(load: _PictureLoader, x: str, y: str, scale: float, shift: np.ndarray) -> float | None:
    return dd.pixel_verdict(load(x), load(y), scale, shift, load.size(x))


def _faceless_verdict(load: _PictureLoader, x: str, y: str) -> float | None:
    return dd.faceless_verdict(load(x), load(y), load.size(x), load.size(y))


def _judge(store: Store, todo: Iterable[tuple[str, str, float, Callable[[], float | None]]], max_pixels: int,
           load) -> tuple[list[tuple[str, str, float, float]], int]:
    """The pairs of `todo` whose pixels agree, (sha_a, sha_b, face distance, corr), and how many were
    decoded: a pair judged by an earlier run keeps its verdict (OUT/dedup/checked.parquet, saved
    again with tonight's pairs only). A pair with a photo that cannot be read is not judged."""
    key = saved.digest("checked", 1, max_pixels, dd.MIN_CORR, dd.MIN_OVERLAP, dd.WORK_PX, dd.MAX_CROP,
                       dd.ARRANGE_TOL, dd.NEAR_MAX_DIST, dd.SHAPE_TOL)
    old = saved.read(store, DEDUP_CHECKED, key)
    known = {} if old is None else dict(zip(zip(old.column("sha_a").to_pylist(), old.column("sha_b").to_pylist()),
                                            old.column("corr").to_pylist()))
    near, rows, decoded = [], {"sha_a": [], "sha_b": [], "corr": []}, 0
    for x, y, d, check in todo:
        if (x, y) in known:
            corr = known[(x, y)]
        elif load(x) is None or load(y) is None:
            continue
        else:
            corr, decoded = check(), decoded + 1
        rows["sha_a"].append(x); rows["sha_b"].append(y); rows["corr"].append(corr)
        if corr is not None:
            near.append((x, y, d, corr))
    if decoded or old is None or old.num_rows != len(rows["corr"]):
        saved.write(store, DEDUP_CHECKED, pa.table(rows, schema=CHECKED_SCHEMA), key)
    return near, decoded


CHECKED_SCHEMA = pa.schema([("sha_a", pa.string()), ("sha_b", pa.string()),
                            ("corr", pa.float64())])   # null: the pixels disagree
NEAR_SCHEMA = pa.schema([("face_id", pa.string()), ("near", pa.list_(pa.string()))])


def _faceless_candidates(images: pa.Table, store: Store | None = None) -> tuple[dd.ContentPairs, int]:
    """Content pairs with a photo without faces whose perceptual hashes are close (outputs indexed
    before the phash column have none: their faceless photos are only matched by bytes), and how
    many contents were searched. With a `store`, only the pairs with a content new or changed
    since the last run are searched: OUT/dedup/phash.parquet keeps each content's hashes (as a
    signature) and the pairs found, and two unchanged contents pair tonight exactly when they did
    then (the same hashes), so the union equals a search of every pair."""
    rows = images.select(["sha256", "phash", "status"])     # a filter copies what it keeps: not the paths
    if rows.column("phash").null_count:
        rows = rows.filter(pc.is_valid(rows.column("phash")))
    sha = rows.column("sha256")
    hashes = rows.column("phash").to_numpy(zero_copy_only=False).astype(np.int64)
    faceless = np.asarray(pc.equal(rows.column("status"), "no_face").to_numpy(zero_copy_only=False), bool)
    if store is None:
        found = dd.phash_candidates(sha, hashes, faceless)
        return found, len(found.names)
    codes, names = dd.content_codes(sha)
    n = len(names)
    sig = _hash_signatures(codes, hashes, faceless, n)
    key = saved.digest("phash", PHASH_FORMAT, dd.PHASH_MAX)
    old = saved.read(store, DEDUP_PHASH, key)
    dirty = np.ones(n, bool)
    kept = np.empty(0, np.int64)
    if old is not None:
        at = dd.positions_in(old.column("sha256"), names)    # code now; -1: gone
        same = at >= 0
        same[same] = old.column("sig").to_numpy().view(np.uint64)[same] == sig[at[same]]
        dirty[at[same]] = False
        lists = old.column("partners").combine_chunks()
        owner = np.repeat(np.arange(old.num_rows), pc.list_value_length(lists).to_numpy(zero_copy_only=False))
        other = lists.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        ok = same[owner] & same[other]
        a, b = at[owner[ok]], at[other[ok]]
        kept = np.minimum(a, b) * n + np.maximum(a, b)
    searched = int(dirty.sum())
    new = dd.phash_candidates(sha, hashes, faceless, query=None if dirty.all() else dirty[codes],
                              coded=(codes, names)) if searched \
        else dd.ContentPairs(names, kept[:0], kept[:0])
    keys = np.unique(np.concatenate([kept, new.a.astype(np.int64) * n + new.b]))
    a, b = (keys // n).astype(np.int32), (keys % n).astype(np.int32)
    if searched or old is None or old.num_rows != n:
        partners = pa.ListArray.from_arrays(pa.array(np.searchsorted(a, np.arange(n + 1)).astype(np.int32)), pa.array(b))
        saved.write(store, DEDUP_PHASH, pa.table({"sha256": names, "sig": sig.view(np.int64), "partners": partners},
                                                  schema=PHASH_SCHEMA), key)
    return dd.ContentPairs(names, a, b), searched


PHASH_FORMAT = 1           # bump when what phash.parquet holds changes
PHASH_SCHEMA = pa.schema([("sha256", pa.string()),              # every content with a hash, sorted
                          ("sig", pa.int64()),                   # its hashes and faceless flags, digested
                          ("partners", pa.list_(pa.int32()))])   # the later rows it pairs with


def _hash_signatures(codes: np.ndarray, hashes: np.ndarray, faceless: np.ndarray, n: int) -> np.ndarray:
    """Per content code, a 64-bit digest of its set of (hash, faceless) rows (splitmix64 of each,
    summed): equal when the content would be searched with the same hashes."""
    h, fl, c, _ = dd._distinct_hashes(codes, hashes, faceless, faceless)
    x = h + fl.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    sig = np.zeros(n, np.uint64)
    np.add.at(sig, c, x ^ (x >> np.uint64(31)))
    return sig


ColumnsOf = Callable[[np.ndarray, list[str]], pa.Table]    # (face rows, names) -> those columns of those rows


def _columns_in(meta: pa.Table) -> ColumnsOf:
    """`ColumnsOf` a table held whole (row i: face row i)."""
    return lambda rows, names: meta.select(names).take(pa.array(rows, pa.int64()))


def _near_faces(store: Store, nearest: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
                params: IndexParams, ids: pa.Array, code: np.ndarray, shape: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, int]:
    """Face row pairs (i, j) of different photo contents, j among i's K_NEAR nearest within
    NEAR_MAX_DIST and with the same landmark shape; and how many faces were searched.
    `ids`, `code`, `shape`: every face's id, content code and landmark shape (`_shapes`);
    `nearest(rows, k)`: the k nearest faces of those face rows (face rows, -1: none;
    distances), from an index of `params`. Only faces not in OUT/dedup/near_faces.parquet are
    searched; the saved pairs of faces still there are kept, and the file is saved again for
    tonight's faces."""
    n = len(ids)
    key = saved.digest("near", NEAR_FORMAT, K_NEAR, NEAR_EF, dd.NEAR_MAX_DIST, dd.SHAPE_TOL, params.graph_settings())
    old = saved.read(store, DEDUP_NEAR, key)
    i_old = j_old = np.empty(0, np.int64)
    todo = np.arange(n)
    if old is not None:
        q = pc.index_in(old.column("face_id"), ids).to_numpy(zero_copy_only=False)   # row now; NaN: gone
        seen = np.zeros(n, bool)
        seen[q[~np.isnan(q)].astype(np.int64)] = True
        todo = np.flatnonzero(~seen)
        lists = old.column("near").combine_chunks()
        owner = np.repeat(q, pc.list_value_length(lists).to_numpy(zero_copy_only=False))
        other = pc.index_in(lists.flatten(), ids).to_numpy(zero_copy_only=False)
        ok = ~np.isnan(owner) & ~np.isnan(other)
        i_old, j_old = owner[ok].astype(np.int64), other[ok].astype(np.int64)
    found_i, found_j = [i_old], [j_old]
    for lo in range(0, len(todo), NEAR_ROWS):
        part = todo[lo:lo + NEAR_ROWS]
        j, d = nearest(part, K_NEAR)
        i = np.broadcast_to(part[:, None], j.shape)
        ok = (j >= 0) & (d <= dd.NEAR_MAX_DIST)
        i, j = i[ok], j[ok]
        ok = (code[i] != code[j]) & (dd.shape_diff(shape[i], shape[j]) <= dd.SHAPE_TOL)
        found_i.append(i[ok]); found_j.append(j[ok])
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    if len(todo) or old is None or old.num_rows != n:
        order = np.lexsort((j, i))
        i, j = i[order], j[order]
        offsets = np.searchsorted(i, np.arange(n + 1)).astype(np.int32)
        near = pa.ListArray.from_arrays(pa.array(offsets), ids.take(pa.array(j)))
        saved.write(store, DEDUP_NEAR, pa.table({"face_id": ids, "near": near}, schema=NEAR_SCHEMA), key)
    return i, j, len(todo)


def _landmarks(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A landmarks column (x0, y0, x1, y1, ... per face) as (n, points, 2) float64."""
    col = whole(col)
    flat = col.flatten().to_numpy(zero_copy_only=False)
    per = (len(flat) // max(len(col), 1)) if len(col) else 10
    return flat.reshape(len(col), per // 2, 2).astype(np.float64)


SHAPE_ROWS = 262_144       # faces whose landmark shapes are computed at a time


def _shapes(landmarks: Iterable[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """The landmark shapes (duplicates.shape_vector) of the faces of a landmarks column given in
    pieces (e.g. a batch at a time as read), kept as float32 and computed SHAPE_ROWS at a time:
    the float64 steps for all faces at once would be ~4x the result."""
    blocks = [dd.shape_vector(_landmarks(col.slice(lo, SHAPE_ROWS))).astype(np.float32)
              for col in landmarks for lo in range(0, len(col), SHAPE_ROWS)]
    return np.concatenate(blocks) if blocks else np.empty((0, 0), np.float32)


BOX_COLUMNS = ["left", "top", "right", "bottom"]


def _face_table(columns_of: ColumnsOf, code: np.ndarray, contents: np.ndarray,
                vectors: Callable[[np.ndarray], np.ndarray]) -> dd.FaceTable:
    """The faces of the photo contents `contents` (sorted codes; the table's content c is
    contents[c]), flat (duplicates.FaceTable), of one path per content (identical bytes give
    identical faces: the first path read), sorted by content then row; `columns_of(rows, names)`:
    columns of face rows, `vectors(rows)`: their descriptors."""
    rows = np.flatnonzero(np.isin(code, contents))
    meta = columns_of(rows, ["uri", *BOX_COLUMNS, "landmarks"])
    code = code[rows]
    uri = whole(meta.column("uri")).dictionary_encode().indices.to_numpy(zero_copy_only=False)
    first_uri = np.full(int(code.max()) + 1 if len(code) else 0, -1, np.int64)
    _, first_row = np.unique(code, return_index=True)
    first_uri[code[first_row]] = uri[first_row]
    keep = np.flatnonzero(uri == first_uri[code])
    keep = keep[np.argsort(code[keep], kind="stable")]
    rows, meta = rows[keep], meta.take(pa.array(keep, pa.int64()))
    count = np.bincount(np.searchsorted(contents, code[keep]), minlength=len(contents))
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    box = np.stack([meta.column(c).to_numpy() for c in BOX_COLUMNS], 1).astype(np.float64)
    return dd.FaceTable(vectors(rows), _landmarks(meta.column("landmarks")), box, start, count)


UNREADABLE_SCHEMA = pa.schema([("sha256", pa.string()), ("uri", pa.string()), ("error", pa.string())])


class _PictureLoader:
    """sha256 -> its photo (one path holding those bytes) as a reduced grey Picture, cached, or None
    when it cannot be read. A photo that cannot be read is tried once per run (not once per pair it
    is in). When its bytes were read but do not decode, it is not tried again by later runs while
    the same path holds the same content: that verdict is kept in OUT/dedup/unreadable.parquet.
    A failure to read the bytes (file gone, a mount that failed, credentials, S3 down) says nothing
    about the content and is not kept: the next run tries again."""

    def __init__(self, store: Store, images: pa.Table, wanted: pa.Array, max_pixels: int):
        self.store, self.max_pixels = store, max_pixels
        self.key = saved.digest("unreadable", 1, max_pixels)
        old = saved.read(store, DEDUP_UNREADABLE, self.key)
        rows = [] if old is None else old.to_pylist()
        # sha -> (its first path, (width, height)): of the contents asked for and those of the
        # kept verdicts only (the rest would be one Python object per photo of the archive)
        wanted = pa.concat_arrays([wanted.cast(pa.string()), pa.array([r["sha256"] for r in rows], pa.string())])
        some = images.filter(pc.is_in(images.column("sha256"), value_set=wanted.unique()))
        first: dict[str, tuple[str, tuple[int, int]]] = {}
        for u, sh, w, h in zip(*(some.column(c).to_pylist() for c in ("uri", "sha256", "width", "height"))):
            first.setdefault(sh, (u, (w or 0, h or 0)))
        self.first = first
        # sha -> (uri, error): kept only while that content is still read from that path
        self.unreadable = {r["sha256"]: (r["uri"], r["error"]) for r in rows
                           if r["sha256"] in first and first[r["sha256"]][0] == r["uri"]}
        self.known = 0          # of the kept verdicts, how many were needed tonight
        self._kept = set(self.unreadable)
        self._changed = len(self.unreadable) != len(rows)
        self.cached = functools.lru_cache(maxsize=64)(self._load)

    def _load(self, sha: str) -> dd.Picture | None:
        from facejob.io.sources import read_bytes

        uri, size = self.first[sha]
        try:
            data = read_bytes(uri)
        except Exception as e:   # gone, a failed mount, no credentials, S3 down: may read next time
            log.warning("dedup: cannot read %s now (%s); its near-duplicate check is skipped tonight", uri, e)
            self.unreadable[sha] = (uri, None)
            return None
        try:
            return dd.load_picture(data, size, self.max_pixels)
        except Exception as e:   # the bytes themselves do not decode: so it stays while they are the same
            log.warning("dedup: cannot read %s (%s); its near-duplicate check is skipped", uri, e)
            self.unreadable[sha] = (uri, f"{type(e).__name__}: {e}")
            self._changed = True
        return None

    def size(self, sha: str) -> tuple[int, int]:
        """The full (width, height) of the photo read for `sha`."""
        return self.first[sha][1]

    def __call__(self, sha: str) -> dd.Picture | None:
        if sha in self.unreadable:
            if sha in self._kept:
                self._kept.discard(sha)
                self.known += 1
            return None
        return self.cached(sha)

    def save(self) -> None:
        """Keep tonight's verdicts for the next run (rewritten only when they changed)."""
        if not self._changed and self.store.exists(DEDUP_UNREADABLE):
            return
        rows = sorted((sha, uri, err) for sha, (uri, err) in self.unreadable.items() if err is not None)
        table = pa.table([pa.array(c, pa.string()) for c in zip(*rows)] if rows else
                         [pa.array([], pa.string())] * 3, schema=UNREADABLE_SCHEMA)
        saved.write(self.store, DEDUP_UNREADABLE, table, self.key)
