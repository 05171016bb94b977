"""Per-identity SVMs: learn the named people from a few labelled faces, name every other face
or call it `unknown`.

One linear SVM per person (one-vs-rest, scikit-learn) is trained on that person's faces
against everyone else's and a background pool: unlabelled faces of the archive itself, which
are mostly strangers. The archive also holds the named people's other photos. Treating those
as negatives would teach each SVM to reject its own person, so the pool leaves out every face
in the same identity cluster as a labelled face, and every face near one (pool_exclude).
Better still, those cluster-mates are the person's other photos: a cluster that holds labelled
faces of exactly one person lends its other members to that person as extra positives (up to
extra_per_person of them), so five labelled photos teach the SVM the person's whole range.

Scores become probabilities with one sigmoid (Platt scaling) fitted on held-out positives and
held-out background faces, so "probability" means the same for every person. Pool faces that
models trained without them name are taken out of the pool before the models are trained, so
that it also means the same at every archive size (see fit_archive).

Models are saved as plain arrays (npz, loaded with allow_pickle=False) and JSON: loading
them never runs code.
"""
from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from facejob.contract.layout import LABEL_MODEL_JSON as MODEL_JSON, LABEL_MODEL_NPZ as MODEL_NPZ

from .errors import LabelsError, check_params, check_rows, is_int, is_real, not_fitted
from facejob.config import LabelParams

UNKNOWN = "unknown"
FORMAT = 1


