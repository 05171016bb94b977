"""`facejob eval`: the LFW verification protocol (10 folds) on any index output.

Each pair's two photos are looked up under the images folder; each photo's face is the one
nearest its centre (LFW photos are centred on their subject); a pair with a photo where no face
was found counts as "different" (and as missing). Per fold, the distance threshold that is best
on the other nine folds is applied to the fold; the accuracy is the mean over folds, with its
standard deviation.

Folds: an official View 2 file (`10 300` header) has its 10 folds of 300 same + 300 different
pairs; any other pairs file (View 1's `pairsDevTest.txt`: a count, then that many same then
that many different pairs) is cut into 10 folds, each a tenth of the same and of the different
pairs, in file order.

With `learn_metric`, for each fold a metric head (facejob.reduce.metric) is trained on the faces
of the people of the other nine folds (every face of theirs in the output; a person who also
appears in the tested fold is left out: identity-disjoint, as LFW's unrestricted protocol
allows) and the fold is scored with the learned descriptors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facejob.io.storage import Store

from .errors import ReduceError


@dataclass
class Pairs:
    a: list[str]             # relative photo paths
    b: list[str]
    same: np.ndarray         # bool
    fold: np.ndarray         # int, 0..9


def read_pairs(path: str | Path) -> Pairs:
    """An LFW pairs file (View 1 or View 2) with its 10 folds (see the module docstring)."""
    from facejob.io.lfw_pairs import read_lfw_pairs

    p = Path(path)
    if not p.is_file():
        raise ReduceError(f"pairs file not found: {path}")
    try:
        rows = read_lfw_pairs(p)
    except ValueError as e:
        raise ReduceError(str(e)) from None
    if not rows:
        raise ReduceError(f"{path}: no pairs")
    head = p.read_text().split("\n", 1)[0].split()
    same = np.array([s for _, _, s in rows], bool)
    fold = np.empty(len(rows), np.int64)
    if len(head) == 2 and len(rows) == 2 * int(head[0]) * int(head[1]):
        n_folds, per = int(head[0]), int(head[1])
        fold[:] = np.arange(len(rows)) // (2 * per)
        if n_folds != 10:
            raise ReduceError(f"{path}: {n_folds} folds; the protocol has 10")
    else:
        for kind in (True, False):      # each fold: a tenth of the same and of the different pairs
            idx = np.flatnonzero(same == kind)
            fold[idx] = np.arange(len(idx)) * 10 // max(len(idx), 1)
    return Pairs([a for a, _, _ in rows], [b for _, b, _ in rows], same, fold)


def centre_faces(store: Store, images: Path) -> tuple[dict[str, int], np.ndarray, list[str]]:
    """Per photo (path relative to `images`): the row of its centre face; every face's
    embedding; and every face's photo path relative to `images` ('' if outside it)."""
    from .embeddings import read_faces, read_images

    im = read_images(store, ["uri", "width", "height"])
    size = {u: (w or 0, h or 0) for u, w, h in zip(*(im.column(c).to_pylist() for c in ("uri", "width", "height")))}
    f = read_faces(store, ["face_id", "uri", "left", "top", "right", "bottom"])
    uri = f.meta.column("uri").to_pylist()
    box = np.stack([f.meta.column(c).to_numpy() for c in ("left", "top", "right", "bottom")], 1).astype(np.float64)
    root = str(Path(images).resolve()) + "/"
    rel = [u[len(root):] if u.startswith(root) else "" for u in uri]
    best: dict[str, tuple[float, int]] = {}
    for r, (u, k) in enumerate(zip(uri, rel)):
        if not k:
            continue
        w, h = size.get(u, (0, 0))
        d = ((box[r, 0] + box[r, 2]) / 2 - w / 2) ** 2 + ((box[r, 1] + box[r, 3]) / 2 - h / 2) ** 2
        if k not in best or d < best[k][0]:
            best[k] = (d, r)
    return {k: r for k, (_, r) in best.items()}, f.embeddings, rel


