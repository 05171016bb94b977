"""`facejob nightly --config FILE [--check]`: index what changed in the archive, then rebuild
the reducer's outputs and the review report.

    facejob nightly --config jobs/nightly.yaml                  # local Ray
    facejob nightly --config jobs/nightly.yaml --check          # validate against OUT, print, exit
    ray job submit --working-dir . -- python jobs/nightly.py --config jobs/nightly.yaml

Every setting lives in the YAML file (see jobs/nightly.yaml). Its keys are the fields of
facejob.config's dataclasses, the same names as the command-line flags: `index:` takes
ModelConfig and RunConfig (the `facejob index` flags), `reduce:` takes ReduceConfig (the
`facejob reduce` flags) plus `enabled`. A key left out is the CLI's default (a model key: the
output's own, as for `facejob index`); a misspelt key is an error, never a silent default.
String values may use ${VAR} or ${VAR:-default}, so one file serves every environment.

Exit status: 0 done, 1 some shards failed permanently (rerun to retry them), the reducer or
the report failed or the output could not be written, 2 the configuration is wrong or a source
looks unmounted (nothing was retired; see index.allow_retire), 75 another run holds the
output (the job holds its writer lock from the first listing to the last report write), 130
Ctrl-C (committed shards stay; rerunning finishes the work).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from facejob.config import (
    ConfigError, IndexConfig, ModelConfig, ModelMismatch, ReduceConfig, RunConfig, model_differences, setting,
    split_flat,
)

log = logging.getLogger("facejob.nightly")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MODEL_KEYS = frozenset(f.name for f in dataclasses.fields(ModelConfig))


@dataclass(frozen=True)
class NightlyReduce(ReduceConfig):
    """The `reduce:` section: ReduceConfig, and whether to run the reducer at all."""

    enabled: bool = setting(True, "run the reducer (and the report) after indexing", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be true or false, got {self.enabled!r}")


@dataclass(frozen=True)
class NightlyConfig:
    """The whole job: what to index, where to, how, and what to build from it afterwards."""

    sources: tuple[str, ...]
    output: str
    index: IndexConfig = field(default_factory=IndexConfig)
    endpoint_url: str | None = None
    reduce: NightlyReduce = field(default_factory=NightlyReduce)
    report: bool = True                        # rebuild the review site (`facejob report`) after the reducer
    log_format: str = "text"
    model_given: frozenset[str] = frozenset()  # ModelConfig keys `index:` names; the rest: OUT's own

    def __post_init__(self) -> None:
        if not self.sources or not all(isinstance(s, str) and s for s in self.sources):
            raise ConfigError("sources must be a non-empty list of folders, files or s3:// prefixes")
        if not isinstance(self.output, str) or not self.output:
            raise ConfigError("output must be a folder or an s3://bucket/prefix")
        if self.endpoint_url is not None and not isinstance(self.endpoint_url, str):
            raise ConfigError(f"endpoint_url must be a URL, got {self.endpoint_url!r}")
        if not isinstance(self.report, bool):
            raise ConfigError(f"report must be true or false, got {self.report!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")

    @classmethod
    def from_dict(cls, doc: Any) -> "NightlyConfig":
        """A loaded (and expanded) YAML document; ConfigError names the key that is wrong."""
        top = _section(doc, "the config", {f.name for f in dataclasses.fields(cls)} - {"model_given"})
        sources = top.get("sources")
        index_doc = _section(top.get("index"), "index", MODEL_KEYS | {f.name for f in dataclasses.fields(RunConfig)})
        try:
            index = IndexConfig(*split_flat(index_doc))
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"index: {e}") from e
        red_doc = _section(top.get("reduce"), "reduce", {f.name for f in dataclasses.fields(NightlyReduce)})
        try:
            red = NightlyReduce(**red_doc)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"reduce: {e}") from e
        return cls(sources=tuple([sources] if isinstance(sources, str) else sources or ()),
                   output=top.get("output"), index=index, endpoint_url=top.get("endpoint_url") or None,
                   reduce=red, report=top.get("report", True), log_format=top.get("log_format", "text"),
                   model_given=frozenset(index_doc) & MODEL_KEYS)

    def to_dict(self) -> dict[str, Any]:
        return {"sources": list(self.sources), "output": self.output, "endpoint_url": self.endpoint_url,
                "index": {**self.index.model.to_dict(), **self.index.run.to_dict()},
                "reduce": self.reduce.to_dict(), "report": self.report, "log_format": self.log_format}


def _section(d: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(map(str, unknown))} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    return d


def expand(value: Any, env: dict[str, str]) -> Any:
    """${VAR} and ${VAR:-default} in every string of a YAML document; an unset ${VAR} is an error.

    A value that is nothing but one ${...} takes the YAML type of what it expands to, so
    `workers: ${FACEJOB_WORKERS:-0}` is the integer 0 and an empty expansion is null.
    """
    import yaml

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


def parse_config(doc: Any, env: dict[str, str] | None = None) -> NightlyConfig:
    """Validate a loaded YAML document into a NightlyConfig (ConfigError says what is wrong)."""
    return NightlyConfig.from_dict(expand(doc, dict(os.environ) if env is None else env))


def load_config(path: str | Path) -> NightlyConfig:
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_config(doc)


YAML_ADVICE = ("set index.force: true to redo every photo, leave the model keys out of `index:` (the output's "
               "own settings are then used), or use another output")


def _index_config(cfg: NightlyConfig) -> IndexConfig:
    """The run's IndexConfig: model settings the config does not name are the output's own (as
    for `facejob index`), so an output indexed before a default changed keeps its detector; a
    named one that differs from the output's faces is refused (ModelMismatch, yaml advice)."""
    from facejob.indexing.driver import saved_model
    from facejob.io.storage import open_store

    store = open_store(cfg.output)
    index = cfg.index
    saved = saved_model(store)
    if saved is not None:
        index = replace(index, model=replace(saved, **{k: getattr(index.model, k) for k in cfg.model_given}))
    diff = {} if index.run.force else model_differences(store, index.model)
    if diff:
        raise ModelMismatch(store.root, diff, YAML_ADVICE)
    if index.run.address is None and os.environ.get("RAY_ADDRESS"):
        # Inside `ray job submit` the cluster is given by RAY_ADDRESS: join it, never start another.
        index = replace(index, run=replace(index.run, address=os.environ["RAY_ADDRESS"]))
    return index


