"""Duplicate photos: byte-identical files (same sha256), and near-duplicates — re-encoded,
resized or lightly cropped copies of one photo.

A near-duplicate pair must pass three checks, cheapest first:
1. faces: every face of one photo has a twin in the other (same count, descriptor distance
   under NEAR_MAX_DIST, and the same landmark shape: eyes and nose in the same relative places,
   i.e. the same head pose and expression);
2. arrangement: one scale + shift maps all the faces' landmarks of one photo onto the other's;
3. pixels: after that scale + shift, the two photos agree in detail: normalised cross-
   correlation of the grey images band-passed as a difference of Gaussians, over an overlap
   covering most of the smaller photo. Plain intensities are not enough: two aligned close-ups
   of one face correlate at 0.9 even when they are different shots; their detail does not.
Descriptors alone cannot decide. Measured on LFW-sized faces (~100 px), a copy's descriptor
moves by 0.10 (median) and up to 0.39 when halved in size, as far as two different photos
of one person, so steps 1-2 only pick candidates and step 3 looks at the photos (decoded at
reduced size: JPEG draft mode).

Photos without faces have no descriptors: their candidates are pairs whose perceptual hashes
(`images.phash`, 64-bit DCT pHash of the working copy) differ in at most PHASH_MAX bits, and the
pixel check (3) then searches the scale + shift itself: a few scales around the size ratio
(crops up to MAX_CROP per side), the shift at each by FFT cross-correlation of the detail images.

Of each group, the copy with the most pixels (then most bytes, then first path) is kept.
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageFilter

from facejob.image import decode

from .embeddings import first_rows, whole

log = logging.getLogger("facejob.reduce")

NEAR_MAX_DIST = 0.4      # descriptor distance under which two faces may come from one shot
SHAPE_TOL = 0.05         # landmark shape difference (RMS, in units of the shape's size); copies: p95 0.043
ARRANGE_TOL = 0.15       # landmark residual after scale + shift, in face-box sizes
MIN_CORR = 0.80          # detail agreement over the overlap (LFW: copies >= 0.85, other shots <= 0.77)
MIN_OVERLAP = 0.6        # overlap must cover this share of the smaller photo ("lightly" cropped)
WORK_PX = 192            # the pixel check compares photos scaled to about this size
# Photos without faces. Measured (bench/dedup_phash.py) on no_face/, groups/, 200 labelled and
# 300 LFW photos: copies re-encoded at q60 differ by <= 4 bits, resized to 70 % / 40 % by <= 8,
# cropped 3 % per side by median 6, p95 12, max 16; distinct photos by >= 10 (white-background
# Caltech laptops), 0.1 % of distinct pairs by <= 18. So candidates are pairs within 16 bits, and
# the pixel check (which rejects the Caltech look-alikes) decides.
PHASH_MAX = 16
MAX_CROP = 0.05          # the pixel search for faceless pairs allows this much crop per side

SCHEMA = pa.schema([
    ("group", pa.int64()),            # one id per set of copies
    ("kind", pa.string()),            # identical (all same bytes) | near
    ("uri", pa.string()),
    ("sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("size", pa.int64()),
    ("keep", pa.bool_()),             # the one copy to keep
    ("reason", pa.string()),          # why kept / why a duplicate, in words
    ("face_distance", pa.float32()),  # largest descriptor distance between matched faces (near)
    ("pixel_corr", pa.float32()),     # detail agreement with the copy it matched (near)
])


@dataclass
class Picture:
    """A grey image decoded at `ratio` times the size the faces were found at."""

    grey: Image.Image
    ratio: float


def shape_vector(lm: np.ndarray) -> np.ndarray:
    """Landmarks (n, p, 2) centred and scaled to unit RMS size, flattened: pose and expression,
    independent of where the face is and how big. Not rotated: copies are not rotated."""
    c = lm - lm.mean(axis=1, keepdims=True)
    size = np.sqrt((c ** 2).sum(2).mean(1))[:, None, None]
    return (c / np.maximum(size, 1e-9)).reshape(len(lm), -1)


def shape_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS point distance between shape vectors (broadcasting over leading axes)."""
    d = (a - b) ** 2
    return np.sqrt(d.reshape(*d.shape[:-1], -1, 2).sum(-1).mean(-1))


def load_picture(data: bytes, full_size: tuple[int, int] | None, max_pixels: int) -> Picture:
    """Grey image, upright per EXIF, decoded at reduced size (facejob.image.decode: JPEG DCT scaling).

    `full_size` is the (width, height) the indexer saw; the ratio maps face coordinates to it.
    """
    photo, level = decode.decode_reduced(data, max_pixels, 2 * WORK_PX)
    im = Image.fromarray(level.pixels).convert("L")
    full_w = full_size[0] if full_size and full_size[0] else photo.width
    return Picture(im, im.width / full_w)


