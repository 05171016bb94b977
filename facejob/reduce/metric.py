"""A learned metric head: a small map over the 128-d descriptors, trained on the curator's people.

    y = x + A x + c                      (linear head, the default)
    y = x + W2 relu(W1 x + b1) + b2      (one hidden layer, `hidden` > 0)

The head starts as the identity (A = 0, W2 = 0) and is pulled back toward it while training, so
distances stay in dlib's units (the 0.6 pair threshold, the clustering threshold) and a head
that learned nothing changes nothing. Training (PyTorch, CPU) uses batch-hard triplets over the
named people (P people x K faces per batch: each face's farthest same-person face must be
`margin` nearer than its nearest other-person face) plus the curator's cannot-link pairs
("not this person": pushed beyond `cannot_distance`).

`fit` keeps a head only if it helps: it first trains on 80 % of the people and measures, on the
other 20 %, how often a face's nearest neighbour among those people's faces is the same person
(and the pair accuracy at the best threshold); a head that is not better than the plain
descriptors on both is not kept, so an archive never gets a worse metric, and one without labels
never has a head. Saved as plain arrays (npz, loaded with allow_pickle=False) and JSON.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from facejob.contract.layout import METRIC_JSON, METRIC_NPZ

from .embeddings import Descriptors
from .errors import ReduceError, check_params, check_rows, is_int, is_real, not_fitted

FORMAT = 1
METRICS = ("learned", "plain")


@dataclass(frozen=True)
class MetricParams:
    """Training settings of the metric head (saved with it)."""

    hidden: int = 0               # 0: linear head; > 0: one hidden layer of this width
    epochs: int = 40
    people_per_batch: int = 32
    faces_per_person: int = 4
    margin: float = 0.25          # batch-hard triplet margin, in descriptor (dlib) units
    cannot_distance: float = 0.7  # "not this person" pairs are pushed at least this far apart
    identity_weight: float = 1e-2  # pull toward the identity map (keeps dlib's units)
    lr: float = 2e-3
    seed: int = 0
    min_people: int = 5           # fewer named people with 2+ faces: no head


@dataclass
class Head:
    arrays: dict[str, np.ndarray]     # A, c (linear) or W1, b1, W2, b2 (hidden layer)
    params: MetricParams
    info: dict

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The learned descriptors of rows `x` (float32, same shape)."""
        x = np.asarray(x, np.float32)
        a = self.arrays
        if "A" in a:
            return (x + x @ a["A"] + a["c"]).astype(np.float32)
        h = np.maximum(x @ a["W1"] + a["b1"], 0)
        return (x + h @ a["W2"] + a["b2"]).astype(np.float32)


def fingerprint(x: np.ndarray, people: np.ndarray, cannot: np.ndarray, params: MetricParams) -> str:
    """What a head was trained on: when it is unchanged, so is the head (nightly skips retraining)."""
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(x, np.float32), np.asarray(people, np.int64), np.asarray(cannot, np.int64)):
        h.update(arr.tobytes())
    h.update(json.dumps(asdict(params), sort_keys=True).encode())
    return h.hexdigest()[:16]


