"""The nightly facejob run: index what changed in the archive, then rebuild the reducer's outputs.

    python jobs/nightly.py --config jobs/nightly.yaml                 # local Ray
    ray job submit --working-dir . -- python jobs/nightly.py --config jobs/nightly.yaml
    python jobs/nightly.py --config jobs/nightly.yaml --check         # validate, print, exit

Every setting lives in the YAML file (see jobs/nightly.yaml); a misspelt key is an error, never
a silent default. String values may use ${VAR} or ${VAR:-default}, so one file serves every
environment. Exit status: 0 done, 1 some shards failed permanently (rerun to retry them), the
reducer failed or the output could not be written, 2 the configuration is wrong or a source
looks unmounted (nothing was retired; see index.allow_retire), 75 another run holds the
output (the job holds its writer lock from the first listing to the last reducer write).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

# `ray job submit --working-dir .` runs this file from the repository root; make `facejob`
# importable the same way when it is run from anywhere else without being installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from facejob.config import ConfigError, IndexConfig, ModelConfig, RunConfig, split_flat  # noqa: E402

log = logging.getLogger("facejob.nightly")

INDEX_KEYS = {f.name for c in (ModelConfig, RunConfig) for f in fields(c)}  # `index:` = `facejob index` flags

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class NightlyConfig:
    """The whole job: what to index, where to, how, and what to build from it afterwards."""

    sources: list[str]
    output: str
    index: IndexConfig
    endpoint_url: str | None = None
    reduce: bool = True                    # index, cluster, label (if labels are stored), dedup
    labels: str | None = None              # new curator labels to add (CSV/folder, or an s3:// CSV)
    corrections: str | None = None         # corrections.json from the report page (or s3://), added to OUT's
    cluster_threshold: float | None = None  # None: the reducer's defaults
    cluster_k: int | None = None
    rebuild_index: bool = False
    log_format: str = "text"
    model_given: frozenset[str] = frozenset()  # ModelConfig fields `index:` names; the rest: OUT's own

    def to_dict(self) -> dict[str, Any]:
        return {"sources": self.sources, "output": self.output, "endpoint_url": self.endpoint_url,
                "index": {**self.index.model.to_dict(), **self.index.run.to_dict()},
                "reduce": {"enabled": self.reduce, "labels": self.labels, "corrections": self.corrections,
                           "cluster_threshold": self.cluster_threshold,
                           "cluster_k": self.cluster_k, "rebuild_index": self.rebuild_index},
                "log_format": self.log_format}


def expand(value: Any, env: dict[str, str]) -> Any:
    """${VAR} and ${VAR:-default} in every string of a YAML document; an unset ${VAR} is an error.

    A value that is nothing but one ${...} takes the YAML type of what it expands to, so
    `workers: ${FACEJOB_WORKERS:-0}` is the integer 0 and an empty expansion is null.
    """
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if env.get(name):
                return env[name]
            if default is None:
                raise ConfigError(f"${{{name}}} is used in the config but not set in the environment")
            return default
        out = _VAR.sub(sub, value)
        return yaml.safe_load(out) if _VAR.fullmatch(value) and out.strip() else (out or None)
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    return value


def _only(d: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(map(str, unknown))} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    return d


def parse_config(doc: Any, env: dict[str, str] | None = None) -> NightlyConfig:
    """Validate a loaded YAML document into a NightlyConfig (ConfigError says what is wrong)."""
    doc = expand(doc, dict(os.environ) if env is None else env)
    top = _only(doc, "the config", {"sources", "output", "endpoint_url", "index", "reduce", "log_format"})
    sources = top.get("sources")
    if isinstance(sources, str):
        sources = [sources]
    if not sources or not all(isinstance(s, str) and s for s in sources):
        raise ConfigError("sources must be a non-empty list of folders, files or s3:// prefixes")
    output = top.get("output")
    if not isinstance(output, str) or not output:
        raise ConfigError("output must be a folder or an s3://bucket/prefix")
    try:  # the `facejob index` settings: ModelConfig and RunConfig fields, flat
        index_doc = _only(top.get("index"), "index", INDEX_KEYS)
        index = IndexConfig(*split_flat(index_doc))
    except (ConfigError, TypeError) as e:  # e.g. index: [..] instead of a mapping
        raise ConfigError(f"index: {e}") from e
    red = _only(top.get("reduce"), "reduce", {"enabled", "labels", "corrections", "cluster_threshold", "cluster_k",
                                              "rebuild_index"})
    enabled, rebuild = red.get("enabled", True), red.get("rebuild_index", False)
    if not isinstance(enabled, bool) or not isinstance(rebuild, bool):
        raise ConfigError("reduce.enabled and reduce.rebuild_index must be true or false")
    threshold, k = red.get("cluster_threshold"), red.get("cluster_k")
    if threshold is not None and not (isinstance(threshold, (int, float)) and 0 < threshold < 2):
        raise ConfigError(f"reduce.cluster_threshold must be a distance in (0, 2), got {threshold!r}")
    if k is not None and not (isinstance(k, int) and k >= 1):
        raise ConfigError(f"reduce.cluster_k must be an integer >= 1, got {k!r}")
    log_format = top.get("log_format", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be text or json, got {log_format!r}")
    return NightlyConfig(sources=list(sources), output=output, index=index,
                         endpoint_url=top.get("endpoint_url") or None, reduce=enabled,
                         labels=red.get("labels") or None, corrections=red.get("corrections") or None,
                         cluster_threshold=threshold, cluster_k=k,
                         rebuild_index=rebuild, log_format=log_format,
                         model_given=frozenset(index_doc) & {f.name for f in fields(ModelConfig)})


def load_config(path: str | Path) -> NightlyConfig:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_config(doc)


def _ray_address(cfg: IndexConfig) -> IndexConfig:
    """Inside `ray job submit` the cluster is given by RAY_ADDRESS: join it, never start another."""
    if cfg.run.address is None and os.environ.get("RAY_ADDRESS"):
        return replace(cfg, run=replace(cfg.run, address=os.environ["RAY_ADDRESS"]))
    return cfg


def _with_saved_model(cfg: NightlyConfig) -> IndexConfig:
    """Model settings the config does not name are the output's own (as for `facejob index`), so
    an output indexed before a default changed keeps its detector."""
    from facejob.indexing.runner import saved_model
    from facejob.io.storage import open_store

    saved = saved_model(open_store(cfg.output))
    if saved is None:
        return cfg.index
    given = {k: getattr(cfg.index.model, k) for k in cfg.model_given}
    return replace(cfg.index, model=replace(saved, **given))


def run(cfg: NightlyConfig) -> tuple[int, dict[str, Any]]:
    """Index, then reduce, holding the output's writer lock throughout. Returns (exit status,
    summary for the operator)."""
    from facejob.io import lock, s3

    if cfg.endpoint_url:
        s3.configure(endpoint_url=cfg.endpoint_url)  # before Ray starts, so workers inherit it
    with lock.hold(cfg.output, "nightly"):
        return _run(cfg)


def _run(cfg: NightlyConfig) -> tuple[int, dict[str, Any]]:
    import facejob

    t0 = time.perf_counter()
    summary = facejob.index(cfg.sources, cfg.output, _ray_address(_with_saved_model(cfg)), progress=False)
    out: dict[str, Any] = {
        "output": summary.out, "counts": summary.counts, "failed_shards": summary.failed_shards,
        "images_per_s": round(summary.report.get("images_per_s", 0.0), 2),
        "index_s": round(time.perf_counter() - t0, 2),
    }
    if summary.failed_shards:
        log.error("%d shard(s) failed permanently; the reducer is skipped. Rerun to retry them: %s",
                  len(summary.failed_shards), ", ".join(summary.failed_shards))
        return 1, out
    if not cfg.reduce:
        return 0, out
    t1 = time.perf_counter()
    try:
        out["reduce"] = _reduce(cfg)
    except Exception as e:  # the index is committed; the reducer can be rerun on its own
        log.error("reducer failed: %s: %s", type(e).__name__, e)
        out["reduce_error"] = f"{type(e).__name__}: {e}"
        return 1, out
    out["reduce_s"] = round(time.perf_counter() - t1, 2)
    return 0, out


def _reduce(cfg: NightlyConfig) -> dict[str, Any]:
    """facejob.reduce over the output, then the curator's new labels (labels need the clusters)."""
    import tempfile
    from dataclasses import asdict

    from facejob import reduce as fr

    kwargs: dict[str, Any] = {"rebuild_index": cfg.rebuild_index}
    if cfg.cluster_threshold is not None:
        kwargs["threshold"] = cfg.cluster_threshold
    if cfg.cluster_k is not None:
        kwargs["k"] = cfg.cluster_k
    with tempfile.TemporaryDirectory() as tmp:
        # Corrections stored in the output apply on every run; new ones are added first.
        if cfg.corrections:
            kwargs["corrections"] = _local(cfg.corrections, tmp)
        result: dict[str, Any] = {"summary": asdict(fr.reduce(cfg.output, **kwargs))}
        if cfg.labels:
            result["labels"] = asdict(fr.label(cfg.output, _local(cfg.labels, tmp)))
    return result


