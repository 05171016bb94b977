"""The dedup step: byte-identical and near-duplicate photos → OUT/duplicates.parquet. The
candidates come from the search index (photos with near faces) and the perceptual hashes
(photos without faces); the pixel checks are facejob.reduce.duplicates.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from facejob.contract.layout import DUPLICATES, RUN_JSON
from facejob.io.lock import writes_output
from facejob.io.storage import Store, write_parquet
from facejob.io.storage import open_store as _store

from . import duplicates as dd
from .embeddings import ALL_COLUMNS, Faces, read_faces, read_images
from .hnsw import FaceIndex, update_index

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


@writes_output("dedup")
def dedup(out: str | Store, faces: Faces | None = None, fi: FaceIndex | None = None) -> DedupSummary:
    """Find byte-identical and near-duplicate photos → OUT/duplicates.parquet."""
    store = _store(out)
    images = read_images(store, ["uri", "sha256", "size", "width", "height", "status"], optional=["phash"])
    if faces is None or any(c not in faces.meta.column_names for c in ALL_COLUMNS):
        faces = read_faces(store, ALL_COLUMNS)
    fi = fi if fi is not None else update_index(store, faces, log=log.info)
    cand = _near_candidates(fi, faces)
    by_sha = _faces_by_sha(faces, {s for pair in cand for s in pair})
    first = {}
    for u, sh, w, h in zip(*(images.column(c).to_pylist() for c in ("uri", "sha256", "width", "height"))):
        first.setdefault(sh, (u, (w or 0, h or 0)))
    from facejob.config import DEFAULT_MAX_PIXELS, load_run_config

    max_pixels = load_run_config(store).max_pixels if store.exists(RUN_JSON) else DEFAULT_MAX_PIXELS
    load = _picture_loader(first, max_pixels)
    near = dd.near_pairs(by_sha, cand, load, lambda sha: first[sha][1])
    faceless = _faceless_candidates(images)
    near += dd.faceless_pairs(faceless, load, lambda sha: first[sha][1])
    table = dd.groups_table(images, near)
    write_parquet(store, DUPLICATES, table)
    groups = pc.count_distinct(table.column("group")).as_py() if table.num_rows else 0
    ident_groups = len(set(table.filter(pc.equal(table.column("kind"), "identical")).column("group").to_pylist()))
    s = DedupSummary(photos=images.num_rows, groups=groups, identical_groups=ident_groups,
                     near_groups=groups - ident_groups, duplicates=int(table.num_rows - groups), candidates=len(cand),
                     faceless_candidates=len(faceless))
    log.info("dedup: %d groups (%d identical, %d near), %d duplicate photos; %d pairs with faces and %d "
             "without compared", s.groups, s.identical_groups, s.near_groups, s.duplicates, s.candidates,
             s.faceless_candidates)
    return s


def _faceless_candidates(images: pa.Table) -> dd.ContentPairs:
    """Content pairs with a photo without faces whose perceptual hashes are close (outputs indexed
    before the phash column have none: their faceless photos are only matched by bytes)."""
    rows = images.filter(pc.is_valid(images.column("phash")))
    sha = rows.column("sha256")
    hashes = rows.column("phash").to_numpy(zero_copy_only=False).astype(np.int64)
    faceless = np.asarray(pc.equal(rows.column("status"), "no_face").to_numpy(zero_copy_only=False), bool)
    return dd.phash_candidates(sha, hashes, faceless)


def _near_candidates(fi: FaceIndex, faces: Faces, k: int = 8) -> list[tuple[str, str]]:
    """Content pairs (sha_a < sha_b) with a face pair under NEAR_MAX_DIST and the same landmark shape."""
    n = len(faces)
    if n < 2:
        return []
    rows = fi.rows_for(faces)
    code, names = dd.content_codes(faces.meta.column("sha256"))
    shape = dd.shape_vector(_landmarks(faces))
    keys = [np.empty(0, np.int64)]
    for lo in range(0, n, 100_000):
        labels, d = fi.query(faces.embeddings[lo:lo + 100_000], k)
        i = np.broadcast_to(np.arange(lo, lo + len(labels))[:, None], labels.shape)
        j = rows[labels]
        ok = (j >= 0) & (d <= dd.NEAR_MAX_DIST)
        i, j = i[ok], j[ok]
        ok = (code[i] != code[j]) & (dd.shape_diff(shape[i], shape[j]) <= dd.SHAPE_TOL)
        a, b = code[i[ok]], code[j[ok]]
        keys.append(np.minimum(a, b) * len(names) + np.maximum(a, b))
    keys = np.unique(np.concatenate(keys))
    return list(dd.ContentPairs(names, keys // len(names), keys % len(names)))


def _landmarks(faces: Faces) -> np.ndarray:
    col = faces.meta.column("landmarks").combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    per = (len(flat) // max(len(col), 1)) if len(col) else 10
    return flat.reshape(len(col), per // 2, 2).astype(np.float64)


def _boxes(faces: Faces) -> np.ndarray:
    return np.stack([faces.meta.column(c).to_numpy() for c in ("left", "top", "right", "bottom")], 1).astype(np.float64)


def _faces_by_sha(faces: Faces, wanted: set[str]) -> dict[str, dd.PhotoFaces]:
    """The faces of one photo per wanted content (identical bytes give identical faces)."""
    sha = faces.meta.column("sha256").to_pylist()
    uri = faces.meta.column("uri").to_pylist()
    rows: dict[str, list[int]] = {}
    first_uri: dict[str, str] = {}
    for r, (s, u) in enumerate(zip(sha, uri)):
        if s in wanted and first_uri.setdefault(s, u) == u:
            rows.setdefault(s, []).append(r)
    if not rows:
        return {}
    lm, box = _landmarks(faces), _boxes(faces)
    return {s: dd.PhotoFaces(faces.embeddings[r], lm[r], box[r]) for s, r in rows.items()}


def _picture_loader(first: dict[str, tuple[str, tuple[int, int]]], max_pixels: int):
    """sha256 -> its photo (one path holding those bytes) as a reduced grey Picture, cached."""
    from facejob.io.sources import read_bytes

    @functools.lru_cache(maxsize=64)
    def load(sha: str) -> dd.Picture | None:
        uri, size = first[sha]
        try:
            return dd.load_picture(read_bytes(uri), size, max_pixels)
        except Exception as e:  # a photo gone or unreadable since indexing: skip its pairs
            log.warning("dedup: cannot read %s (%s); its near-duplicate check is skipped", uri, e)
            return None
    return load
