"""`facejob report OUT [--open]`: facejob/cli.py calls `add_commands(subparsers)`."""
from __future__ import annotations

import argparse
import sys

from facejob.reduce.errors import NotIndexedError, ReduceError


def cmd_report(args: argparse.Namespace) -> int:
    from .builder import build, open_in_browser

    if args.workers is not None and args.workers < 1:
        print("facejob report: error: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        s = build(args.out, workers=args.workers, progress=not args.quiet)
    except (ReduceError, FileNotFoundError) as e:
        print(f"facejob report: error: {e}", file=sys.stderr)
        return 3 if isinstance(e, NotIndexedError) else 2
    print(f"report: {s.people} people, {s.faces} faces, {s.photos} photos ({s.unreadable} unreadable), "
          f"{s.duplicate_groups} groups of duplicates; {s.files} files in {s.timings['total_s']:.1f} s")
    print(f"output: {s.path}")
    if args.open and not open_in_browser(s.path):
        print("(--open: no browser to open it here; open the file above yourself)", file=sys.stderr)
    return 0


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("report", help="write a review page of people, duplicates and the run -> OUT/report/",
                              description="A static site under OUT/report/ (open index.html; no server needed): "
                                          "people largest first with thumbnails, each person's faces most "
                                          "doubtful first, duplicates, the run summary. Names and corrections "
                                          "made there download as corrections.json for "
                                          "`facejob reduce OUT --corrections corrections.json`. Needs `facejob reduce` first.")
    p.add_argument("out", metavar="OUT", help="index output folder or s3:// prefix")
    p.add_argument("--open", action="store_true", help="open the report in the default browser")
    p.add_argument("--workers", type=int, default=None, help="processes cutting thumbnails (default: one per CPU)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_report)
