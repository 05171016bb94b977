"""The review site: `facejob report OUT` → OUT/report/index.html (see facejob/report/build.py)."""
from .build import ReportSummary, build

__all__ = ["ReportSummary", "build"]
