"""The nightly reduce: a rerun reuses what did not change and still equals a reduce from scratch;
SVM predictions in batches equal the one-piece ones."""
from __future__ import annotations

import numpy as np
import pytest

from facejob.config import LabelParams
from facejob.reduce import svm


def _one_piece(m: svm.Model, x: np.ndarray, forbidden: dict[int, set[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Model.predict as it was: the whole rows x people score matrix at once."""
    s = x @ m.coef.T + m.intercept
    for r, names in forbidden.items():
        s[r, np.isin(m.classes, list(names))] = -np.inf
    best = s.argmax(1)
    top = s[np.arange(len(s)), best]
    p = np.where(np.isfinite(top), 1 / (1 + np.exp(-np.clip(m.platt[0] * np.where(np.isfinite(top), top, 0)
                                                            + m.platt[1], -50, 50))), 0.0)
    named = p >= m.params.threshold
    return np.where(named, m.classes.astype(object)[best], svm.UNKNOWN), np.where(named, p, 1 - p).astype(np.float32)


@pytest.mark.parametrize("n", [0, 5, svm.PREDICT_ROWS, 2 * svm.PREDICT_ROWS + 17])
def test_batched_predictions_equal_the_one_piece_ones(n):
    rng = np.random.default_rng(n)
    people = 40
    m = svm.Model(np.array([f"p{i}" for i in range(people)]), rng.standard_normal((people, 128)).astype(np.float32),
                  rng.standard_normal(people).astype(np.float32), (1.5, -4.0), LabelParams(threshold=0.6), {})
    x = rng.standard_normal((n, 128)).astype(np.float32) * 0.2
    # forbidden names on rows in several batches, the last row of a batch and the first of the next among them
    forbidden = {r: {f"p{r % people}", "p3"} for r in {0, svm.PREDICT_ROWS - 1, svm.PREDICT_ROWS, n - 1} if 0 <= r < n}
    label, prob = m.predict(x, forbidden)
    want_label, want_prob = _one_piece(m, x, forbidden)
    assert label.tolist() == want_label.tolist()
    np.testing.assert_allclose(prob, want_prob, rtol=1e-6, atol=1e-7)
    if n > 10:
        assert 0 < sum(v != svm.UNKNOWN for v in label.tolist()) < n     # both outcomes occur
    # With a transform (the metric head), applied batch by batch, the same as transforming first.
    shift = rng.standard_normal(128).astype(np.float32) * 0.1
    label_t, prob_t = m.predict(x, forbidden, transform=lambda b: b + shift)
    want_label, want_prob = _one_piece(m, x + shift, forbidden)
    assert label_t.tolist() == want_label.tolist()
    np.testing.assert_allclose(prob_t, want_prob, rtol=1e-6, atol=1e-7)