def pixel_agreement(a: Picture, b: Picture, s: float, t: np.ndarray, size_a: tuple[int, int]) -> tuple[float, float]:
    """(detail correlation, overlap share of the smaller photo) of a and b placed by a ~ s * b + t
    (full-size coordinates; size_a is a's full size)."""
    f = WORK_PX / max(size_a)
    ga = _detail(a.grey, f / a.ratio)
    gb = _detail(b.grey, f * s / b.ratio)   # b at a's working scale: what is left is a shift of f * t
    ox, oy = round(f * t[0]), round(f * t[1])
    x0, y0 = max(0, ox), max(0, oy)
    x1, y1 = min(ga.shape[1], ox + gb.shape[1]), min(ga.shape[0], oy + gb.shape[0])
    if x1 - x0 < 8 or y1 - y0 < 8:
        return 0.0, 0.0
    pa_ = ga[y0:y1, x0:x1]
    pb = gb[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    overlap = pa_.size / max(min(ga.size, gb.size), 1)
    pa_, pb = pa_ - pa_.mean(), pb - pb.mean()
    denom = float(np.sqrt((pa_ * pa_).sum() * (pb * pb).sum()))
    return (float((pa_ * pb).sum()) / denom if denom > 0 else 0.0), min(overlap, 1.0)


def _detail(im: Image.Image, scale: float) -> np.ndarray:
    """Grey image at `scale`, band-passed (blur 1.5 px minus blur 4 px): edges and texture, no
    lighting gradients, no pixel noise or JPEG blocks."""
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im = im.resize(size, Image.BILINEAR, reducing_gap=2.0)
    fine = np.asarray(im.filter(ImageFilter.GaussianBlur(1.5)), np.float32)
    return fine - np.asarray(im.filter(ImageFilter.GaussianBlur(4.0)), np.float32)


@dataclass(frozen=True)
class FaceTable:
    """The faces of each photo content, flat: rows start[c] .. start[c] + count[c] of `emb`, `lm`,
    `box` are content c's faces (of one of its paths: identical bytes give identical faces)."""

    emb: np.ndarray       # (n, 128)
    lm: np.ndarray        # (n, p, 2)
    box: np.ndarray       # (n, 4) left, top, right, bottom
    start: np.ndarray     # per content code
    count: np.ndarray


@dataclass(frozen=True)
class FaceChecked:
    """Candidate content pairs (codes a, b) whose faces passed checks 1-2, with the scale + shift
    taking b's pixels onto a's and the largest descriptor distance of their matched faces."""

    a: np.ndarray
    b: np.ndarray
    scale: np.ndarray
    shift: np.ndarray     # (m, 2)
    dist: np.ndarray


def face_checks(ft: FaceTable, a: np.ndarray, b: np.ndarray, max_dist: float = NEAR_MAX_DIST) -> FaceChecked:
    """Checks 1 (one-to-one twins for every face) and 2 (one scale + shift for all landmarks) of
    the content pairs (a[i], b[i]), vectorised: pairs are grouped by face count and each group is
    matched in one go (greedy, nearest twins first), never a Python loop per pair."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    m_a, m_b = ft.count[a], ft.count[b]
    sv = shape_vector(ft.lm) if len(ft.lm) else np.empty((0, 0))
    out = []
    for m in np.unique(m_a[(m_a == m_b) & (m_a > 0)]).tolist():
        group = np.flatnonzero((m_a == m) & (m_b == m))
        step = max(1, CHECK_PAIRS // (m * m))      # bounded memory: (step, m, m, 128) differences at a time
        out += [_check_group(ft, sv, a, b, sel, m, max_dist) for sel in np.split(group, range(step, len(group), step))]
    out = [o for o in out if len(o[0])]
    if not out:
        return FaceChecked(a[:0], b[:0], np.empty(0), np.empty((0, 2)), np.empty(0))
    sel, scale, shift, worst = (np.concatenate(x) for x in zip(*out))
    order = np.argsort(sel, kind="stable")                      # candidates' order, whatever the face counts
    sel = sel[order]
    return FaceChecked(a[sel], b[sel], scale[order], shift[order], worst[order])


CHECK_PAIRS = 65_536     # face pairs compared per step of face_checks


def _check_group(ft: FaceTable, sv: np.ndarray, a: np.ndarray, b: np.ndarray, sel: np.ndarray, m: int,
                 max_dist: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """face_checks of the pairs `sel`, whose photos both have m faces: (passing sel, scale, shift, worst)."""
    ra = ft.start[a[sel]][:, None] + np.arange(m)           # (P, m) face rows of each photo
    rb = ft.start[b[sel]][:, None] + np.arange(m)
    d = np.linalg.norm(ft.emb[ra][:, :, None, :] - ft.emb[rb][:, None, :, :], axis=3)
    same = shape_diff(sv[ra][:, :, None, :], sv[rb][:, None, :, :]) <= SHAPE_TOL
    d = np.where(same, d, np.inf).reshape(len(sel), m * m)
    twin = np.full((len(sel), m), -1, np.int64)             # per face of a: its twin in b
    used_b = np.zeros((len(sel), m), bool)
    worst = np.zeros(len(sel))
    p = np.arange(len(sel))
    for flat in np.argsort(d, axis=1, kind="stable").T:      # nearest first, all pairs at once
        i, j = np.divmod(flat, m)
        ok = (d[p, flat] <= max_dist) & (twin[p, i] < 0) & ~used_b[p, j]
        twin[p[ok], i[ok]] = j[ok]
        used_b[p[ok], j[ok]] = True
        worst[ok] = np.maximum(worst[ok], d[p[ok], flat[ok]])
    full = (twin >= 0).all(1)
    sel, ra, rb, twin, worst = sel[full], ra[full], rb[full], twin[full], worst[full]
    rb = np.take_along_axis(rb, twin, 1)                    # b's twin of each face of a
    src = ft.lm[rb].reshape(len(sel), -1, 2).astype(np.float64)
    dst = ft.lm[ra].reshape(len(sel), -1, 2).astype(np.float64)
    scale, shift, resid = fit_scale_shift_many(src, dst)
    width = (ft.box[ra, 2] - ft.box[ra, 0]).mean(1)
    ok = (scale > 0) & (resid <= ARRANGE_TOL * np.maximum(width, 1.0))
    return sel[ok], scale[ok], shift[ok], worst[ok]


def fit_scale_shift_many(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares dst ~ s * src + t for each of a batch of point sets (P, m, 2): (s (P,), t (P, 2),
    rms residual (P,))."""
    ms, md = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    cs, cd = src - ms, dst - md
    denom = (cs * cs).sum((1, 2))
    s = np.where(denom > 0, (cs * cd).sum((1, 2)) / np.where(denom > 0, denom, 1.0), 1.0)
    t = md[:, 0] - s[:, None] * ms[:, 0]
    resid = np.sqrt(((s[:, None, None] * src + t[:, None] - dst) ** 2).sum(2).mean(1))
    return s, t, resid


def pixel_verdict(pic_a: Picture, pic_b: Picture, s: float, t: np.ndarray, size_a: tuple[int, int]) -> float | None:
    """Check 3 of a pair that passed checks 1-2: its detail correlation when the pixels agree, else None."""
    corr, overlap = pixel_agreement(pic_a, pic_b, s, t, size_a)
    return corr if corr >= MIN_CORR and overlap >= MIN_OVERLAP else None


@dataclass(frozen=True)
class ContentPairs:
    """Content pairs (sha_a < sha_b), sorted: two index arrays into `names` (the distinct contents,
    sorted), 8 bytes a pair where tuples of strings take ~150 (a million-photo archive has tens of
    millions of hash candidates). Iterates as (sha_a, sha_b)."""

    names: pa.Array
    a: np.ndarray
    b: np.ndarray

    def __len__(self) -> int:
        return len(self.a)

    def __iter__(self):
        for i, j in zip(self.a.tolist(), self.b.tolist()):
            yield self.names[i].as_py(), self.names[j].as_py()


PHASH_BATCH = 1 << 19    # hash pairs compared per step (4 MB of XORs: in cache)
# Rough cost, in ns, of a hash pair compared, a column listed for a row bucket and a bucket looked
# up (2-core dev box): they only rank plans (block_plan); at 200k photos the ranking's pick, 13-bit
# blocks, took 5.3 CPU-s against 13.9 for 16-bit ones, at 1M 16-bit ones ~60.
COST_PAIR, COST_COLUMN, COST_BUCKET = 1.5, 5.0, 3.0


@dataclass(frozen=True)
class Block:
    """Bits shift .. shift + bits of a hash, and the most of them (t) a pair may differ in to be
    found through this block (-1: the block is not searched)."""

    shift: int
    bits: int
    t: int

    def of(self, h: np.ndarray) -> np.ndarray:
        return ((h >> np.uint64(self.shift)) & np.uint64((1 << self.bits) - 1)).astype(np.int64)

    def ball(self) -> np.ndarray:
        """Every XOR of two block values differing in at most t bits."""
        m = np.arange(1 << self.bits, dtype=np.int64)
        return m[np.bitwise_count(m) <= self.t]

    def admits(self) -> float:
        """The share of random pairs whose block differs in at most t bits."""
        return sum(math.comb(self.bits, k) for k in range(self.t + 1)) / 2 ** self.bits


def block_plan(width: int, max_bits: int) -> list[Block]:
    """The 64 bits in ceil(64 / width) blocks with thresholds t_i, sum(t_i + 1) = max_bits + 1, so
    that every pair within max_bits differs in at most t_i bits in some block i (if it differed in
    t_i + 1 or more in every block, it would differ in more than max_bits): the generalised
    pigeonhole principle of multi-index hashing. Each of the max_bits + 1 units goes to the block
    where it admits the fewest random pairs (C(bits, t + 1) / 2^bits more)."""
    m = -(-64 // width)
    sizes = [64 // m + (i < 64 % m) for i in range(m)]
    s = [0] * m
    for _ in range(max_bits + 1):
        i = min(range(m), key=lambda i: math.comb(sizes[i], s[i]) / 2 ** sizes[i])
        s[i] += 1
    shifts = np.cumsum([0, *sizes[:-1]]).tolist()
    return [Block(sh, b, si - 1) for sh, b, si in zip(shifts, sizes, s)]


def _plan_cost(plan: list[Block], n_rows: int, n_cols: int) -> float:
    """Estimated ns of the search with `plan`: pairs compared, column lists built, buckets looked up."""
    cost = 0.0
    for b in plan:
        if b.t >= 0:
            v = len(b.ball()) if b.bits <= 16 else b.admits() * 2 ** b.bits
            groups = min(2 ** b.bits, n_rows)
            cost += (b.admits() * n_rows * n_cols * COST_PAIR
                     + groups * v * (COST_BUCKET + COST_COLUMN * n_cols / 2 ** b.bits))
    return cost


def phash_candidates(sha, hashes: np.ndarray, faceless: np.ndarray, max_bits: int = PHASH_MAX,
                     workers: int | None = None, width: int | None = None,
                     query: np.ndarray | None = None,
                     coded: tuple[np.ndarray, pa.Array] | None = None) -> ContentPairs:
    """Content pairs (sha_a < sha_b), at least one of them without faces (`faceless` mask), whose
    hashes differ in at most `max_bits` bits; with a `query` mask, only the pairs with a photo in
    it (a nightly run: the photos new since the last one). (A copy may have a false-positive face
    the other lacks, so a faceless photo is compared with every photo.)

    Exact, by multi-index hashing (Norouzi et al. 2012, with per-block thresholds): the hash is cut
    into blocks of about `width` bits (block_plan; left out: the width of least estimated cost for
    these counts, 16 at a million photos). Per block, photos are bucketed by the block's value,
    and each bucket of photos is compared with the faceless photos of the buckets within the
    block's threshold, many buckets per vectorised step on `workers` threads. A pair is kept in
    the first block that admits it (each pair once). At 16 of 64 bits no plan admits few random
    pairs: the best, four 16-bit blocks, compares 7 % of all pairs (the full scan: 100 %); memory
    is the buckets, one step's comparisons per thread and the pairs found. `coded`: content_codes(sha)
    when the caller has it (at millions of photos another coding is a hash table of every sha256)."""
    codes, names = content_codes(sha) if coded is None else coded
    q = np.ones(len(codes), bool) if query is None else np.asarray(query, bool)
    h, fl, c, q = _distinct_hashes(codes, np.asarray(hashes, np.int64), np.asarray(faceless, bool), q)
    n, nf, n_names = len(h), int(fl.sum()), len(names)
    empty = np.empty(0, np.int64)
    # (rows, faceless columns) compared: every row with every faceless one; with a query, the
    # query's rows with every faceless one, and the others with the query's faceless ones
    passes = [(np.arange(n), np.arange(nf))] if query is None else \
        [(np.flatnonzero(q), np.arange(nf)), (np.flatnonzero(~q), np.flatnonzero(q[:nf]))]
    plans = [block_plan(w, max_bits) for w in ([width] if width else range(4, 17))]
    found = []
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        for rows, cols in passes:
            if len(rows) and len(cols):
                plan = min(plans, key=lambda p: _plan_cost(p, len(rows), len(cols)))
                for k, b in enumerate(plan):
                    if b.t >= 0:
                        found += _block_pairs(pool, h, rows, cols, c, n_names, b, plan[:k], max_bits)
    keys = np.unique(np.concatenate([empty, *found]))
    return ContentPairs(names, (keys // n_names).astype(np.int32), (keys % n_names).astype(np.int32))


def _block_pairs(pool: ThreadPoolExecutor, h: np.ndarray, rows: np.ndarray, cols: np.ndarray, c: np.ndarray,
                 n_names: int, b: Block, earlier: list[Block], max_bits: int) -> list[np.ndarray]:
    """Content pair keys of the pairs (i, j), i of `rows`, j of `cols` (faceless: faceless rows
    come first, so j < i unless i is faceless too) and i > j, whose hashes h differ in at most
    max_bits bits, in at most b.t bits in block b and in more than t in every `earlier` block.

    Rows are grouped by their block value u (a bucket); a bucket's columns are the faceless rows
    of the buckets u ^ x for every x of b.ball(), listed flat. A step takes buckets with about as
    many rows (about PHASH_BATCH pairs and lookups) and compares each bucket's rows with its
    columns at once, or, when there are more buckets than rows, the k-th row of every bucket with
    its bucket's columns in one pass per k."""
    key = b.of(h)
    rows = rows[np.argsort(key[rows], kind="stable")]
    rk = key[rows]
    bounds = np.flatnonzero(np.r_[True, rk[1:] != rk[:-1], True])
    u, r0, nr = rk[bounds[:-1]], bounds[:-1], np.diff(bounds)
    hr = h[rows]                                      # row hashes, bucket by bucket
    cols = cols[np.argsort(key[cols], kind="stable")]   # by block value
    hc = h[cols]
    cstart = np.searchsorted(key[cols], np.arange((1 << b.bits) + 1))
    ball = b.ball()
    ncol = _xor_sum(np.diff(cstart), ball)[u]        # columns per bucket
    live = np.flatnonzero(ncol > 0)
    live = live[np.argsort(nr[live], kind="stable")]  # a step's buckets by row count (see step)
    cum = np.cumsum(nr[live] * ncol[live] + len(ball))
    cuts = np.unique(np.searchsorted(cum, np.arange(PHASH_BATCH, cum[-1] if len(cum) else 0, PHASH_BATCH)))

    def step(g: np.ndarray) -> np.ndarray:
        x = (u[g][:, None] ^ ball).ravel()
        s, ln = cstart[x], cstart[x + 1] - cstart[x]
        flat = np.repeat(s - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()))   # the columns, bucket by bucket
        colh = hc[flat]
        co = np.r_[0, np.cumsum(ncol[g])]
        at_r, at_c = [np.empty(0, np.int64)], [np.empty(0, np.int64)]   # hits: positions in rows, in flat
        if len(g) <= nr[g[-1]]:      # few buckets of many rows: a bucket's rows x its columns at once
            for q, v in enumerate(g.tolist()):
                d = hr[r0[v]:r0[v] + nr[v], None] ^ colh[None, co[q]:co[q + 1]]
                a, p = np.divmod(np.flatnonzero(np.bitwise_count(d) <= max_bits), ncol[v])
                at_r.append(r0[v] + a)
                at_c.append(co[q] + p)
        else:                        # many buckets of few rows: the k-th row of each bucket at once
            for k in range(int(nr[g[-1]])):
                first = int(np.searchsorted(nr[g], k, side="right"))   # the buckets with a k-th row: a suffix
                d = np.repeat(hr[r0[g[first:]] + k], ncol[g[first:]])
                np.bitwise_xor(d, colh[co[first]:], out=d)
                p = co[first] + np.flatnonzero(np.bitwise_count(d) <= max_bits)
                at_r.append(r0[g[np.searchsorted(co, p, side="right") - 1]] + k)
                at_c.append(p)
        r, p = np.concatenate(at_r), np.concatenate(at_c)
        i, j, d = rows[r], cols[flat[p]], hr[r] ^ colh[p]
        ok = (i > j) & (c[i] != c[j])   # a pair of faceless rows is found from both: once; one content: never
        for e in earlier:
            if e.t >= 0:
                ok &= np.bitwise_count(e.of(d)) > e.t
        ci, cj = c[i[ok]], c[j[ok]]
        return np.minimum(ci, cj) * n_names + np.maximum(ci, cj)

    return list(pool.map(step, [s for s in np.split(live, cuts) if len(s)]))


def _xor_sum(count: np.ndarray, ball: np.ndarray) -> np.ndarray:
    """For every block value u, the sum of count[u ^ x] over x in `ball`: an XOR convolution, by
    the Walsh-Hadamard transform (2^bits * bits operations where the direct sum takes
    2^bits * len(ball); exact: integers below 2^53)."""
    ind = np.zeros(len(count))
    ind[ball] = 1.0
    return np.rint(_wht(_wht(count.astype(np.float64)) * _wht(ind)) / len(count)).astype(np.int64)


def _wht(x: np.ndarray) -> np.ndarray:
    """The (unnormalised) Walsh-Hadamard transform of a vector of length 2^k."""
    n, h = len(x), 1
    while h < n:
        x = x.reshape(-1, 2, h)
        x = np.stack([x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]], 1)
        h *= 2
    return x.reshape(n)


def content_codes(sha) -> tuple[np.ndarray, pa.Array]:
    """Per row the rank of its sha256 among the distinct ones, and those (sorted)."""
    if isinstance(sha, (pa.Array, pa.ChunkedArray)):
        coded = _sha_codes(sha.chunks if isinstance(sha, pa.ChunkedArray) else [sha])
        if coded is not None:
            return coded
    arr = whole(sha) if isinstance(sha, (pa.Array, pa.ChunkedArray)) else pa.array(sha, pa.string())
    enc = pc.dictionary_encode(arr)
    order = pc.array_sort_indices(enc.dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)], enc.dictionary.take(order)


SHA_HEX = 64     # characters of a sha256 in hex


def positions_in(values: pa.Array | pa.ChunkedArray, names: pa.Array) -> np.ndarray:
    """Per value, its position in `names` (distinct, sorted as content_codes gives them), -1
    where it is not there. When both hold sha256 hex strings only (64 characters, no nulls), by
    binary search over the strings' bytes where they lie: pc.index_in's hash table of every
    name would cost ~100 bytes a content (~1 GiB at 10M photos)."""
    hay = _sha_bytes(names)
    out = []
    for chunk in values.chunks if isinstance(values, pa.ChunkedArray) else [values]:
        needles = None if hay is None else _sha_bytes(chunk)
        if needles is None:
            at = pc.index_in(chunk, names).to_numpy(zero_copy_only=False)
            out.append(np.where(np.isnan(at), -1, at).astype(np.int64))
            continue
        at = np.full(len(needles), -1, np.int64)
        for lo in range(0, len(needles), 1 << 20):     # the compared copies: 64 MiB at a time
            want = needles[lo:lo + (1 << 20)]
            pos = np.minimum(np.searchsorted(hay, want), max(len(hay) - 1, 0))
            hit = hay[pos] == want if len(hay) else np.zeros(len(want), bool)
            at[lo:lo + len(want)][hit] = pos[hit]
        out.append(at)
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _sha_bytes(arr: pa.Array) -> np.ndarray | None:
    """The strings of `arr` as a (n,) bytes-64 view of its data (no copy), or None unless it is a
    string array of SHA_HEX-character strings without nulls."""
    if arr.type != pa.string() or arr.null_count:
        return None
    n = len(arr)
    if n == 0:
        return np.empty(0, f"S{SHA_HEX}")
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4)
    if not np.all(offsets[1:] - offsets[:-1] == SHA_HEX):
        return None
    return np.frombuffer(arr.buffers()[2], f"S{SHA_HEX}", n, int(offsets[0]))


def _sha_codes(chunks: list[pa.Array]) -> tuple[np.ndarray, pa.Array] | None:
    """content_codes of sha256 hex strings (lowercase, no nulls), sorted by their first 64 bits
    where they lie: no hash table, no joined copy of every string (dictionary_encode's ~200 bytes
    a row at its peak, ~2 GiB at 10M photos). None for other strings, or when two distinct ones
    share those 64 bits (then content_codes hashes them)."""
    views = [_sha_bytes(c) for c in chunks]
    n = sum(len(c) for c in chunks)
    if any(v is None for v in views) or SHA_HEX * (n + 1) >= 2 ** 31:
        return None
    keys = [_hex_prefix(v) for v in views]
    if any(k is None for k in keys):
        return None
    key = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    del keys
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    del key
    same = sorted_key[1:] == sorted_key[:-1]
    del sorted_key
    starts = np.cumsum([0] + [len(v) for v in views])

    def rows(at: np.ndarray) -> np.ndarray:     # the strings of rows `at` (of all the chunks)
        if len(views) == 1:
            return views[0][at]
        out = np.empty(len(at), f"S{SHA_HEX}")
        chunk = np.searchsorted(starts, at, "right") - 1
        by = np.argsort(chunk, kind="stable")
        bounds = np.searchsorted(chunk[by], np.arange(len(views) + 1))
        for c in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            sel = by[bounds[c]:bounds[c + 1]]
            out[sel] = views[c][at[sel] - starts[c]]
        return out

    # Rows with the same first 64 bits are the same content, unless two contents collide there.
    for lo in range(0, len(same), 1 << 20):
        at = lo + np.flatnonzero(same[lo:lo + (1 << 20)])
        if not np.array_equal(rows(order[at]), rows(order[at + 1])):
            return None
    new = np.r_[True, ~same] if n else np.empty(0, bool)
    code = np.empty(n, np.int64)
    code[order] = np.cumsum(new) - 1
    names = rows(order[new])
    offsets = np.arange(0, SHA_HEX * (len(names) + 1), SHA_HEX, dtype=np.int32)
    return code, pa.Array.from_buffers(pa.string(), len(names), [None, pa.py_buffer(offsets), pa.py_buffer(names)])


def _hex_prefix(rows: np.ndarray) -> np.ndarray | None:
    """The first 16 hex digits of each bytes-64 row as an integer (their order is the strings'),
    or None when one of those is not a lowercase hex digit."""
    chars = rows.view(np.uint8).reshape(len(rows), SHA_HEX)
    key = np.empty(len(rows), np.uint64)
    for lo in range(0, len(rows), 1 << 20):
        c = chars[lo:lo + (1 << 20), :16]
        digit = np.where(c >= 97, c - 87, c - 48)    # 'a'.. -> 10.., '0'.. -> 0..
        ok = ((c >= 48) & (c <= 57)) | ((c >= 97) & (c <= 102))
        if not ok.all():
            return None
        k = np.zeros(len(c), np.uint64)
        for j in range(16):
            k = (k << np.uint64(4)) | digit[:, j].astype(np.uint64)
        key[lo:lo + len(c)] = k
    return key


def _distinct_hashes(codes: np.ndarray, hashes: np.ndarray, faceless: np.ndarray, query: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One row per distinct (content, hash), faceless (in the query) if any of its rows is: (hashes
    as uint64, faceless, content code, query), faceless rows first. Identical files are compared once."""
    order = np.lexsort((hashes, codes))
    c, h = codes[order], hashes[order]
    start = np.flatnonzero(np.r_[True, (c[1:] != c[:-1]) | (h[1:] != h[:-1])]) if len(c) else np.empty(0, np.int64)
    fl, q = ((np.maximum.reduceat(m[order], start) if len(c) else np.empty(0, bool)) for m in (faceless, query))
    first = np.argsort(~fl, kind="stable")
    return h[start][first].view(np.uint64), fl[first], c[start][first], q[first]


def search_alignment(a: Picture, b: Picture, size_a: tuple[int, int], size_b: tuple[int, int]
                     ) -> tuple[float, float]:
    """Best (detail correlation, overlap) of b placed on a by some scale + shift, for photos
    without faces to align them by: scales from the size ratio down/up to a MAX_CROP crop per
    side, the shift at each scale from the peak of the FFT cross-correlation."""
    f = WORK_PX / max(size_a)
    ga = _detail(a.grey, f / a.ratio)
    ratio = size_a[0] / max(size_b[0], 1)
    best = (0.0, 0.0)
    for s in ratio * np.geomspace(1 - 2 * MAX_CROP, 1 / (1 - 2 * MAX_CROP), 9):
        gb = _detail(b.grey, f * s / b.ratio)
        h, w = ga.shape[0] + gb.shape[0], ga.shape[1] + gb.shape[1]
        xc = np.fft.irfft2(np.fft.rfft2(ga, (h, w)) * np.conj(np.fft.rfft2(gb, (h, w))), (h, w))
        oy, ox = np.unravel_index(int(np.argmax(xc)), xc.shape)
        oy, ox = (oy - h if oy >= ga.shape[0] else oy), (ox - w if ox >= ga.shape[1] else ox)
        corr, overlap = pixel_agreement(a, b, float(s), np.array([ox / f, oy / f]), size_a)
        if overlap >= MIN_OVERLAP and corr > best[0]:
            best = (corr, overlap)
    return best


def faceless_verdict(pic_a: Picture, pic_b: Picture, size_a: tuple[int, int], size_b: tuple[int, int]) -> float | None:
    """The pixel check of a faceless candidate pair: its detail correlation when the pixels agree, else None."""
    corr, overlap = search_alignment(pic_a, pic_b, size_a, size_b)
    return corr if corr >= MIN_CORR and overlap >= MIN_OVERLAP else None


def groups_table(images: pa.Table, near: list[tuple[str, str, float, float]]) -> pa.Table:
    """duplicates.parquet rows: groups of identical bytes joined by near-duplicate pairs. The
    photos in no group are set aside by array operations first: an archive of millions has few
    duplicates, and one Python object per photo would be gigabytes."""
    return _groups_of(images.take(pa.array(_grouped_rows(images, near), pa.int64())), near)


def _grouped_rows(images: pa.Table, near: list[tuple[str, str, float, float]]) -> np.ndarray:
    """The rows of `images` that `_groups_of` puts in a group, in order: the first row of each
    path with a sha256, whose content has another such path or is joined by `near` pairs to
    another content."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    valid = np.flatnonzero(pc.is_valid(images.column("sha256")).to_numpy(zero_copy_only=False))
    every = len(valid) == images.num_rows       # as a rule: then the columns are read, not copied
    first = first_rows(images.column("uri") if every else images.column("uri").take(pa.array(valid)))
    kept = valid if first is None else valid[first]
    if not len(kept):
        return kept
    sha = images.column("sha256")
    code, names = content_codes(sha if every and first is None else sha.take(pa.array(kept)))
    paths_per_content = np.bincount(code, minlength=len(names))
    ends = [pc.index_in(pa.array([p[k] for p in near], pa.string()), names).to_numpy(zero_copy_only=False)
            for k in (0, 1)] if near else [np.empty(0)] * 2
    ok = ~np.isnan(ends[0]) & ~np.isnan(ends[1])
    a, b = ends[0][ok].astype(np.int64), ends[1][ok].astype(np.int64)
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(len(names), len(names)))
    _, group = connected_components(graph, directed=False)
    paths_per_group = np.bincount(group, weights=paths_per_content)
    return kept[paths_per_group[group[code]] >= 2]


def _groups_of(images: pa.Table, near: list[tuple[str, str, float, float]]) -> pa.Table:
    uri = images.column("uri").to_pylist()
    sha = images.column("sha256").to_pylist()
    width = images.column("width").to_pylist()
    height = images.column("height").to_pylist()
    size = images.column("size").to_pylist()
    by_sha: dict[str, list[int]] = {}
    seen: set[str] = set()
    for r, s in enumerate(sha):
        if s is not None and uri[r] not in seen:   # a photo listed twice is still one photo
            seen.add(uri[r])
            by_sha.setdefault(s, []).append(r)
    parent = {s: s for s in by_sha}

    def find(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    link: dict[tuple[str, str], tuple[float, float]] = {}
    for a, b, d, c in near:
        if a in parent and b in parent:
            parent[find(a)] = find(b)
            link[(a, b)] = link[(b, a)] = (d, c)
    adj: dict[str, list[str]] = {}
    for (x, y) in link:
        adj.setdefault(x, []).append(y)
    members: dict[str, list[str]] = {}
    for s in by_sha:
        members.setdefault(find(s), []).append(s)
    rows: list[dict] = []
    gid = 0
    for shas in sorted(members.values(), key=lambda m: min(uri[r] for s in m for r in by_sha[s])):
        rs = [r for s in shas for r in by_sha[s]]
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: uri[r])
        best = max(rs, key=lambda r: ((width[r] or 0) * (height[r] or 0), size[r] or 0))  # first path wins ties
        kind = "identical" if len(shas) == 1 else "near"
        for r in rs:
            d = c = None
            if r == best:
                why = (f"kept: first path of {len(rs)} identical files" if kind == "identical"
                       else f"kept: largest of {len(rs)} copies ({width[r]}x{height[r]}, {size[r]} bytes)")
            elif sha[r] == sha[best]:
                why = f"identical bytes to {uri[best]}"
            else:
                d, c = _path_evidence(sha[r], sha[best], link, adj)
                what = (f"same faces (distance <= {d:.3f}) in the same arrangement" if d > 0
                        else "no faces, similar perceptual hash")
                why = (f"near-duplicate of {uri[best]}: {what}, pixels agree (corr {c:.3f}); "
                       f"{width[r]}x{height[r]} vs {width[best]}x{height[best]}")
            rows.append({"group": gid, "kind": kind, "uri": uri[r], "sha256": sha[r], "width": width[r],
                         "height": height[r], "size": size[r], "keep": r == best, "reason": why,
                         "face_distance": d, "pixel_corr": c})
        gid += 1
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _path_evidence(a: str, b: str, link: dict, adj: dict) -> tuple[float, float]:
    """Evidence linking contents a and b: the direct pair if checked, else the weakest link on a
    shortest path of checked pairs."""
    if (a, b) in link:
        return link[(a, b)]
    prev, frontier = {a: None}, [a]
    while frontier and b not in prev:
        nxt = []
        for x in frontier:
            for y in adj.get(x, []):
                if y not in prev:
                    prev[y] = x
                    nxt.append(y)
        frontier = nxt
    d, c, node = 0.0, 1.0, b
    while prev.get(node) is not None:
        ld, lc = link[(node, prev[node])]
        d, c, node = max(d, ld), min(c, lc), prev[node]
    return d, c
