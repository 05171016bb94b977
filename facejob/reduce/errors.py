"""Errors the reducer raises, and the argument checks of its estimators that raise them. The CLI
prints their message on one line and exits non-zero."""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

from facejob.config import ConfigError


class ReduceError(RuntimeError):
    """The reducer cannot do what was asked; the message says why and what to do."""


class NotIndexedError(ReduceError):
    """OUT has no faces yet (run `facejob index` first) or lacks a file a step needs."""


class LabelsError(ReduceError):
    """The curator's labels cannot be used as given (unknown face, empty name, duplicate, ...)."""


class NotFittedError(ValueError, AttributeError):
    """An estimator (svm.IdentityClassifier, metric.MetricLearner, linkage.GraphClusterer) was
    asked for results before `fit` (scikit-learn's NotFittedError has the same bases)."""


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_params(owner: str, obj: Any, checks: list[tuple[str, Callable[[Any], bool], str]]) -> None:
    """Raise ConfigError for the first setting `obj.<name>` that fails its test (name, test, what
    it must be)."""
    for name, ok, what in checks:
        value = getattr(obj, name)
        if not ok(value):
            raise ConfigError(f"{owner}: {name} must be {what}, got {value!r}")


def check_rows(owner: str, name: str, x: Any, width: int | None = None) -> np.ndarray:
    """`x` as a 2-D array of finite numbers (`width` columns if given); the array itself is
    returned unconverted, so the estimators compute exactly what the functions they wrap do.
    Descriptors held elsewhere (a `saved.Chunks` read by row, e.g. embeddings.Descriptors) are
    checked by their shape alone: reading them all here is what they exist to avoid."""
    from .saved import Chunks    # here, not at the top: it imports pyarrow, which `facejob --help` must not

    if isinstance(x, Chunks):
        if len(x.shape) != 2 or (width is not None and x.shape[1] != width):
            raise ValueError(f"{owner}: {name} must have {width or 'd'} columns, got shape {x.shape}")
        return x
    a = np.asarray(x)
    if a.ndim != 2 or (width is not None and a.shape[1] != width) or not np.issubdtype(a.dtype, np.number):
        want = f"(n, {width})" if width is not None else "(n, d)"
        raise ValueError(f"{owner}: {name} must be a {want} array of numbers, got shape {a.shape} dtype {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError(f"{owner}: {name} holds NaN or infinite values")
    return a


def not_fitted(owner: str) -> NotFittedError:
    return NotFittedError(f"this {owner} is not fitted yet; call fit first")
