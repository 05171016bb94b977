"""The review site: `facejob report OUT` → OUT/report/index.html (see facejob/report/builder.py).

    from facejob.report import build
    build("out/")

The builder loads on first use (numpy, Arrow, the reducer), so `facejob --help` stays fast.
"""
import importlib

__all__ = ["ReportSummary", "build"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".builder", __name__), name)
    raise AttributeError(f"module 'facejob.report' has no attribute {name!r}")
