"""The reducer's scikit-learn-style estimators: svm.IdentityClassifier, metric.MetricLearner and
linkage.GraphClusterer. Each is a thin layer over the functions the steps used before, so each
must give exactly their results; bad settings and bad arrays are refused with a clear message,
and asking a fitted attribute of an unfitted estimator says so."""
from __future__ import annotations

import numpy as np
import pytest

from facejob.config import ConfigError, LabelParams
from facejob.io.storage import LocalStore
from facejob.reduce import linkage, metric, svm
from facejob.reduce.errors import NotFittedError


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _people(n_people: int, per: int, seed: int = 0, spread: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """Faces of `n_people` people (descriptor-like: norm ~0.5, people ~0.7 apart), person ids."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_people, 128))) * 0.5
    x = np.concatenate([c + rng.normal(0, spread, (per, 128)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(n_people), per)


def _same_global_rng(f, g):
    """f() and g() from one global NumPy RNG state (LinearSVC without a random_state draws from it)."""
    state = np.random.get_state()
    a = f()
    np.random.set_state(state)
    return a, g()


@pytest.fixture(scope="module")
def faces():
    x, who = _people(4, 12)
    rng = np.random.default_rng(1)
    strangers = (_unit(rng.normal(size=(300, 128))) * 0.5 + rng.normal(0, 0.03, (300, 128))).astype(np.float32)
    names = np.array(["ann", "bob", "cy", "di"], object)[who]
    train_rows = np.arange(len(x)) % 12 < 5          # five labelled faces per person, seven to predict
    return x, names, train_rows, strangers


# ---- IdentityClassifier --------------------------------------------------------------------------

def test_classifier_names_people_and_strangers_stay_unknown(faces):
    x, names, tr, strangers = faces
    clf = svm.IdentityClassifier(seed=3).fit(x[tr], list(names[tr]), strangers[:200])
    assert clf.classes_.tolist() == ["ann", "bob", "cy", "di"] and clf.pool_ is None
    label, prob = clf.predict(x[~tr])
    assert label.tolist() == names[~tr].tolist() and (prob >= 0.5).all()
    assert (clf.predict(strangers[200:])[0] == svm.UNKNOWN).mean() > 0.9
    p = clf.predict_proba(x[~tr])
    assert p.shape == (int((~tr).sum()), 4) and ((p >= 0) & (p <= 1)).all()
    # A named face's probability is its person's calibrated probability.
    np.testing.assert_allclose(p.max(1), prob, rtol=1e-6)
    assert (clf.classes_[p.argmax(1)] == label).all()
    assert clf.decision_function(x[:3]).shape == (3, 4)
    # "Not this person": the best other name or unknown, never the forbidden one.
    forbid = {0: {names[~tr][0]}}
    assert clf.predict(x[~tr], forbid)[0][0] != names[~tr][0]


def test_classifier_gives_exactly_what_train_gives(faces):
    x, names, tr, strangers = faces
    params = LabelParams(threshold=0.6, C=0.5, holdout=0.3, seed=7)
    clf = svm.IdentityClassifier.from_params(params)
    model, _ = _same_global_rng(lambda: svm.train(x[tr], list(names[tr]), strangers, params),
                                lambda: clf.fit(x[tr], list(names[tr]), strangers))
    m = clf.model_
    assert m.params == params == clf.params
    assert np.array_equal(m.coef, model.coef) and np.array_equal(m.intercept, model.intercept)
    assert m.platt == model.platt and np.array_equal(m.classes, model.classes)
    forbid = {1: {"ann"}, 5: {"bob", "cy"}}
    for got, want in zip(clf.predict(x, forbid), model.predict(x, forbid)):
        assert np.array_equal(got, want)


def test_the_same_labels_give_the_same_models_whatever_numpys_global_state(faces):
    x, names, tr, strangers = faces
    runs = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)  # the solver's shuffling must not come from here
        runs.append(svm.IdentityClassifier(seed=5).fit(x[tr], list(names[tr]), strangers).model_)
    assert np.array_equal(runs[0].coef, runs[1].coef) and runs[0].platt == runs[1].platt


def test_classifier_fit_archive_gives_exactly_what_fit_archive_gives(faces):
    x, names, tr, strangers = faces
    archive = np.concatenate([x, strangers])
    rows = np.flatnonzero(tr)
    clusters = np.concatenate([np.repeat(np.arange(4), 12), 100 + np.arange(len(strangers))])
    negatives = np.array([len(x) + 5])
    params = LabelParams(pool_size=150, extra_per_person=3)
    (model, fit), clf = _same_global_rng(
        lambda: svm.fit_archive(archive, rows, x[rows], list(names[rows]), clusters, params, negatives=negatives),
        lambda: svm.IdentityClassifier.from_params(params).fit_archive(archive, rows, x[rows], list(names[rows]),
                                                                       clusters, negatives=negatives))
    assert np.array_equal(clf.pool_, fit["pool"]) and np.array_equal(clf.extra_, fit["extra"])
    assert len(clf.extra_) == 12 and len(clf.pool_) > 100   # three cluster-mates per person
    assert np.array_equal(clf.model_.coef, model.coef) and clf.model_.info["extra_positives"] == 12
    assert np.array_equal(clf.predict(archive)[1], model.predict(archive)[1])


def test_classifier_round_trips_through_saved_models(faces, tmp_path):
    x, names, tr, strangers = faces
    clf = svm.IdentityClassifier(threshold=0.7).fit(x[tr], list(names[tr]), strangers)
    store = LocalStore(tmp_path)
    svm.save_model(store, clf.model_)
    again = svm.IdentityClassifier.from_model(svm.load_model(store))
    assert again.threshold == 0.7 and again.classes_.tolist() == clf.classes_.tolist()
    for got, want in zip(again.predict(x), clf.predict(x)):
        assert np.array_equal(got, want)


@pytest.mark.parametrize("setting, value, says", [
    ("threshold", 1.5, "threshold must be a probability in [0, 1], got 1.5"),
    ("threshold", float("nan"), "threshold must be"),
    ("C", 0, "C must be a number > 0, got 0"),
    ("pool_size", 2.5, "pool_size must be an integer >= 0, got 2.5"),
    ("pool_exclude", -0.1, "pool_exclude must be a distance >= 0"),
    ("extra_per_person", True, "extra_per_person must be an integer >= 0, got True"),
    ("holdout", 1.0, "holdout must be a share in [0, 1), got 1.0"),
    ("seed", -1, "seed must be an integer >= 0, got -1"),
])
def test_classifier_refuses_bad_settings(setting, value, says):
    with pytest.raises(ConfigError, match=r"^IdentityClassifier: " + _re(says)):
        svm.IdentityClassifier(**{setting: value})
    # Changed after it was made: fit checks again.
    clf = svm.IdentityClassifier()
    setattr(clf, setting, value)
    with pytest.raises(ValueError, match=_re(says)):
        clf.fit(np.zeros((2, 4), np.float32), ["a", "b"], np.ones((3, 4), np.float32))


def test_classifier_refuses_bad_arrays_and_use_before_fit(faces):
    x, names, tr, strangers = faces
    clf = svm.IdentityClassifier()
    with pytest.raises(NotFittedError, match="IdentityClassifier is not fitted yet; call fit first"):
        clf.predict(x)
    with pytest.raises(AttributeError):      # as scikit-learn's NotFittedError is
        clf.predict_proba(x)
    with pytest.raises(ValueError, match="3 names for 20 rows of X"):
        clf.fit(x[tr], ["a", "b", "c"], strangers)
    with pytest.raises(ValueError, match=r"X_background must be a \(n, 128\) array"):
        clf.fit(x[tr], list(names[tr]), strangers[:, :64])
    with pytest.raises(ValueError, match="X holds NaN"):
        clf.fit(np.full((2, 128), np.nan, np.float32), ["a", "b"], strangers)
    with pytest.raises(ValueError, match="labelled_rows must be rows of X or -1"):
        clf.fit_archive(x, np.array([0, len(x)]), x[:2], ["a", "b"])
    clf.fit(x[tr], list(names[tr]), strangers)
    with pytest.raises(ValueError, match=r"X must be a \(n, 128\) array"):
        clf.predict(x[:, :10])


# ---- MetricLearner ---------------------------------------------------------------------------------

QUICK = metric.MetricParams(epochs=4, people_per_batch=4)


def test_metric_learner_gives_exactly_what_train_and_fit_give():
    x, people = _people(8, 6, seed=2, spread=0.08)
    cannot = np.array([[0, 6], [1, 13]])
    plain = metric.MetricLearner(QUICK, select=False).fit(x, people, cannot)
    head = metric.train(x, people, QUICK, cannot)
    assert plain.check_ is None and all(np.array_equal(plain.head_.arrays[k], head.arrays[k]) for k in head.arrays)
    assert np.array_equal(plain.transform(x), head.apply(x))
    chosen = metric.MetricLearner(QUICK).fit(x, people, cannot)
    want, check = metric.fit(x, people, QUICK, cannot)
    assert chosen.check_ == check
    assert (chosen.head_ is None) == (want is None)
    if want is not None:
        assert np.array_equal(chosen.transform(x), want.apply(x))
    # A hidden-layer head too, through fit_transform.
    deep = metric.MetricParams(hidden=16, epochs=2, people_per_batch=4)
    y = metric.MetricLearner(deep, select=False).fit_transform(x, people)
    assert y.dtype == np.float32 and np.array_equal(y, metric.train(x, people, deep).apply(x))


def test_metric_learner_without_a_head_leaves_descriptors_alone():
    x, people = _people(3, 4)
    learner = metric.MetricLearner().fit(x, people)      # 3 people < min_people: no head
    assert learner.head_ is None and not learner.check_["kept"]
    assert learner.transform(x) is x
    assert metric.MetricLearner.from_head(None).transform(x) is x
    head = metric.train(x, people, QUICK)
    assert np.array_equal(metric.MetricLearner.from_head(head).transform(x), head.apply(x))


def test_metric_learner_refuses_bad_settings_arrays_and_use_before_fit():
    import dataclasses

    x, people = _people(3, 4)
    for change, says in (({"epochs": -1}, "epochs must be an integer >= 0, got -1"),
                         ({"faces_per_person": 1}, "faces_per_person must be an integer >= 2"),
                         ({"lr": 0.0}, "lr must be a number > 0, got 0.0"),
                         ({"margin": float("inf")}, "margin must be a distance >= 0, got inf")):
        with pytest.raises(ConfigError, match="^MetricLearner: " + _re(says)):
            metric.MetricLearner(dataclasses.replace(metric.MetricParams(), **change))
    with pytest.raises(ConfigError, match="select must be True or False, got 'yes'"):
        metric.MetricLearner(select="yes")
    with pytest.raises(ValueError, match="params must be MetricParams, got dict"):
        metric.MetricLearner({"epochs": 3})
    with pytest.raises(NotFittedError, match="MetricLearner is not fitted yet"):
        metric.MetricLearner().transform(x)
    learner = metric.MetricLearner(QUICK)
    with pytest.raises(ValueError, match="people must hold one integer id"):
        learner.fit(x, people[:-1])
    with pytest.raises(ValueError, match=r"cannot must be \(m, 2\) pairs of rows of X"):
        learner.fit(x, people, np.array([[0, len(x)]]))
    head = metric.MetricLearner(QUICK, select=False).fit(x, people)
    with pytest.raises(ValueError, match=r"X must be a \(n, 128\) array"):
        head.transform(x[:, :5])


# ---- GraphClusterer --------------------------------------------------------------------------------

def _all_edges(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def test_graph_clusterer_gives_exactly_what_agglomerate_and_attach_give():
    x, people = _people(5, 8, seed=4, spread=0.02)
    eu, ev = _all_edges(len(x))
    must, cannot = np.array([[0, 8]]), np.array([[16, 17]])
    gc = linkage.GraphClusterer(threshold=0.5, pair_margin=0.02, link_weight=0.2)
    labels = gc.fit_predict(x, (eu, ev), must_link=must, cannot_link=cannot)
    want, rounds = linkage.agglomerate(x, eu, ev, 0.5, must_link=must, cannot_link=cannot, pair_margin=0.02,
                                       link_weight=0.2)
    assert np.array_equal(labels, want) and gc.rounds_ == rounds and gc.labels_ is labels
    assert labels[0] == labels[8] and labels[16] != labels[17]
    # The people no pair touches are one cluster each.
    assert labels[people == 3].tolist() == [24] * 8 and labels[people == 4].tolist() == [32] * 8
    q, _ = _people(5, 2, seed=4, spread=0.02)            # two more faces of each person
    cand = np.tile(np.arange(0, 40, 4), (len(q), 1))
    blocked = np.zeros(cand.shape, bool)
    blocked[0] = True
    got = gc.predict(q, cand, blocked)
    want = linkage.attach(x, labels, q, cand, 0.5, blocked, 0.02)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert got[0][0] == -1 and got[0][6:].tolist() == [24, 24, 32, 32]


def test_graph_clusterer_refuses_bad_settings_arrays_and_use_before_fit():
    x, _ = _people(2, 3)
    eu, ev = _all_edges(len(x))
    for kw, says in (({"threshold": 0}, "threshold must be a distance > 0, got 0"),
                     ({"pair_margin": -1}, "pair_margin must be a distance >= 0, got -1"),
                     ({"max_rounds": 0}, "max_rounds must be an integer >= 1, got 0"),
                     ({"link_weight": -0.1}, "link_weight must be a distance >= 0, got -0.1")):
        with pytest.raises(ConfigError, match="^GraphClusterer: " + _re(says)):
            linkage.GraphClusterer(**kw)
    gc = linkage.GraphClusterer()
    with pytest.raises(NotFittedError, match="GraphClusterer is not fitted yet"):
        gc.predict(x, np.zeros((len(x), 1), np.int64))
    with pytest.raises(ValueError, match="edges must be two arrays"):
        gc.fit(x, (eu, ev[:-1]))
    with pytest.raises(ValueError, match="edges must be two arrays"):
        gc.fit(x, (eu, ev + 1))
    with pytest.raises(ValueError, match=r"cannot_link must be \(m, 2\) pairs of rows of X"):
        gc.fit(x, (eu, ev), cannot_link=np.array([[0, 1, 2]]))
    gc.fit(x, (eu, ev))
    with pytest.raises(ValueError, match=r"candidates must be \(len\(Q\), k\) rows of the fitted X or -1"):
        gc.predict(x, np.full((len(x), 2), len(x)))
    with pytest.raises(ValueError, match="blocked must have the shape of candidates"):
        gc.predict(x, np.zeros((len(x), 2), np.int64), np.zeros((1, 2), bool))


def _re(text: str) -> str:
    import re

    return re.escape(text)
