"""The reducer: after `facejob index`, turn OUT/faces/ into a search index, identity clusters,
named faces and duplicate groups. One module per step, each reading what it needs from OUT and
writing its result back atomically: search_index.py (index, search), clustering.py, labelling.py
(labels, corrections' names, SVMs, metric head), deduping.py; pipeline.py runs them in order.

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


_HOME = {  # public name -> the module that defines it
    **dict.fromkeys(["index", "search", "search_face", "Match", "QueryFace"], "search_index"),
    **dict.fromkeys(["cluster", "ClusterSummary"], "clustering"),
    **dict.fromkeys(["label", "read_labels", "LabelSummary"], "labelling"),
    **dict.fromkeys(["dedup", "DedupSummary"], "deduping"),
    **dict.fromkeys(["reduce", "reduce_with", "ReduceSummary"], "pipeline"),
}


def __getattr__(name: str):
    if name in _HOME:
        from importlib import import_module

        return getattr(import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'facejob.reduce' has no attribute {name!r}")
