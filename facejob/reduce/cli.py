"""`facejob search | cluster | label | dedup | eval | reduce`: the reducer's subcommands.

facejob/cli.py calls `add_commands(subparsers)`; each handler returns an exit code and turns
the reducer's errors into one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from .errors import NotIndexedError, ReduceError


def _errors(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (ReduceError, FileNotFoundError) as e:
            msg = str(e)
            print(f"facejob {args.command}: error: {msg}", file=sys.stderr)
            return 3 if isinstance(e, NotIndexedError) else 2
    run.__name__ = fn.__name__
    return run


@_errors
def cmd_search(args: argparse.Namespace) -> int:
    from . import search_index as si

    if args.stop:
        if not args.address:
            raise ReduceError("--stop needs --address (the Ray cluster the search service runs on)")
        if args.photo is not None or args.face_id is not None:
            raise ReduceError("--stop takes no PHOTO or --face-id")
        n = si.stop_service(args.out, args.address)
        print(f"stopped the search service of {args.out}: {n} shard actor(s)" if n else
              f"no search service of {args.out} was running")
        return 0
    if (args.photo is None) == (args.face_id is None):
        raise ReduceError("give a PHOTO or --face-id ID (one of them)")
    if args.k < 1:
        raise ReduceError("--k must be at least 1")
    if args.shards and not args.address:
        raise ReduceError("--shards needs --address (the search service runs on a Ray cluster)")
    how = dict(metric=args.metric, address=args.address, shards=args.shards)
    queries = ([si.search_face(args.out, args.face_id, args.k, **how)] if args.face_id
               else si.search(args.out, args.photo, args.k, **how))
    if args.json:  # one object per query face: its index and box in PHOTO, and its matches
        print(json.dumps([{"face_idx": q.face_idx, "box": list(q.box),
                           "matches": [{**asdict(m), "box": list(m.box)} for m in q.matches]} for q in queries],
                         indent=1))
    elif not queries:
        print(f"no face found in {args.photo}")
    else:
        for q in queries:
            head = f"face {q.face_idx} at {q.box}" if q.face_idx >= 0 else f"face {args.face_id}"
            print(f"{head}: {len(q.matches)} nearest (distance, face id for --face-id, photo#face)")
            for m in q.matches:
                who = "" if m.label in (None, "unknown") else f"  {m.label} ({m.probability:.2f})"
                cl = "" if m.cluster_id is None else f"  cluster {m.cluster_id}"
                print(f"  {m.distance:.3f}  {m.face_id}  {m.uri}#{m.face_idx}{cl}{who}")
    return 0 if queries else 1  # no face in PHOTO: 1, with --json too (it prints [])


@_errors
def cmd_cluster(args: argparse.Namespace) -> int:
    from .clustering import cluster

    s = cluster(args.out, threshold=args.threshold, k=args.k, min_quality=args.min_quality, metric=args.metric)
    print(f"{s.faces} faces -> {s.clusters} clusters ({s.singletons} single faces, largest {s.largest}); "
          f"{s.merges} merges, {s.splits} splits, {s.gone} gone since the last run; {s.timings['total_s']:.1f} s")
    print(f"{s.low_quality} faces below quality {args.min_quality} (not cluster seeds): {s.attached} joined "
          f"the cluster they are near, the rest are alone")
    print(f"output: {args.out}/clusters.parquet")
    return 0


@_errors
def cmd_label(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .labelling import label, saved_label_params

    params = saved_label_params(args.out)  # a threshold given once stays, for `reduce` too
    if args.threshold is not None:
        params = replace(params, threshold=args.threshold)
    s = label(args.out, args.labels, params, replace=args.replace, min_quality=args.min_quality,
              corrections=args.corrections, metric=args.metric)
    print(f"learned {s.people} people from {s.labelled} labelled faces (+{s.background} background faces); "
          f"named {s.named} of {s.faces} faces, {s.unknown} unknown; {s.low_quality} below quality "
          f"{args.min_quality} (named too, not used for training)")
    if s.followed:
        print(f"{s.followed} labels followed their face to a moved or re-encoded photo")
    if s.gone:
        print(f"{len(s.gone)} labels are on photos no longer in the archive; kept as training examples:")
        for g in s.gone:
            print(f"  {g['name']}: face {g['face_id']} of {g['uri'] or '(a labels photo)'} ({g['source']})")
    print(f"output: {args.out}/predictions.parquet, models in {args.out}/labels/")
    return 0


@_errors
def cmd_dedup(args: argparse.Namespace) -> int:
    from .deduping import dedup

    s = dedup(args.out)
    print(f"{s.photos} photos: {s.groups} groups of copies ({s.identical_groups} byte-identical, "
          f"{s.near_groups} near-duplicate), {s.duplicates} photos are extra copies")
    print(f"output: {args.out}/duplicates.parquet")
    return 0


@_errors
def cmd_reduce(args: argparse.Namespace) -> int:
    from facejob.config import ReduceConfig, from_args

    from .pipeline import reduce_with

    cfg = from_args(ReduceConfig, args)
    r = reduce_with(args.out, cfg, progress=not args.quiet)
    print(f"index: {r.faces} faces ({r.index_s:.1f} s)")
    c = r.cluster
    print(f"cluster: {c.clusters} clusters, largest {c.largest}; {c.merges} merges, {c.splits} splits recorded; "
          f"{c.low_quality} faces below quality {cfg.min_quality} ({c.attached} joined a cluster)")
    if r.label:
        print(f"label: {r.label.people} people; named {r.label.named} of {r.label.faces} faces")
    else:
        print("label: skipped (no labels yet; `facejob label OUT --labels LABELS.csv`)")
    d = r.dedup
    print(f"dedup: {d.groups} groups of copies, {d.duplicates} extra copies")
    if r.ray_work is not None:
        print(f"ray: {sum(r.ray_work.values())} tasks and actors on {len(r.ray_work)} node(s): "
              + ", ".join(f"{n} {c}" for n, c in sorted(r.ray_work.items())))
    return 0


@_errors
def cmd_eval(args: argparse.Namespace) -> int:
    from facejob.io.storage import open_store

    from .evaluate import evaluate

    r = evaluate(open_store(args.out), args.pairs, args.images, learn_metric=args.learn_metric,
                 log=None if args.json else (lambda m: print("  " + m, file=sys.stderr)))
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['pairs']} pairs, 10 folds; {r['missing']} with a photo without a face (counted as different)")
    for k in ("plain", "learned"):
        if k in r:
            print(f"{k:>8}: accuracy {r[k]['accuracy'] * 100:.2f}% +- {r[k]['std'] * 100:.2f}")
    return 0


CORRECTIONS_HELP = ("corrections.json downloaded from the report page: added to OUT/labels/corrections.json, "
                    "which every later run applies (names, same person, not this person)")


def _quality_option(p: argparse.ArgumentParser) -> None:
    from facejob.config import MIN_QUALITY

    p.add_argument("--min-quality", type=float, default=MIN_QUALITY, metavar="Q",
                   help="only faces of quality >= Q (0..1, from face size and chip sharpness) seed clusters "
                        "and train the SVMs; the others are still clustered and named (0 = all seed; "
                        "default: %(default)s)")


def _metric_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", choices=("learned", "plain"), default="learned",
                   help="learned: use the metric head trained on the curator's labels when OUT has one "
                        "(labels/metric.npz; it is only kept when it beats the plain descriptors on "
                        "held-out people); plain: the descriptors as indexed (default: %(default)s)")


def add_commands(subparsers) -> None:
    from facejob.config import ReduceConfig, add_options

    from facejob.config import CLUSTER_K, CLUSTER_THRESHOLD, LabelParams

    p = subparsers.add_parser("search", help="find the faces in OUT nearest to the faces of a photo",
                              description="Embed the faces of PHOTO like the archive was embedded and list "
                                          "the nearest faces in OUT (needs OUT/index/ from `facejob reduce`).")
    p.add_argument("out", metavar="OUT", help="index output folder or s3:// prefix")
    p.add_argument("photo", metavar="PHOTO", nargs="?", help="query photo (path or s3:// uri)")
    p.add_argument("--face-id", help="query by an archive face instead of a photo")
    p.add_argument("--k", type=int, default=10, help="matches per query face (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print a JSON list of matches per query face")
    _metric_option(p)
    p.add_argument("--address", metavar="ADDR",
                   help="ask OUT's search service on this Ray cluster (auto or host:port), started at the first "
                        "call and kept: shard actors that each hold a share of OUT/faces/ and follow it at every "
                        "call, so later searches load nothing (default: load OUT/index/ in this process)")
    p.add_argument("--shards", type=int, default=0, metavar="N",
                   help="with --address: shard actors of the service (0 = those running, else one per CPU of the "
                        "cluster; another number restarts the service with N)")
    p.add_argument("--stop", action="store_true", help="with --address: end OUT's search service")
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("cluster", help="group the faces of OUT by identity -> OUT/clusters.parquet",
                              description="Average-linkage clustering over the k-nearest-neighbour graph of "
                                          "all faces. Earlier cluster ids are kept; merges and splits are "
                                          "recorded in OUT/cluster_events.parquet.")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--threshold", type=float, default=None,
                   help="two clusters join when their RMS face distance, less 0.2 x the share of their graph "
                        "edges that join them, is under this, less 0.04 / sqrt(faces of one x faces of the other); "
                        "kept in OUT/clusters.json and used by later `cluster`, `reduce` and nightly runs "
                        f"(default: the kept one, else {CLUSTER_THRESHOLD})")
    p.add_argument("--k", type=int, default=None,
                   help=f"neighbours per face in the graph; kept like the threshold (default: the kept one, else "
                        f"{CLUSTER_K})")
    _quality_option(p)
    _metric_option(p)
    p.set_defaults(func=cmd_cluster)

    p = subparsers.add_parser("label", help="learn named people from labelled faces; name every face",
                              description="LABELS is a CSV with `name` and `face_id` (or `uri` [+ `face_idx`]) "
                                          "or a folder with one subfolder of photos per person. Writes "
                                          "OUT/predictions.parquet and the models under OUT/labels/.")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--labels", metavar="LABELS", help="labels CSV or folder (default: the labels stored in OUT)")
    p.add_argument("--replace", action="store_true", help="forget the labels stored in OUT first")
    p.add_argument("--corrections", metavar="FILE", help=CORRECTIONS_HELP)
    p.add_argument("--threshold", type=float, default=None,
                   help="lowest probability that names a face, else `unknown`; saved with the models and "
                        f"used by later runs (default: the saved one, else {LabelParams().threshold})")
    _quality_option(p)
    _metric_option(p)
    p.set_defaults(func=cmd_label)

    p = subparsers.add_parser("dedup", help="find byte-identical and near-duplicate photos",
                              description="Writes OUT/duplicates.parquet: groups of copies, which one to keep and why.")
    p.add_argument("out", metavar="OUT")
    p.set_defaults(func=cmd_dedup)

    p = subparsers.add_parser("eval", help="LFW verification accuracy (10 folds) of an index output",
                              description="Score OUT's descriptors on an LFW pairs file (View 2 pairs.txt, or "
                                          "View 1 pairsDevTest.txt cut into 10 folds): per fold, the distance "
                                          "threshold best on the other nine. --learn-metric also trains the "
                                          "metric head per fold on the other folds' people and scores it.")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--pairs", required=True, metavar="FILE", help="LFW pairs file")
    p.add_argument("--images", required=True, metavar="DIR", help="the folder the pairs' NAME/NAME_NNNN.jpg are under "
                                                                  "(as indexed into OUT)")
    p.add_argument("--learn-metric", action="store_true", help="also score the learned metric head")
    p.add_argument("--json", action="store_true", help='print {"plain": {"accuracy", "std"}, "learned": ..., '
                                                       '"pairs", "missing"}')
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("reduce", help="index + cluster + label + dedup (after `facejob index`)",
                              description="Everything after `facejob index`, in one command: extend the face "
                                          "search index (OUT/index/), cluster the faces by identity keeping "
                                          "earlier cluster ids (OUT/clusters.parquet), name them from the "
                                          "stored labels and corrections (OUT/predictions.parquet; skipped "
                                          "while there are none) and find duplicate photos "
                                          "(OUT/duplicates.parquet). Settings given once (cluster threshold "
                                          "and k, label threshold) are kept in OUT for later runs.")
    p.add_argument("out", metavar="OUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    add_options(p, ReduceConfig, "settings (the same names are the nightly job's `reduce:` keys)")
    p.set_defaults(func=cmd_reduce)


def main(argv: list[str] | None = None) -> int:
    """`python -m facejob.reduce.cli ...` runs the subcommands on their own."""
    parser = argparse.ArgumentParser(prog="facejob")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