def _local(uri: str, tmp: str) -> str:
    """A local path for a labels or corrections file (the reducer reads local files)."""
    if not uri.startswith("s3://"):
        return uri
    from facejob.io import s3

    path = Path(tmp) / Path(s3.split_uri(uri)[1]).name
    path.write_bytes(s3.read_bytes(uri))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nightly.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the job's YAML file, e.g. jobs/nightly.yaml")
    p.add_argument("--check", action="store_true", help="validate the config, print it resolved, and exit")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except (ConfigError, OSError) as e:
        print(f"nightly: config error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from facejob.cli import setup_logging

    setup_logging(cfg.log_format)
    log.info("nightly run: %s -> %s", ", ".join(cfg.sources), cfg.output)
    from facejob.io.lock import EXIT_LOCKED, LockHeld, LockLost
    from facejob.io.sources import SourceError

    try:
        status, summary = run(cfg)
    except (ConfigError, FileNotFoundError, SourceError) as e:
        log.error("%s", e)
        return 2
    except LockHeld as e:
        log.error("%s", e)
        return EXIT_LOCKED
    except (OSError, LockLost) as e:  # the output cannot be written: disk full, permissions
        log.error("cannot write the output: %s; rerun to finish", e)
        return 1
    # One JSON line on stdout: what a scheduler or a log pipeline picks up.
    print(json.dumps({"status": "ok" if status == 0 else "failed", **summary}, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
