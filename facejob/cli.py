"""The `facejob` command. Flags mirror facejob.config.IndexConfig one to one."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from facejob.config import DEFAULT_MAX_PIXELS, ConfigError, IndexConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not a usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                           "level": record.levelname, "logger": record.name, "message": record.getMessage()})


def setup_logging(fmt: str = "text", verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger("facejob")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def add_index_options(p: argparse.ArgumentParser) -> None:
    d = IndexConfig()
    g = p.add_argument_group("detection and embedding")
    g.add_argument("--detector", choices=["hog", "cnn"], default=d.detector,
                   help="hog: dlib's HOG detector, fast on CPU; cnn: dlib's MMOD CNN, finds more "
                        "(rotated, small) faces, needs a GPU to be fast (default: %(default)s)")
    g.add_argument("--upsample", type=int, default=d.upsample,
                   help="double the image this many times before detecting; 1 finds faces down to "
                        "~40 px (default: %(default)s)")
    g.add_argument("--min-face-size", type=int, default=d.min_face_size, metavar="PX",
                   help="drop faces whose shorter side is below PX pixels (default: %(default)s = keep all)")
    g.add_argument("--work-size", type=int, default=d.work_size, metavar="PX",
                   help="detect on a working copy with this long side; photos up to twice as large are "
                        "used as they are; 0 = always full size (default: %(default)s)")
    g.add_argument("--smallest-face", type=int, default=d.smallest_face, metavar="PX",
                   help="make the working copy large enough to find faces down to PX original pixels "
                        "(default: %(default)s = set by --work-size)")
    g.add_argument("--landmarks", type=int, choices=[5, 68], default=d.landmarks,
                   help="landmark model used to align faces (default: %(default)s)")
    g.add_argument("--embedder", choices=["dlib", "torch"], default=d.embedder,
                   help="dlib: the reference implementation; torch: batched port of the same network, "
                        "same numbers, much faster (default: %(default)s)")
    g.add_argument("--device", default=d.device, help="torch device: auto, cpu, cuda (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="faces per torch batch, 0 = tuned per device (default: %(default)s)")
    g.add_argument("--tta", choices=["none", "flip"], default=d.tta,
                   help="flip: average each face's descriptor with its mirror image's (default: %(default)s)")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images larger than this many pixels (default: %(default)s)")
    r = p.add_argument_group("execution")
    r.add_argument("--workers", type=int, default=d.workers,
                   help="parallel workers, each loading the models once (default: one per CPU)")
    r.add_argument("--cpus-per-worker", type=float, default=d.cpus_per_worker,
                   help="Ray CPUs each worker task asks for (default: %(default)s)")
    r.add_argument("--gpus-per-worker", type=float, default=d.gpus_per_worker,
                   help="Ray GPUs each worker task asks for; 1 on GPU clusters (default: %(default)s)")
    r.add_argument("--shard-size", type=int, default=d.shard_size,
                   help="images per task and per output part (default: 0 = about 4 shards per worker, 10-500 images each)")
    r.add_argument("--address", default=d.address,
                   help="join this Ray cluster (auto or host:port); default: start a local Ray")
    r.add_argument("--force", action="store_true", help="redo photos already in the output")


def config_from_args(args: argparse.Namespace) -> IndexConfig:
    return IndexConfig(detector=args.detector, upsample=args.upsample, min_face_size=args.min_face_size,
                       work_size=args.work_size, smallest_face=args.smallest_face, landmarks=args.landmarks, embedder=args.embedder, device=args.device,
                       batch_size=args.batch_size, tta=args.tta, max_pixels=args.max_pixels,
                       workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                       gpus_per_worker=args.gpus_per_worker, shard_size=args.shard_size, address=args.address,
                       force=args.force)


def cmd_index(args: argparse.Namespace) -> int:
    from facejob.runner import index

    if args.endpoint_url:
        from facejob import s3

        s3.configure(endpoint_url=args.endpoint_url)
    summary = index(args.sources, args.out, config_from_args(args), progress=not args.quiet)
    c, t = summary.counts, summary.report["totals"]
    print(f"indexed {c['processed']} photos in {summary.timings['total_s']:.1f} s "
          f"({summary.report['images_per_s']:.1f} images/s): {c['ok']} with faces, {c['no_face']} without, "
          f"{c['error']} errors; {c['faces']} faces. Unchanged {c['unchanged']}, deleted {c['deleted']}, "
          f"skipped by extension {c['skipped_by_extension']}.")
    print(f"output: {summary.out} now holds {t['images']} photos and {t['faces']} faces "
          f"(images/, faces/, run.json)")
    if summary.failed_shards:
        print(f"FAILED shards (rerun to retry): {', '.join(summary.failed_shards)}", file=sys.stderr)
        return 1
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from facejob.verify import verify

    v = verify(args.photo_a, args.photo_b, args.threshold)
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
    add_index_options(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("verify", help="are the faces in two photos the same person?")
    p.add_argument("photo_a")
    p.add_argument("photo_b")
    p.add_argument("--threshold", type=float, default=0.6, help="distance below which faces match (default: %(default)s)")
    p.set_defaults(func=cmd_verify)

    try:
        from facejob.reduce.cli import add_commands
    except ImportError:
        pass
    else:
        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_format, args.verbose)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"facejob {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