def train(x: np.ndarray, people: np.ndarray, params: MetricParams = MetricParams(),
          cannot: np.ndarray | None = None) -> Head:
    """A head trained on rows `x` with person ids `people` (>= 0; -1: no person, used only in
    `cannot` pairs) and cannot-link row pairs `cannot` ((m, 2))."""
    import torch

    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    d = x.shape[1]
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if params.hidden:
        w1 = torch.nn.Parameter(torch.randn(d, params.hidden) * (1 / np.sqrt(d)))
        b1 = torch.nn.Parameter(torch.zeros(params.hidden))
        w2 = torch.nn.Parameter(torch.zeros(params.hidden, d))
        b2 = torch.nn.Parameter(torch.zeros(d))
        weights = [w1, b1, w2, b2]

        def f(v):
            return v + torch.relu(v @ w1 + b1) @ w2 + b2
        reg = lambda: (w2 ** 2).sum() + (b2 ** 2).sum()          # noqa: E731
    else:
        A = torch.nn.Parameter(torch.zeros(d, d))
        c = torch.nn.Parameter(torch.zeros(d))
        weights = [A, c]

        def f(v):
            return v + v @ A + c
        reg = lambda: (A ** 2).sum() + (c ** 2).sum()            # noqa: E731
    opt = torch.optim.Adam(weights, lr=params.lr)
    groups = [np.flatnonzero(people == p) for p in np.unique(people[people >= 0])]
    groups = [g for g in groups if len(g) >= 2]
    cannot = np.asarray(cannot if cannot is not None else np.empty((0, 2)), np.int64).reshape(-1, 2)
    t0 = time.perf_counter()
    steps = 0
    for _ in range(params.epochs):
        order = rng.permutation(len(groups))
        for lo in range(0, len(order), params.people_per_batch):
            batch = [groups[i] for i in order[lo:lo + params.people_per_batch]]
            if len(batch) < 2:
                continue
            rows = np.concatenate([rng.choice(g, min(len(g), params.faces_per_person), replace=False) for g in batch])
            who = torch.from_numpy(people[rows])
            y = f(xt[rows])
            dist = torch.cdist(y, y)
            same = who[:, None] == who[None, :]
            pos = torch.where(same, dist, torch.zeros_like(dist)).max(1).values
            neg = torch.where(same, torch.full_like(dist, 1e4), dist).min(1).values
            loss = torch.relu(pos - neg + params.margin).mean()
            if len(cannot):
                pick = cannot[rng.integers(0, len(cannot), min(len(cannot), 64))]
                dc = (f(xt[pick[:, 0]]) - f(xt[pick[:, 1]])).norm(dim=1)
                loss = loss + torch.relu(params.cannot_distance - dc).pow(2).mean()
            loss = loss + params.identity_weight * reg()
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
    names = ("A", "c") if not params.hidden else ("W1", "b1", "W2", "b2")
    arrays = {n: w.detach().numpy().astype(np.float32) for n, w in zip(names, weights)}
    return Head(arrays, params, {"people": len(groups), "faces": int(sum(len(g) for g in groups)),
                                 "cannot_link": len(cannot), "steps": steps,
                                 "train_s": round(time.perf_counter() - t0, 2)})


def nn_accuracy(x: np.ndarray, people: np.ndarray) -> float:
    """Share of faces (of people with 2+ faces) whose nearest other face is the same person."""
    d = (x * x).sum(1)[:, None] + (x * x).sum(1)[None] - 2 * x @ x.T
    np.fill_diagonal(d, np.inf)
    count = np.bincount(people)
    ok = count[people] >= 2
    return float(np.mean(people[d.argmin(1)][ok] == people[ok])) if ok.any() else float("nan")


def pair_accuracy(x: np.ndarray, people: np.ndarray) -> float:
    """Accuracy of same/different at the best distance threshold over all pairs, classes balanced."""
    i, j = np.triu_indices(len(x), 1)
    d = np.linalg.norm(x[i] - x[j], axis=1)
    same = people[i] == people[j]
    if same.all() or not same.any():
        return float("nan")
    order = np.argsort(d)
    w = np.where(same[order], 0.5 / same.sum(), 0.5 / (~same).sum())
    # accuracy at a threshold after k pairs = same pairs below + different pairs above
    below_same = np.cumsum(np.where(same[order], w, 0))
    above_diff = 0.5 - np.cumsum(np.where(same[order], 0, w))
    return float((below_same + above_diff).max())


