"""Stable cluster ids: a new clustering inherits the ids of the previous run's clusters.

Each previous cluster hands its id to the new cluster that holds most of its faces (its heir).
A new cluster that is heir to several old ids keeps the one it shares most faces with and the
others are recorded as merged into it; an old cluster whose faces ended up in several new
clusters is recorded as split; clusters with no old faces get fresh ids. Ids are never reused:
`next_id` only grows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Assignment:
    cluster_id: np.ndarray                 # per face, int64
    next_id: int
    events: list[dict] = field(default_factory=list)   # merge / split / gone, see assign_ids


def assign_ids(roots: np.ndarray, prev_id: np.ndarray, next_id: int) -> Assignment:
    """Cluster ids for a new clustering.

    roots: per face, its new cluster (any integer label). prev_id: per face, the cluster id it
    had in the previous run, or -1 for a face that is new. next_id: the first id never used.
    Events: {"event": "merge", "cluster_id": kept, "from": [absorbed ids]},
    {"event": "split", "cluster_id": old, "into": [ids that took some of its faces]},
    {"event": "gone", "cluster_id": old} is added by the caller for ids with no faces left.
    """
    n = len(roots)
    uroots, cl = np.unique(roots, return_inverse=True)
    sizes = np.bincount(cl, minlength=len(uroots))
    new_of_cluster = np.full(len(uroots), -1, np.int64)
    events: list[dict] = []

    old = prev_id >= 0
    if old.any():
        # Overlap counts between (new cluster, old id) pairs that share faces.
        pairs, count = np.unique(np.stack([cl[old], prev_id[old]], 1), axis=0, return_counts=True)
        pc, po = pairs[:, 0], pairs[:, 1]
        # Heir of each old id: the new cluster with the largest overlap (ties: smallest new cluster index).
        o_order = np.lexsort((pc, -count, po))
        first = np.ones(len(o_order), bool)
        first[1:] = po[o_order][1:] != po[o_order][:-1]
        heir_rows = o_order[first]                       # one row per old id
        # Among the old ids a new cluster is heir to, it keeps the one with the largest overlap.
        h_order = heir_rows[np.lexsort((po[heir_rows], -count[heir_rows], pc[heir_rows]))]
        hc, ho = pc[h_order], po[h_order]
        keep_first = np.ones(len(h_order), bool)
        keep_first[1:] = hc[1:] != hc[:-1]
        new_of_cluster[hc[keep_first]] = ho[keep_first]
        for c, absorbed in _groups(hc[~keep_first], ho[~keep_first]):
            events.append({"event": "merge", "cluster_id": int(new_of_cluster[c]), "from": sorted(absorbed)})
    # Fresh ids, biggest clusters first, so the first run numbers clusters by size.
    fresh = np.flatnonzero(new_of_cluster < 0)
    fresh = fresh[np.lexsort((uroots[fresh], -sizes[fresh]))]
    new_of_cluster[fresh] = np.arange(next_id, next_id + len(fresh))
    next_id += len(fresh)
    cluster_id = new_of_cluster[cl]

    if old.any():
        heir = np.full(int(po.max()) + 1, -1, np.int64)
        heir[po[heir_rows]] = pc[heir_rows]
        off = pc != heir[po]                             # faces of an old id that left its heir
        for o, into in _groups(po[off], new_of_cluster[pc[off]]):
            events.append({"event": "split", "cluster_id": o, "into": sorted(into)})
    assert len(cluster_id) == n
    return Assignment(cluster_id, next_id, events)


def _groups(keys: np.ndarray, values: np.ndarray) -> list[tuple[int, list[int]]]:
    """[(key, [values...])] grouped by key, keys ascending."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return [(int(k[0]), v.tolist()) for k, v in zip(np.split(keys, cuts), np.split(values, cuts)) if len(k)]
