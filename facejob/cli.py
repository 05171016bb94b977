"""The `facejob` command. `index` and `verify` flags are generated from facejob.config's dataclass
fields (name, type, choices, help); a flag not given takes the field's default."""
from __future__ import annotations

import argparse
import sys

from facejob.config import CompactConfig, IndexConfig, ModelConfig, RunConfig, add_options, from_args
from facejob.exits import run_command
from facejob.progress import setup_logging


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not a usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The flags of a config dataclass and the config from them: facejob.config generates both.
add_config_options, config_from_args = add_options, from_args


def index_config_from_args(args: argparse.Namespace, saved: ModelConfig | None = None) -> IndexConfig:
    """Flags given win; model settings not given come from `saved` (the output's own), else defaults."""
    return IndexConfig(config_from_args(ModelConfig, args, saved), config_from_args(RunConfig, args))


def cmd_index(args: argparse.Namespace) -> int:
    from facejob.indexing.driver import index

    if args.endpoint_url:
        from facejob.io import s3

        s3.configure(endpoint_url=args.endpoint_url)
    from facejob.indexing.driver import saved_model
    from facejob.io.storage import open_store

    saved = saved_model(open_store(args.out))  # run.json's `model` shows what was used
    summary = index(args.sources, args.out, index_config_from_args(args, saved), progress=not args.quiet)
    c, t = summary.counts, summary.report["totals"]
    # process_s is the progress line's clock; listing, planning and starting Ray come on top
    print(f"indexed {c['processed']} photos in {summary.timings['process_s']:.1f} s "
          f"({summary.report['images_per_s']:.1f} photos/s; {summary.timings['total_s']:.1f} s with listing "
          f"and start-up): {c['ok']} with faces, {c['no_face']} without, "
          f"{c['error']} errors; {c['faces']} faces. Unchanged {c['unchanged']}, deleted {c['deleted']}, "
          f"skipped by extension {c['skipped_by_extension']}.")
    if not t["images"]:  # the same words as `facejob reduce` and `report` say then
        print(f"output: {summary.out} holds no photos yet: `facejob index` found none under "
              f"{' '.join(args.sources)}; index a folder with photos first")
    else:
        print(f"output: {summary.out} now holds {t['images']} photos and {t['faces']} faces "
              f"(images/, faces/, run.json)")
    if summary.failed_shards:
        print(f"FAILED shards (rerun to retry): {', '.join(summary.failed_shards)}", file=sys.stderr)
        return 1
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from facejob.indexing.compact import compact

    if args.endpoint_url:
        from facejob.io import s3

        s3.configure(endpoint_url=args.endpoint_url)
    s = compact(args.out, config_from_args(CompactConfig, args))
    if not s.parts_before:
        print(f"no index output under {args.out} (no images/ parts); run `facejob index` first", file=sys.stderr)
        return 3
    print(f"compacted {args.out}: {s.parts_before} parts → {s.parts_after} ({s.photos_moved} photos moved into "
          f"{s.merged} merged parts; {s.healed} damaged, uncommitted or repeated parts or rows cleared first) "
          f"in {s.seconds:.1f} s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from facejob.indexing.verify import verify

    base = None
    if args.like:  # the archive's own model settings, overridden by any flag given
        from facejob.io.storage import open_store

        base = ModelConfig.load(open_store(args.like))
    v = verify(args.photo_a, args.photo_b, args.threshold, config_from_args(ModelConfig, args, base),
               args.face_a, args.face_b)
    print(f"{'same person' if v.same_person else 'different people'}: distance {v.distance:.4f} "
          f"(threshold {v.threshold})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="facejob", description="Index, search, cluster and label the faces in photo archives.")
    parser.add_argument("--log-format", choices=["text", "json"], default="text", help="log line format")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("index", help="detect, align and embed every face under SRC into Parquet",
                       description="Find every face in the photos under SRC (folders, files or s3:// "
                                   "prefixes) and write OUT/images/*.parquet (one row per photo, with "
                                   "status ok|no_face|error), OUT/faces/*.parquet (one row per face, with "
                                   "its 128-d descriptor) and OUT/run.json. Rerunning only processes new "
                                   "or changed photos.")
    p.add_argument("sources", nargs="+", metavar="SRC", help="folder, file or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--endpoint-url", default=None,
                   help="S3-compatible endpoint (MinIO, Ceph); default: AWS_ENDPOINT_URL or AWS itself")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    add_config_options(p, ModelConfig, "the face model (saved in OUT/model.json; search, verify and label reuse it)")
    add_config_options(p, RunConfig, "execution")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("compact", help="merge an output's small parts into large ones",
                       description="Merge the small images/ and faces/ parts that nightly runs add into large "
                                   "ones (under the writer lock; a crash at any point leaves an output that "
                                   "the next run trusts, with the same rows). `facejob index` does it by "
                                   "itself when an output holds more than --compact-parts parts.")
    p.add_argument("out", metavar="OUT", help="output folder or s3://bucket/prefix")
    p.add_argument("--endpoint-url", default=None,
                   help="S3-compatible endpoint (MinIO, Ceph); default: AWS_ENDPOINT_URL or AWS itself")
    add_config_options(p, CompactConfig, "compaction")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("verify", help="are the faces in two photos the same person?")
    p.add_argument("photo_a")
    p.add_argument("photo_b")
    p.add_argument("--threshold", type=float, default=0.6, help="distance below which faces match (default: %(default)s)")
    p.add_argument("--like", metavar="OUT", help="use the model settings an index output was made with")
    for which, photo in (("a", "PHOTO_A"), ("b", "PHOTO_B")):
        p.add_argument(f"--face-{which}", type=int, metavar="N",
                       help=f"compare face N of {photo} (0, 1, ... in the order `index` numbers them, "
                            f"listed when a photo has no clear main face; default: its main face)")
    add_config_options(p, ModelConfig, "the face model")
    p.set_defaults(func=cmd_verify)

    try:
        from facejob.reduce.cli import add_commands
    except Exception as e:  # an optional part that cannot load must not hide the other commands
        _unavailable(sub, REDUCE_COMMANDS, e)
    else:
        add_commands(sub)
    from facejob.report.cli import add_commands as add_report
    add_report(sub)

    from facejob.audit.cli import add_command as add_audit

    add_audit(sub)
    from facejob.nightly import add_command as add_nightly

    add_nightly(sub)
    return parser


REDUCE_COMMANDS = ("search", "cluster", "label", "dedup", "reduce")


def _unavailable(sub, names: tuple[str, ...], error: Exception) -> None:
    """Commands whose module failed to import: listed in --help, and an error saying why when run."""
    why = f"{type(error).__name__}: {error}"
    for name in names:
        p = sub.add_parser(name, help=f"(unavailable: {why})", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda args, why=why: _fail_unavailable(args.command, why))


def _fail_unavailable(command: str, why: str) -> int:
    print(f"facejob {command}: error: this command could not be loaded ({why})", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_format, args.verbose)
    return run_command(f"facejob {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
