"""Errors the reducer raises. The CLI prints their message on one line and exits non-zero."""
from __future__ import annotations


class ReduceError(RuntimeError):
    """The reducer cannot do what was asked; the message says why and what to do."""


class NotIndexedError(ReduceError):
    """OUT has no faces yet (run `facejob index` first) or lacks a file a step needs."""


class LabelsError(ReduceError):
    """The curator's labels cannot be used as given (unknown face, empty name, duplicate, ...)."""
