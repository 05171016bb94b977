"""The reducer: after `facejob index`, turn OUT/faces/ into a search index, identity clusters,
named faces and duplicate groups. See facejob/reduce/api.py for the steps.

    from facejob import reduce as fr
    fr.reduce("out/")                          # index + cluster + (label) + dedup
    fr.search("out/", "photo.jpg", k=10)       # nearest faces of each face in photo.jpg
    fr.label("out/", "labels.csv")             # name every face from a few named ones

The steps load on first use (hnswlib, sklearn), so `facejob --help` stays fast.
"""
from .errors import LabelsError, NotIndexedError, ReduceError

__all__ = [
    "ClusterSummary", "DedupSummary", "LabelSummary", "LabelsError", "Match", "NotIndexedError",
    "QueryFace", "ReduceError", "ReduceSummary", "cluster", "dedup", "index", "label", "read_labels",
    "reduce", "reduce_with", "search", "search_face",
]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'facejob.reduce' has no attribute {name!r}")
