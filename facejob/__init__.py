"""facejob: turn photo archives into a searchable, clustered, labelled index of faces.

    import facejob
    summary = facejob.index(["photos/"], "out/")       # detect → align → embed → Parquet, on Ray
    facejob.verify("a.jpg", "b.jpg")                    # same person?

Nothing heavy is imported or loaded until you call a function.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

# Arrow's allocator (mimalloc) keeps pages it freed resident for a while, to reuse them. The
# reducer frees large tables step after step, so on a Ray driver at 200k faces that was a third
# of its memory above what it started with (bench/reduce_scale.py). Read once, when pyarrow is
# loaded: set here, before anything of facejob loads it; Ray workers get it with worker_env().
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

from facejob.config import ConfigError, IndexConfig, ModelConfig, RunConfig

__version__ = "0.1.0"
__all__ = ["IndexConfig", "ModelConfig", "RunConfig", "ConfigError", "index", "verify"]

if TYPE_CHECKING:
    from facejob.indexing.driver import RunSummary
    from facejob.indexing.verify import Verdict


def index(sources: list[str], out: str, config: IndexConfig | None = None, progress: bool = True) -> "RunSummary":
    """Index every photo under `sources` into `out` (see facejob.indexing.driver.index)."""
    from facejob.indexing.driver import index as _index

    return _index(sources, out, config, progress)


def verify(photo_a: str, photo_b: str, threshold: float = 0.6) -> "Verdict":
    """Distance between the largest faces of two photos and whether they match (see facejob.verify)."""
    from facejob.indexing.verify import verify as _verify

    return _verify(photo_a, photo_b, threshold)