def fit(x: np.ndarray, people: np.ndarray, params: MetricParams = MetricParams(),
        cannot: np.ndarray | None = None) -> tuple[Head | None, dict]:
    """A head for these named faces if it is better than the plain descriptors on held-out
    people (see the module docstring), trained on all of them; else None. Also the check's figures."""
    ids = np.unique(people[people >= 0])
    multi = ids[np.bincount(people[people >= 0])[ids] >= 2]
    if len(multi) < params.min_people:
        return None, {"kept": False, "why": f"{len(multi)} named people with 2+ faces (< {params.min_people})"}
    rng = np.random.default_rng(params.seed)
    val_people = rng.permutation(multi)[: max(2, len(multi) // 5)]
    val = np.isin(people, val_people)
    head = train(x[~val], np.where(people[~val] >= 0, people[~val], -1), params,
                 _keep_pairs(cannot, ~val))
    xv, pv = x[val], people[val]
    check = {"val_people": int(len(val_people)), "val_faces": int(val.sum()),
             "nn_plain": nn_accuracy(xv, pv), "nn_learned": nn_accuracy(head.apply(xv), pv),
             "pairs_plain": pair_accuracy(xv, pv), "pairs_learned": pair_accuracy(head.apply(xv), pv)}
    better = check["nn_learned"] >= check["nn_plain"] and check["pairs_learned"] > check["pairs_plain"]
    check["kept"] = bool(better)
    if not better:
        check["why"] = "not better than the plain descriptors on held-out people"
        return None, check
    head = train(x, people, params, cannot)
    head.info["check"] = check
    return head, check


class MetricLearner:
    """The metric head as a scikit-learn-style transformer, over `fit` / `train` and `Head.apply`.

    `MetricLearner(params).fit(X, people, cannot)` trains a head; with `select` (the default) it
    is kept only if it beats the plain descriptors on held-out people (`fit`), else always
    (`train`). `transform(X)` gives the learned descriptors, or X itself when no head was kept.
    The settings are checked when it is made (ConfigError, a ValueError). Fitted: `head_` (the
    Head that is saved, or None), `check_` (the held-out figures with `select`, else None).
    """

    def __init__(self, params: MetricParams = MetricParams(), select: bool = True):
        self.params, self.select = params, select
        self._check()

    @classmethod
    def from_head(cls, head: Head | None) -> MetricLearner:
        """A fitted learner around a saved head (`load`); None: the plain descriptors."""
        learner = cls(head.params if head is not None else MetricParams())
        learner.head_, learner.check_ = head, None
        return learner

    def _check(self) -> None:
        p = self.params
        if not isinstance(p, MetricParams):
            raise ValueError(f"{type(self).__name__}: params must be MetricParams, got {type(p).__name__}")
        check_params(type(self).__name__, p, [
            ("hidden", lambda v: is_int(v) and v >= 0, "an integer >= 0 (0: linear head)"),
            ("epochs", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
            ("people_per_batch", lambda v: is_int(v) and v >= 2, "an integer >= 2 (triplets need two people)"),
            ("faces_per_person", lambda v: is_int(v) and v >= 2, "an integer >= 2 (triplets need two faces each)"),
            ("margin", lambda v: is_real(v) and v >= 0, "a distance >= 0"),
            ("cannot_distance", lambda v: is_real(v) and v >= 0, "a distance >= 0"),
            ("identity_weight", lambda v: is_real(v) and v >= 0, "a number >= 0"),
            ("lr", lambda v: is_real(v) and v > 0, "a number > 0"),
            ("seed", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
            ("min_people", lambda v: is_int(v) and v >= 2, "an integer >= 2"),
        ])
        check_params(type(self).__name__, self, [("select", lambda v: isinstance(v, bool), "True or False")])

    def fit(self, X: np.ndarray, people: np.ndarray, cannot: np.ndarray | None = None) -> MetricLearner:
        """Learn from rows `X` with person ids `people` (-1: no person) and cannot-link row pairs."""
        owner = type(self).__name__
        self._check()
        X = check_rows(owner, "X", X)
        people = np.asarray(people)
        if (people.shape != (len(X),) or not np.issubdtype(people.dtype, np.integer)
                or (len(people) and people.min() < -1)):
            raise ValueError(f"{owner}: people must hold one integer id (>= 0, or -1 for none) per row of X")
        if cannot is not None:
            c = np.asarray(cannot)
            if c.size and (c.ndim != 2 or c.shape[1] != 2 or not np.issubdtype(c.dtype, np.integer)
                           or c.min() < 0 or c.max() >= len(X)):
                raise ValueError(f"{owner}: cannot must be (m, 2) pairs of rows of X")
        if self.select:
            self.head_, self.check_ = fit(X, people, self.params, cannot)
        else:
            self.head_, self.check_ = train(X, people, self.params, cannot), None
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The learned descriptors of rows `X` (float32); X unchanged when no head was kept."""
        if not hasattr(self, "head_"):
            raise not_fitted(type(self).__name__)
        if self.head_ is None:
            return X
        if isinstance(X, Descriptors):      # held elsewhere: the head applies as rows are read
            return X.map(self.head_.apply)
        a = self.head_.arrays
        width = (a["A"] if "A" in a else a["W1"]).shape[0]
        return self.head_.apply(check_rows(type(self).__name__, "X", X, width))

    def fit_transform(self, X: np.ndarray, people: np.ndarray, cannot: np.ndarray | None = None) -> np.ndarray:
        return self.fit(X, people, cannot).transform(X)


def _keep_pairs(cannot: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    """Cannot-link pairs among the kept rows, renumbered to them."""
    if cannot is None or len(cannot) == 0:
        return cannot
    new = np.cumsum(keep) - 1
    c = np.asarray(cannot, np.int64)
    ok = keep[c[:, 0]] & keep[c[:, 1]]
    return new[c[ok]]


def save(store, head: Head, fp: str) -> None:
    buf = io.BytesIO()
    np.savez(buf, **head.arrays)
    store.write_bytes(METRIC_NPZ, buf.getvalue())
    meta = {"format": FORMAT, "kind": "linear" if "A" in head.arrays else "one hidden layer",
            "fingerprint": fp, "params": asdict(head.params), **head.info}
    store.write_bytes(METRIC_JSON, json.dumps(meta, indent=2).encode())


def drop(store) -> None:
    """Forget a saved head (its labels are gone or it no longer helps)."""
    for rel in (METRIC_JSON, METRIC_NPZ):
        if store.exists(rel):
            store.delete(rel)


def saved_fingerprint(store) -> str | None:
    if not store.exists(METRIC_JSON):
        return None
    return json.loads(store.read_bytes(METRIC_JSON)).get("fingerprint")


def load(store) -> Head | None:
    """The saved head, or None when OUT has none. Nothing is unpickled."""
    if not store.exists(METRIC_JSON):
        return None
    try:
        meta = json.loads(store.read_bytes(METRIC_JSON))
        if meta.get("kind") == "none":      # tried on these labels; did not help
            return None
        with np.load(io.BytesIO(store.read_bytes(METRIC_NPZ)), allow_pickle=False) as z:
            arrays = {k: z[k].astype(np.float32) for k in z.files}
    except (OSError, KeyError, ValueError) as e:
        raise ReduceError(f"cannot load the metric head under {store.root}/labels/: {e}") from None
    if meta.get("format") != FORMAT or not ({"A", "c"} <= set(arrays) or {"W1", "b1", "W2", "b2"} <= set(arrays)):
        raise ReduceError(f"{store.root}/{METRIC_NPZ}: not a metric head this version can read")
    info = {k: v for k, v in meta.items() if k not in ("format", "kind", "params", "fingerprint")}
    return Head(arrays, MetricParams(**meta["params"]), info)


def head_for(store, how: str) -> Head | None:
    """The head `cluster`, `label` and `search` use: the saved one with how="learned", else none."""
    if how not in METRICS:
        raise ReduceError(f"--metric must be one of {', '.join(METRICS)}, got {how!r}")
    return load(store) if how == "learned" else None
