"""Which faces the audit attacks: same-person and different-person pairs of photos.

From an LFW pairs file (``name i j`` = same person, ``name1 i name2 j`` = different people), or
sampled from a `facejob index` output, grouping its faces by the curator's labels when there
are any, else by `facejob cluster`'s clusters.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facejob.io.lfw_pairs import read_lfw_pairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceRef:
    """One face: a photo and, when the photo may hold several, the box it was indexed with
    (left, top, right, bottom). Without a box the face nearest the photo's centre is meant
    (LFW photos are centred on their subject)."""

    uri: str
    box: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Pair:
    """``probe`` is the photo the attacker changes; ``reference`` the enrolled one it is matched to."""

    probe: FaceRef
    reference: FaceRef
    same: bool


def lfw_pairs(path: str | Path, images: str | Path, limit: int = 0) -> list[Pair]:
    """The pairs of an LFW pairs file, photos under `images`; `limit` > 0 keeps the first
    `limit` same-person and the first `limit` different-person pairs."""
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"images folder not found: {images}")
    pairs = [Pair(FaceRef(str(root / a)), FaceRef(str(root / b)), same) for a, b, same in read_lfw_pairs(path)]
    return take(pairs, limit)


def take(pairs: list[Pair], limit: int) -> list[Pair]:
    """The first `limit` same-person and first `limit` different-person pairs (all if limit is 0)."""
    if limit <= 0:
        return pairs
    return [p for p in pairs if p.same][:limit] + [p for p in pairs if not p.same][:limit]


def index_pairs(out: str, limit: int, seed: int = 0) -> list[Pair]:
    """`limit` same-person and `limit` different-person pairs sampled from the faces of an index
    output: people by the stored labels when at least two labelled people have two faces,
    else by cluster (run `facejob cluster` or `facejob reduce` first)."""
    from facejob.contract.layout import CLUSTERS, LABELS_STORED
    from facejob.reduce.embeddings import read_faces
    from facejob.reduce.errors import ReduceError
    from facejob.io.storage import open_store, read_parquet

    store = open_store(out)
    faces = read_faces(store, ["face_id", "uri", "left", "top", "right", "bottom"], embeddings=False).meta
    row_of = {fid: i for i, fid in enumerate(faces.column("face_id").to_pylist())}
    groups: list[list[int]] = []
    source = ""
    if store.exists(LABELS_STORED):
        t = read_parquet(store, LABELS_STORED, columns=["name", "face_id"])
        groups = _groups(t.column("name").to_pylist(), t.column("face_id").to_pylist(), row_of)
        source = "labels"
    if sum(len(g) >= 2 for g in groups) < 2 and store.exists(CLUSTERS):
        t = read_parquet(store, CLUSTERS, columns=["cluster_id", "face_id"])
        groups = _groups(t.column("cluster_id").to_pylist(), t.column("face_id").to_pylist(), row_of)
        source = "clusters"
    if sum(len(g) >= 2 for g in groups) < 2:
        raise ReduceError(f"{store.root}: need at least two people (labelled, or clusters) with two faces "
                          "each to make pairs; run `facejob reduce` (and `facejob label`) first")
    rng = np.random.default_rng(seed)
    same, diff = _sample(groups, limit, rng)
    uris = faces.column("uri").to_pylist()
    boxes = list(zip(*(faces.column(c).to_pylist() for c in ("left", "top", "right", "bottom"))))

    def ref(row: int) -> FaceRef:
        return FaceRef(uris[row], tuple(boxes[row]))

    log.info("audit: %d same-person and %d different-person pairs from %d %s of %s",
             len(same), len(diff), len(groups), source, store.root)
    return [Pair(ref(a), ref(b), True) for a, b in same] + [Pair(ref(a), ref(b), False) for a, b in diff]


def _groups(keys: list, face_ids: list, row_of: dict[str, int]) -> list[list[int]]:
    """Face rows per person key, in first-seen order; faces no longer in the index are left out."""
    by: dict = {}
    for k, fid in zip(keys, face_ids):
        if fid in row_of:
            by.setdefault(k, []).append(row_of[fid])
    return [sorted(set(rows)) for rows in by.values()]


def _sample(groups: list[list[int]], n: int, rng: np.random.Generator
            ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Up to n distinct same-group pairs (a random person, then two of their faces: big clusters
    don't crowd out the rest) and n different-group pairs."""
    multi = [g for g in groups if len(g) >= 2]
    same: set[tuple[int, int]] = set()
    diff: set[tuple[int, int]] = set()
    for _ in range(50 * n):
        if len(same) >= n:
            break
        g = multi[rng.integers(len(multi))]
        a, b = rng.choice(len(g), 2, replace=False)
        same.add((g[a], g[b]))
    for _ in range(50 * n):
        if len(diff) >= n:
            break
        i, j = rng.choice(len(groups), 2, replace=False)
        diff.add((groups[i][rng.integers(len(groups[i]))], groups[j][rng.integers(len(groups[j]))]))
    # set order is arbitrary; sort so the pairs depend on the seed only
    return sorted(same), sorted(diff)