@dataclass
class Model:
    classes: np.ndarray        # (c,) str
    coef: np.ndarray           # (c, 128) float32
    intercept: np.ndarray      # (c,) float32
    platt: tuple[float, float]  # probability = 1 / (1 + exp(-(a * score + b)))
    params: LabelParams
    info: dict

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef.T + self.intercept

    def predict(self, x: np.ndarray, forbidden: dict[int, set[str]] | None = None,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(label per row, probability that this label is right).

        A row gets the best name it may have (`forbidden`: row -> names the curator said it is
        not) when that name's calibrated probability p reaches the threshold; its probability
        is then p. Otherwise it is `unknown` with probability 1 - p: how sure we are that it is
        none of the named people (1.0 when no name is allowed or no one is named).

        Rows go through in batches of PREDICT_ROWS (`transform`, e.g. the metric head, applied
        per batch), so memory is one batch's rows x people scores, never the whole matrix.
        """
        label = np.full(len(x), UNKNOWN, object)
        prob = np.ones(len(x), np.float32)
        if len(self.classes) == 0 or len(x) == 0:
            return label, prob
        by_batch: dict[int, dict[int, set[str]]] = {}
        for r, names in (forbidden or {}).items():
            by_batch.setdefault(r // PREDICT_ROWS, {})[r % PREDICT_ROWS] = names
        for lo in range(0, len(x), PREDICT_ROWS):
            xb = np.asarray(x[lo:lo + PREDICT_ROWS], np.float32)
            label[lo:lo + len(xb)], prob[lo:lo + len(xb)] = self._predict_batch(
                transform(xb) if transform is not None else xb, by_batch.get(lo // PREDICT_ROWS, {}))
        return label, prob

    def _predict_batch(self, x: np.ndarray, forbidden: dict[int, set[str]]) -> tuple[np.ndarray, np.ndarray]:
        s = self.scores(x)
        for r, names in forbidden.items():
            s[r, np.isin(self.classes, list(names))] = -np.inf
        best = s.argmax(1)
        top = s[np.arange(len(s)), best]
        p = np.where(np.isfinite(top), _sigmoid(self.platt[0] * np.where(np.isfinite(top), top, 0) + self.platt[1]), 0.0)
        named = p >= self.params.threshold
        label = np.where(named, self.classes.astype(object)[best], UNKNOWN)
        return label, np.where(named, p, 1.0 - p).astype(np.float32)


PREDICT_ROWS = 8192       # rows scored at a time: 8,192 x 1,000 people = 32 MB of scores


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def background_pool(x: np.ndarray, labelled_rows: np.ndarray, labelled_emb: np.ndarray,
                    clusters: np.ndarray | None, params: LabelParams) -> np.ndarray:
    """Rows of `x` usable as strangers: unlabelled, not near a labelled face, not in a labelled
    face's cluster; at most pool_size of them, sampled with a fixed seed."""
    ok = np.ones(len(x), bool)
    ok[labelled_rows[labelled_rows >= 0]] = False
    if clusters is not None and len(labelled_rows):
        named = np.unique(clusters[labelled_rows[labelled_rows >= 0]])
        ok &= ~np.isin(clusters, named)
    cand = np.flatnonzero(ok)
    rng = np.random.default_rng(params.seed)
    # Sample a bit more than needed, then drop faces close to a labelled one.
    cand = rng.permutation(cand)[: int(params.pool_size * 1.5) + 100]
    if len(cand) and len(labelled_emb):
        near = np.zeros(len(cand), bool)
        for lo in range(0, len(cand), 8192):
            d = _sqdist(x[cand[lo:lo + 8192]], labelled_emb)
            near[lo:lo + 8192] = d.min(1) < params.pool_exclude ** 2
        cand = cand[~near]
    return np.sort(cand[: params.pool_size])


def cluster_positives(clusters: np.ndarray | None, labelled_rows: np.ndarray, names: list[str],
                      params: LabelParams) -> tuple[np.ndarray, list[str]]:
    """Unlabelled rows that share a cluster with labelled faces of exactly one person, and that
    person's name; at most extra_per_person per person (sampled with a fixed seed)."""
    if clusters is None or len(labelled_rows) == 0:
        return np.empty(0, np.int64), []
    known = labelled_rows >= 0
    lab_c, lab_n = clusters[labelled_rows[known]], np.asarray(names, object)[known]
    owners: dict[int, set] = {}
    for c, n in zip(lab_c.tolist(), lab_n.tolist()):
        owners.setdefault(c, set()).add(n)
    owner_of = {c: next(iter(ns)) for c, ns in owners.items() if len(ns) == 1}
    if not owner_of:
        return np.empty(0, np.int64), []
    ids = np.fromiter(owner_of, np.int64)
    member = np.isin(clusters, ids)
    member[labelled_rows[known]] = False
    rows = np.flatnonzero(member)
    if len(rows) == 0:     # every member of those clusters is labelled already
        return np.empty(0, np.int64), []
    who = np.array([owner_of[int(c)] for c in clusters[rows]], object)
    rng = np.random.default_rng(params.seed)
    keep = []
    for n in sorted(set(who.tolist())):
        r = rows[who == n]
        keep.append(np.sort(rng.permutation(r)[: params.extra_per_person]))
    rows = np.concatenate(keep)
    return rows, [owner_of[int(c)] for c in clusters[rows]]


def fit_archive(x: np.ndarray, labelled_rows: np.ndarray, labelled_emb: np.ndarray, names: list[str],
                clusters: np.ndarray | None, params: LabelParams = LabelParams(),
                negatives: np.ndarray | None = None, run: FitRun | None = None) -> tuple[Model, dict]:
    """Train on an archive: labelled faces (rows of x, or -1 with their embedding given), their
    cluster-mates as extra positives, and a background pool of the rest. `negatives` (rows the
    curator took out of a person's group) are never extra positives and always in the pool.
    `run` trains the per-person SVMs elsewhere (FitRun)."""
    neg = np.asarray(negatives if negatives is not None else [], np.int64)
    extra, extra_names = cluster_positives(clusters, labelled_rows, names, params)
    if len(neg) and len(extra):
        ok = ~np.isin(extra, neg)
        extra, extra_names = extra[ok], [n for n, k in zip(extra_names, ok) if k]
    pool = background_pool(x, np.concatenate([labelled_rows, extra]), labelled_emb, clusters, params)
    pool = np.union1d(pool, neg)
    # A cluster can hold look-alikes of a labelled person (on LFW one cluster held Koizumi and
    # two dozen other men): as extra positives they teach that person's SVM to take strangers,
    # and being in a labelled cluster they were never negatives either. So the cluster-mates
    # are vetted by models trained on the curator's labels alone: a mate they do not name as
    # its cluster's person is no positive, and is a stranger in the pool instead.
    if len(extra) and len(set(names)) > 1:
        first = train(labelled_emb, list(names), x[pool], params, run=run)
        s = first.scores(x[extra])
        own = np.searchsorted(first.classes, extra_names)
        p = _sigmoid(first.platt[0] * s[np.arange(len(s)), own] + first.platt[1])
        ok = (s.argmax(1) == own) & (p >= params.threshold)
        # A cluster the curator-only models mostly do not name as its person is a mix of that
        # person and look-alikes (on LFW Yoriko Kawaguchi's: 13 of 29 named, 4 of those 13 were
        # other women, and her SVM, taught by them, named distractors like them). The few they
        # do name are no sure positives there, so such a cluster lends none: all its members
        # are strangers in the pool, where the out-of-fold judgement below takes out those
        # that would be named.
        _, inv = np.unique(clusters[extra], return_inverse=True)
        ok &= (np.bincount(inv, ok) / np.bincount(inv))[inv] >= 0.5
        ok &= _within_label_spread(x[extra], extra_names, labelled_emb, names)
        pool = np.union1d(pool, extra[~ok])
        extra, extra_names = extra[ok], [n for n, k in zip(extra_names, ok) if k]
    xp = np.concatenate([labelled_emb, x[extra]]) if len(extra) else labelled_emb
    # The pool still holds some of the named people's own photos (outside their clusters and
    # not near a labelled face). As "strangers" they teach their own person's SVM to reject
    # them and people like them, and in a small archive, where they are a large share of the
    # pool, they make the calibration reject more: `unknown` would mean something stricter in
    # a small archive than in a large one. So the pool faces that models trained without them
    # name leave the pool (the curator's negatives stay), before the models are trained. A
    # model that had them as negatives would not name them: it learnt not to.
    named = _named_out_of_fold(xp, list(names) + extra_names, x[pool], params, curated=len(labelled_emb), run=run)
    dropped = named & ~np.isin(pool, neg)
    pool = pool[~dropped]
    model = train(xp, list(names) + extra_names, x[pool], params, curated=len(labelled_emb), run=run)
    model.info.update({"extra_positives": len(extra), "curator_negatives": len(neg),
                       "pool_named_dropped": int(dropped.sum())})
    return model, {"pool": pool, "extra": extra}


def _within_label_spread(xe: np.ndarray, owners: list[str], labelled_emb: np.ndarray,
                         names: list[str]) -> np.ndarray:
    """Per cluster-mate (descriptor `xe`, its cluster's person `owners`): is it nearer to one of
    that person's labelled faces than the two farthest apart of them are to each other? A
    look-alike the vetting models name anyway lies at the edge of the person's range, where the
    curator's own photos do not reach. A person with one labelled face shows no spread: their
    mates pass."""
    keep = np.ones(len(xe), bool)
    owners_a, names_a = np.asarray(owners, object), np.asarray(names, object)
    for n in set(owners):
        z = np.asarray(labelled_emb[names_a == n], np.float32)
        if len(z) < 2:
            continue
        m = owners_a == n
        keep[m] = _sqdist(xe[m], z).min(1) < _sqdist(z, z).max()
    return keep


def _named_out_of_fold(xl: np.ndarray, names: list[str], xb: np.ndarray, params: LabelParams,
                       curated: int, run: FitRun | None = None) -> np.ndarray:
    """Per background row of `xb`: would models that never saw it name it? Two folds: the
    background is halved, and so are each person's curated faces (the first `curated` rows of
    `xl`; a person with one keeps it in training); SVMs trained on one half (with every other
    positive) score the other. A sigmoid fitted on these held-out scores, as in `_calibrate`,
    says which background faces reach the threshold."""
    classes = np.array(sorted(set(names)))
    if len(classes) < 2 or len(xb) < 2:
        return np.zeros(len(xb), bool)
    yl = np.searchsorted(classes, np.array(names))
    rng = np.random.default_rng(params.seed)
    fold_l = np.full(len(yl), -1)               # -1: trains in both folds
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(yl[:curated] == c))
        if len(idx) >= 2:
            fold_l[idx] = np.arange(len(idx)) % 2
    fold_b = rng.permutation(len(xb)) % 2
    top_l, good_l = np.full(len(yl), np.nan), np.zeros(len(yl), bool)
    top_b = np.empty(len(xb))
    for k in (0, 1):
        coef, icpt = _fit(xl[fold_l != k], yl[fold_l != k], xb[fold_b != k], len(classes), params.C, params.seed,
                          run)
        s = xl[fold_l == k] @ coef.T + icpt
        top_l[fold_l == k], good_l[fold_l == k] = s.max(1), s.argmax(1) == yl[fold_l == k]
        top_b[fold_b == k] = (xb[fold_b == k] @ coef.T + icpt).max(1)
    held = fold_l >= 0
    score = np.concatenate([top_l[held], top_b])
    right = np.concatenate([good_l[held], np.zeros(len(xb), bool)])
    if right.all() or not right.any():
        return np.zeros(len(xb), bool)
    lr = LogisticRegression(C=1e4, class_weight="balanced").fit(score[:, None], right)
    return _sigmoid(lr.coef_[0, 0] * top_b + lr.intercept_[0]) >= params.threshold


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0)