def run(cfg: NightlyConfig) -> tuple[int, dict[str, Any]]:
    """Index, then reduce and rebuild the report, holding the output's writer lock throughout.
    Returns (exit status, summary for the operator)."""
    from facejob.io import lock, s3

    if cfg.endpoint_url:
        s3.configure(endpoint_url=cfg.endpoint_url)  # before Ray starts, so workers inherit it
    with lock.hold(cfg.output, "nightly"):
        return _run(cfg)


def _run(cfg: NightlyConfig) -> tuple[int, dict[str, Any]]:
    import facejob

    t0 = time.perf_counter()
    summary = facejob.index(cfg.sources, cfg.output, _index_config(cfg), progress=False)
    out: dict[str, Any] = {
        "output": summary.out, "counts": summary.counts, "failed_shards": summary.failed_shards,
        "images_per_s": round(summary.report.get("images_per_s", 0.0), 2),
        "index_s": round(time.perf_counter() - t0, 2),
    }
    if summary.failed_shards:
        log.error("%d shard(s) failed permanently; the reducer is skipped. Rerun to retry them: %s",
                  len(summary.failed_shards), ", ".join(summary.failed_shards))
        return 1, out
    if not cfg.reduce.enabled:
        return 0, out
    for step, fn in (("reduce", _reduce), ("report", _report)):
        if step == "report" and not cfg.report:
            break
        t1 = time.perf_counter()
        try:
            out[step] = fn(cfg)
        except Exception as e:  # the index is committed; the step can be rerun on its own
            log.error("%s failed: %s: %s", step, type(e).__name__, e)
            out[f"{step}_error"] = f"{type(e).__name__}: {e}"
            return 1, out
        out[f"{step}_s"] = round(time.perf_counter() - t1, 2)
    return 0, out


def _reduce(cfg: NightlyConfig) -> dict[str, Any]:
    from facejob import reduce as fr

    red = cfg.reduce
    address = cfg.index.run.address or os.environ.get("RAY_ADDRESS")
    if red.address is None and address:
        # The job's cluster, which indexed tonight's photos, runs the reducer's heavy parts too.
        red = dataclasses.replace(red, address=address)
    return {"summary": dataclasses.asdict(fr.reduce_with(cfg.output, red))}


def _report(cfg: NightlyConfig) -> dict[str, Any]:
    from facejob.report.builder import build

    s = build(cfg.output, progress=False)
    return {"path": s.path, "people": s.people, "photos": s.photos, "files": s.files}


def check(cfg: NightlyConfig) -> NightlyConfig:
    """--check: the config against the output it names (ModelMismatch when its model keys
    conflict with the faces already there); returns it with the model settings a run would use."""
    from facejob.io import s3

    if cfg.endpoint_url:
        s3.configure(endpoint_url=cfg.endpoint_url)
    try:
        return replace(cfg, index=_index_config(cfg))
    except ConfigError:
        raise
    except Exception as e:  # S3 unreachable, no credentials, a damaged model.json: the check cannot be made
        raise ConfigError(f"cannot read {cfg.output} to compare the config with its model.json: "
                          f"{type(e).__name__}: {e}") from e


DESCRIPTION = ("The nightly job: index what is new or changed in the archive, retire what is gone, then run the "
               "reducer and rebuild the review report, holding the output's lock throughout. Every setting is "
               "in the YAML file (see jobs/nightly.yaml): `index:` keys are the `facejob index` flags, `reduce:` "
               "keys the `facejob reduce` flags; a key left out is the command's default.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the job's YAML file, e.g. jobs/nightly.yaml")
    p.add_argument("--check", action="store_true",
                   help="validate the config (and its model keys against OUT's model.json), print it resolved, exit")


def cmd_nightly(args: argparse.Namespace, prog: str = "facejob nightly") -> int:
    try:
        cfg = load_config(args.config)
        if args.check:
            cfg = check(cfg)
    except (ConfigError, OSError) as e:
        print(f"{prog}: config error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from facejob.exits import EXIT_INTERRUPTED
    from facejob.progress import setup_logging

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
    except KeyboardInterrupt as e:  # Ctrl-C; the index says how far it got (pool.Interrupted)
        log.error("interrupted%s; rerun the same command to finish", f": {e}" if str(e) else "")
        return EXIT_INTERRUPTED
    # One JSON line on stdout: what a scheduler or a log pipeline picks up.
    print(json.dumps({"status": "ok" if status == 0 else "failed", **summary}, default=str))
    return status


def add_command(subparsers) -> None:
    p = subparsers.add_parser("nightly", help="the nightly job: index what changed, reduce, rebuild the report",
                              description=DESCRIPTION)
    add_arguments(p)
    p.set_defaults(func=cmd_nightly)


def main(argv: list[str] | None = None) -> int:
    """jobs/nightly.py (for `ray job submit`): the same as `facejob nightly`."""
    p = argparse.ArgumentParser(prog="nightly.py", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv)
    from facejob.exits import run_command

    return run_command("nightly.py", lambda: cmd_nightly(args, prog="nightly.py"))