def fold_accuracy(d: np.ndarray, same: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Per fold: accuracy at the threshold best on the other folds (inf distance = different)."""
    acc = np.empty(10)
    for k in range(10):
        tr, te = fold != k, fold == k
        fin = np.sort(np.unique(d[tr][np.isfinite(d[tr])]))
        cand = (fin[:-1] + fin[1:]) / 2 if len(fin) > 1 else np.array([0.6])
        # accuracy on the training folds for every candidate threshold, via sorted cumulative counts
        order = np.argsort(d[tr])
        ds, ss = d[tr][order], same[tr][order]
        below_same = np.concatenate([[0], np.cumsum(ss)])
        below_diff = np.concatenate([[0], np.cumsum(~ss)])
        at = np.searchsorted(ds, cand, side="left")
        right = below_same[at] + ((~ss).sum() - below_diff[at])
        t = cand[int(np.argmax(right))]
        acc[k] = np.mean((d[te] < t) == same[te])
    return acc


def evaluate(out: str | Store, pairs_file: str | Path, images: str | Path, learn_metric: bool = False,
             params=None, log=None) -> dict:
    """{"plain": {"accuracy", "std"}, "learned": {...} (with learn_metric), "pairs", "missing"}."""
    from facejob.io.storage import open_store

    from . import metric

    store = open_store(out) if isinstance(out, (str, Path)) else out
    images = Path(images)
    if not images.is_dir():
        raise ReduceError(f"images folder not found: {images}")
    P = read_pairs(pairs_file)
    row_of, emb, rel = centre_faces(store, images)
    ra = np.array([row_of.get(a, -1) for a in P.a])
    rb = np.array([row_of.get(b, -1) for b in P.b])
    ok = (ra >= 0) & (rb >= 0)
    if not ok.any():
        raise ReduceError(f"no pair has a face in {store.root} for both photos under {images}; "
                          "was this folder indexed into that output?")

    def dists(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = np.full(len(a), np.inf)
        d[ok] = np.linalg.norm(x[a[ok]] - x[b[ok]], axis=1)
        return d

    plain = fold_accuracy(dists(emb, ra, rb), P.same, P.fold)
    result = {"plain": {"accuracy": float(plain.mean()), "std": float(plain.std())},
              "pairs": len(P.same), "missing": int((~ok).sum())}
    if learn_metric:
        params = params or metric.MetricParams()
        person_of_face = np.array([k.split("/", 1)[0] if k else "" for k in rel])
        # Only the subject (centre) face of each photo is a named example of its folder's person.
        subject = np.zeros(len(rel), bool)
        subject[list(row_of.values())] = True
        names, pid = np.unique(person_of_face, return_inverse=True)
        pid = np.where(subject & (person_of_face != ""), pid, -1)
        people_in = [set() for _ in range(10)]
        for a, b, k in zip(P.a, P.b, P.fold):
            people_in[k] |= {a.split("/", 1)[0], b.split("/", 1)[0]}
        learned = np.empty(10)
        for k in range(10):
            train_people = set().union(*(people_in[j] for j in range(10) if j != k)) - people_in[k]
            use = (pid >= 0) & np.isin(person_of_face, sorted(train_people))
            head = metric.train(emb[use], pid[use], params)
            x = emb.copy()
            fold_rows = np.unique(np.concatenate([ra[(P.fold == k) & ok], rb[(P.fold == k) & ok]]))
            x[fold_rows] = head.apply(emb[fold_rows])
            # Thresholds come from the other folds, scored with the same head.
            other = np.unique(np.concatenate([ra[(P.fold != k) & ok], rb[(P.fold != k) & ok]]))
            x[other] = head.apply(emb[other])
            learned[k] = fold_accuracy(dists(x, ra, rb), P.same, P.fold)[k]
            if log:
                log(f"fold {k + 1}/10: {len(train_people)} training people, {int(use.sum())} faces; "
                    f"plain {plain[k]:.4f}, learned {learned[k]:.4f}")
        result["learned"] = {"accuracy": float(learned.mean()), "std": float(learned.std())}
    return result