FitRun = Callable[[np.ndarray, np.ndarray, int, float, int], tuple[np.ndarray, np.ndarray]]
"""`fit_classes` over classes 0..n-1, run elsewhere: (x, y, n, C, seed) -> (coef, intercept).
A class's SVM depends on x, y, C and seed only, so any split of the classes gives the same
models (facejob.reduce.ray_reduce trains chunks of people in parallel Ray tasks)."""


def fit_classes(x: np.ndarray, y: np.ndarray, first: int, end: int, C: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest linear SVMs of classes first..end-1 on rows `x` (float64) of class `y` (-1:
    background); each class's positives weigh as much as all its negatives. The solver's
    shuffling is seeded, so the same labels give the same models on every run."""
    coef = np.zeros((end - first, x.shape[1]), np.float32)
    icpt = np.zeros(end - first, np.float32)
    for i, c in enumerate(range(first, end)):
        pos_rows = y == c
        pos = int(pos_rows.sum())
        w = np.where(pos_rows, 0.5 / pos, 0.5 / (len(y) - pos)) * len(y)
        svm = LinearSVC(C=C, loss="hinge", dual=True, max_iter=20_000, tol=1e-4, random_state=seed)
        svm.fit(x, pos_rows, sample_weight=w)
        coef[i], icpt[i] = svm.coef_[0], svm.intercept_[0]
    return coef, icpt


def _fit(xl: np.ndarray, yl: np.ndarray, xb: np.ndarray, n_classes: int, C: float,
         seed: int, run: FitRun | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each class's SVM against all other rows (`fit_classes`), here or through `run`."""
    x = np.concatenate([xl, xb]).astype(np.float64)
    y = np.concatenate([yl, np.full(len(xb), -1, yl.dtype)])
    if run is None:
        return fit_classes(x, y, 0, n_classes, C, seed)
    return run(x, y, n_classes, C, seed)


def train(xl: np.ndarray, names: list[str], xb: np.ndarray, params: LabelParams = LabelParams(),
          curated: int | None = None, run: FitRun | None = None) -> Model:
    """SVMs for the labelled faces `xl` (names per row) against background faces `xb`. The
    first `curated` rows (default all) are the curator's own; the others (cluster-mates) only
    train, they are never held out to fit the sigmoid. `run` trains them elsewhere (FitRun)."""
    classes = np.array(sorted(set(names)))
    if len(classes) == 0:
        raise LabelsError("no labelled faces to learn from")
    yl = np.searchsorted(classes, np.array(names))
    t0 = time.perf_counter()
    platt = _calibrate(xl, yl, xb, len(classes), params, curated, run) if len(classes) > 1 else (1.0, 0.0)
    coef, icpt = _fit(xl, yl, xb, len(classes), params.C, params.seed, run)
    info = {"classes": len(classes), "positives": len(xl), "background": len(xb),
            "train_s": round(time.perf_counter() - t0, 2), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return Model(classes, coef, icpt, platt, params, info)


def _calibrate(xl: np.ndarray, yl: np.ndarray, xb: np.ndarray, n_classes: int, params: LabelParams,
               curated: int | None = None, run: FitRun | None = None) -> tuple[float, float]:
    """Fit P(top score is right) on a held-out share of the positives and of the pool:
    held-out positives should get their own name, held-out background faces none. Both kinds
    weigh the same, so 0.5 is where a named face and a stranger are equally likely.

    Only the first `curated` positives (the curator's labels) are held out: cluster-mates are
    the faces most like the labelled ones (that is how they joined the cluster), so a sigmoid
    fitted on them thinks the person's unseen photos score higher than they do, and names
    too few of them."""
    rng = np.random.default_rng(params.seed)
    held_l = np.zeros(len(yl), bool)
    mine = np.arange(len(yl)) < (len(yl) if curated is None else curated)
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero((yl == c) & mine))
        held_l[idx[: int(len(idx) * params.holdout)]] = True   # people with few faces keep them all for training
    held_b = rng.random(len(xb)) < params.holdout
    if not held_l.any() or not held_b.any():
        return (1.0, 0.0)
    coef, icpt = _fit(xl[~held_l], yl[~held_l], xb[~held_b], n_classes, params.C, params.seed, run)
    score, good = [], []
    for x, truth in ((xl[held_l], yl[held_l]), (xb[held_b], np.full(int(held_b.sum()), -1))):
        s = x @ coef.T + icpt
        best = s.argmax(1)
        score.append(s[np.arange(len(s)), best])
        good.append(best == truth)
    s, g = np.concatenate(score), np.concatenate(good)
    if g.all() or not g.any():
        return (1.0, 0.0)
    lr = LogisticRegression(C=1e4, class_weight="balanced").fit(s[:, None], g)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


class IdentityClassifier:
    """The per-person SVMs as a scikit-learn-style estimator, over `train` and `fit_archive`.

    The settings are LabelParams' fields, checked when it is made (ConfigError, a ValueError).
    `fit(X, names, X_background)` trains on labelled faces against background faces;
    `fit_archive(...)` on an archive's labels, clusters and background pool (see `fit_archive`).
    Then `predict(X, forbidden)` gives (label, probability) per row and `predict_proba(X)` each
    person's calibrated probability. Fitted: `model_` (the Model that is saved), `classes_`, and
    after fit_archive `pool_` and `extra_` (the rows used as background and as extra positives).
    """

    def __init__(self, threshold: float = LabelParams.threshold, C: float = LabelParams.C,
                 pool_size: int = LabelParams.pool_size, pool_exclude: float = LabelParams.pool_exclude,
                 extra_per_person: int = LabelParams.extra_per_person, holdout: float = LabelParams.holdout,
                 seed: int = LabelParams.seed):
        self.threshold, self.C, self.pool_size, self.pool_exclude = threshold, C, pool_size, pool_exclude
        self.extra_per_person, self.holdout, self.seed = extra_per_person, holdout, seed
        self.params   # noqa: B018  (checked now: a bad setting fails where it is given)

    @classmethod
    def from_params(cls, params: LabelParams) -> IdentityClassifier:
        return cls(**asdict(params))

    @classmethod
    def from_model(cls, model: Model) -> IdentityClassifier:
        """A fitted classifier around saved models (`load_model`)."""
        clf = cls.from_params(model.params)
        clf._set(model)
        return clf

    @property
    def params(self) -> LabelParams:
        """The settings as LabelParams, checked."""
        check_params(type(self).__name__, self, [
            ("threshold", lambda v: is_real(v) and 0 <= v <= 1, "a probability in [0, 1]"),
            ("C", lambda v: is_real(v) and v > 0, "a number > 0"),
            ("pool_size", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
            ("pool_exclude", lambda v: is_real(v) and v >= 0, "a distance >= 0"),
            ("extra_per_person", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
            ("holdout", lambda v: is_real(v) and 0 <= v < 1, "a share in [0, 1)"),
            ("seed", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
        ])
        return LabelParams(self.threshold, self.C, self.pool_size, self.pool_exclude, self.extra_per_person,
                           self.holdout, self.seed)

    def fit(self, X: np.ndarray, names: list[str], X_background: np.ndarray,
            run: FitRun | None = None) -> IdentityClassifier:
        """Train on labelled faces `X` (a name per row) against `X_background` (`train`; `run`:
        the per-person SVMs trained elsewhere, FitRun)."""
        owner = type(self).__name__
        X = check_rows(owner, "X", X)
        X_background = check_rows(owner, "X_background", X_background, X.shape[1])
        if len(names) != len(X):
            raise ValueError(f"{owner}: {len(names)} names for {len(X)} rows of X")
        self._set(train(X, list(names), X_background, self.params, run=run))
        self.pool_ = self.extra_ = None
        return self

    def fit_archive(self, X: np.ndarray, labelled_rows: np.ndarray, labelled_X: np.ndarray, names: list[str],
                    clusters: np.ndarray | None = None, negatives: np.ndarray | None = None,
                    run: FitRun | None = None) -> IdentityClassifier:
        """Train on an archive `X`: its labelled faces (rows of X, or -1 with their descriptor in
        `labelled_X`), their cluster-mates, and a background pool of the rest (`fit_archive`;
        `run`: the per-person SVMs trained elsewhere, FitRun)."""
        owner = type(self).__name__
        X = check_rows(owner, "X", X)
        labelled_X = check_rows(owner, "labelled_X", labelled_X, X.shape[1])
        rows = np.asarray(labelled_rows)
        if rows.shape != (len(labelled_X),) or len(names) != len(rows) or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(f"{owner}: labelled_rows, labelled_X and names must give one integer row, one descriptor "
                             f"and one name per labelled face ({rows.shape}, {len(labelled_X)}, {len(names)})")
        if len(rows) and not (rows.min() >= -1 and rows.max() < len(X)):
            raise ValueError(f"{owner}: labelled_rows must be rows of X or -1")
        if clusters is not None and np.shape(clusters) != (len(X),):
            raise ValueError(f"{owner}: clusters must hold one cluster id per row of X")
        model, fit = fit_archive(X, labelled_rows, labelled_X, names, clusters, self.params, negatives=negatives,
                                 run=run)
        self._set(model)
        self.pool_, self.extra_ = fit["pool"], fit["extra"]
        return self

    def _set(self, model: Model) -> None:
        self.model_ = model
        self.classes_ = model.classes

    def _fitted(self, X: np.ndarray) -> Model:
        if not hasattr(self, "model_"):
            raise not_fitted(type(self).__name__)
        check_rows(type(self).__name__, "X", X, self.model_.coef.shape[1])
        return self.model_

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Each person's SVM score per row, (n, len(classes_))."""
        return self._fitted(X).scores(np.asarray(X, np.float32))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Each person's calibrated probability per row, (n, len(classes_)): the one sigmoid on
        that person's score. Not normalised: a face may be none of them."""
        m = self._fitted(X)
        return _sigmoid(m.platt[0] * m.scores(np.asarray(X, np.float32)) + m.platt[1])

    def predict(self, X: np.ndarray, forbidden: dict[int, set[str]] | None = None,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(label per row, probability that it is right), in batches; see Model.predict."""
        return self._fitted(X).predict(X, forbidden, transform)


def save_model(store, model: Model) -> None:
    """npz of plain arrays (no object dtype, so no pickle) plus a JSON of settings."""
    buf = io.BytesIO()
    np.savez(buf, classes=model.classes.astype(str), coef=model.coef.astype(np.float32),
             intercept=model.intercept.astype(np.float32), platt=np.array(model.platt, np.float64))
    store.write_bytes(MODEL_NPZ, buf.getvalue())
    meta = {"format": FORMAT, "kind": "one-vs-rest linear SVM + Platt sigmoid",
            "params": asdict(model.params), **model.info}
    store.write_bytes(MODEL_JSON, json.dumps(meta, indent=2).encode())


def load_model(store) -> Model:
    """Load saved models without unpickling anything (object arrays are refused)."""
    try:
        meta = json.loads(store.read_bytes(MODEL_JSON))
        with np.load(io.BytesIO(store.read_bytes(MODEL_NPZ)), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("classes", "coef", "intercept", "platt")}
    except (OSError, KeyError, ValueError) as e:
        raise LabelsError(f"cannot load the label models under {store.root}/labels/: {e}") from None
    if meta.get("format") != FORMAT:
        raise LabelsError(f"{store.root}/{MODEL_JSON}: unsupported model format {meta.get('format')!r}")
    c = arrays["coef"]
    if c.ndim != 2 or c.shape[0] != len(arrays["classes"]) or arrays["intercept"].shape != (c.shape[0],):
        raise LabelsError(f"{store.root}/{MODEL_NPZ}: arrays have inconsistent shapes")
    params = LabelParams(**meta["params"])
    info = {k: v for k, v in meta.items() if k not in ("format", "kind", "params")}
    return Model(arrays["classes"].astype(str), c.astype(np.float32), arrays["intercept"].astype(np.float32),
                 (float(arrays["platt"][0]), float(arrays["platt"][1])), params, info)
