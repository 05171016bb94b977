"""`facejob audit`: how easily small pixel changes fool the recogniser. facejob/cli.py calls
`add_command(subparsers)`; the flags mirror facejob.audit.run.AuditConfig."""
from __future__ import annotations

import argparse
import math
import sys

from .config import ATTACKS, DEFENCES, AuditConfig, AuditError


def _csv(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses

    from facejob.config import DEFAULT_MAX_PIXELS, ModelConfig, load_run_config
    from facejob.reduce.errors import ReduceError

    from .pairs import index_pairs, lfw_pairs
    from .run import records_json, run_audit

    try:
        cfg = AuditConfig(attacks=args.attack, eps=args.eps, defences=args.defence, pgd_steps=args.pgd_steps,
                          pgd_step=args.pgd_step, pgd_random_start=not args.no_random_start,
                          threshold=args.threshold, jpeg_quality=args.jpeg_quality, jitter_px=args.jitter_px,
                          device=args.device, batch_size=args.batch_size, seed=args.seed)
        if (args.out is None) == (args.pairs is None):
            raise AuditError("give an index OUT, or --pairs FILE --images DIR (one of them)")
        if args.pairs is not None:
            if args.images is None:
                raise AuditError("--pairs needs --images DIR (the folder the pairs' photos are in)")
            pairs = lfw_pairs(args.pairs, args.images, args.limit)
            model, max_pixels = ModelConfig(embedder="torch", device=args.device), DEFAULT_MAX_PIXELS
        else:
            from facejob.io.storage import open_store

            pairs = index_pairs(args.out, args.limit, args.seed)
            # the transfer case re-indexes photos the way this archive was indexed (the torch
            # port of the recogniser gives dlib's descriptors to 1e-6)
            store = open_store(args.out)
            model = dataclasses.replace(ModelConfig.load(store), embedder="torch", device=args.device)
            max_pixels = load_run_config(store).max_pixels
        records = run_audit(pairs, cfg, model, args.examples, max_pixels)
    except (AuditError, ReduceError, FileNotFoundError) as e:
        print(f"facejob audit: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(records_json(records))
    else:
        print(table(records, cfg))
    return 0


def table(records: list, cfg) -> str:
    """success rate and mean distance after, one line per (attack, goal, eps), one column per defence."""
    defences = list(dict.fromkeys(r.defence for r in records))
    cell = {(r.attack, r.goal, r.eps, r.defence): r for r in records}
    pairs = {r.goal: r.pairs for r in records}
    lines = [f"facejob audit: {pairs.get('dodging', 0)} same-person pairs (dodging), {pairs.get('impersonation', 0)} "
             f"different-person pairs (impersonation); match below {cfg.threshold}; L-inf eps in grey levels; "
             f"PGD {cfg.pgd_steps} steps of {cfg.pgd_step:g}*eps{', random start' if cfg.pgd_random_start else ''}",
             "each cell: attack success rate, mean distance after (eps 0 = clean error rate)",
             f"{'attack':6s} {'goal':13s} {'eps':>4s}  " + "  ".join(f"{d:>12s}" for d in defences)]
    lost = []
    order = {k: i for i, k in enumerate(dict.fromkeys(x for r in records for x in (r.attack, r.goal)))}
    keys = sorted(dict.fromkeys((r.attack, r.goal, r.eps) for r in records), key=lambda k: (order[k[0]], order[k[1]], k[2]))
    for key in keys:
        row = []
        for d in defences:
            r = cell.get((*key, d))
            dist = "  -  " if r is None or math.isnan(r.mean_distance_after) else f"{r.mean_distance_after:.3f}"
            row.append("" if r is None else f"{r.success_rate:5.0%} {dist:>6s}")
            if r is not None and r.faces_lost:
                lost.append(f"{key[0]} {key[1]} eps {key[2]:g}: {r.faces_lost}")
        lines.append(f"{key[0]:6s} {key[1]:13s} {key[2]:4g}  " + "  ".join(f"{c:>12s}" for c in row))
    if lost:
        lines.append("transfer: perturbed photos whose face was no longer found (counted as dodged): " + "; ".join(lost))
    return "\n".join(lines)


def add_command(subparsers) -> None:
    d = AuditConfig()
    p = subparsers.add_parser(
        "audit", help="how easily do small pixel changes fool the recogniser? (adversarial robustness audit)",
        description="Attack face pairs white-box through the PyTorch port of dlib's recogniser: dodging "
                    "(a same-person pair pushed above the threshold) and impersonation (a different-person "
                    "pair pulled below it), L-inf bounded in grey levels, measured on the uint8 result; "
                    "then the same attacks against JPEG re-compression, flip TTA, crop jitter, and the "
                    "transfer case (the perturbed photo re-indexed by the real pipeline). Pairs come from an "
                    "index OUT (by label, else by cluster) or from an LFW pairs file.")
    p.add_argument("out", metavar="OUT", nargs="?", help="index output folder to sample pairs from")
    p.add_argument("--pairs", metavar="FILE", help="LFW-format pairs file (e.g. lfw/pairsDevTest.txt)")
    p.add_argument("--images", metavar="DIR", help="folder with the pairs file's photos (NAME/NAME_0001.jpg)")
    p.add_argument("--limit", type=int, default=100,
                   help="first N same-person and N different-person pairs, 0 = all (default: %(default)s)")
    p.add_argument("--eps", type=_csv(float), default=d.eps, metavar="E,E,...",
                   help="L-inf bounds in grey levels, 0 = no attack (default: 0,1,2,4,8)")
    p.add_argument("--attack", type=_csv(str), default=d.attacks, metavar="A,A",
                   help=f"attacks among {','.join(ATTACKS)} (default: all)")
    p.add_argument("--defence", type=_csv(str), default=d.defences, metavar="D,D,...",
                   help=f"defences among {','.join(DEFENCES)} (default: all)")
    p.add_argument("--pgd-steps", type=int, default=d.pgd_steps, help="PGD iterations (default: %(default)s)")
    p.add_argument("--pgd-step", type=float, default=d.pgd_step,
                   help="PGD step size as a fraction of eps (default: %(default)s)")
    p.add_argument("--no-random-start", action="store_true", help="start PGD at the photo, not a random point")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="distance below which two faces match (default: %(default)s)")
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="jpeg defence quality (default: %(default)s)")
    p.add_argument("--jitter-px", type=int, default=d.jitter_px,
                   help="jitter defence: each crop corner moves up to this many pixels (default: %(default)s)")
    p.add_argument("--device", default=d.device, help="auto (cuda when present), cpu, cuda (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="pairs per attack batch, 0 = 16 on CPU, 256 on a GPU (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="PGD random start, jitter, pair sampling (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the records as a JSON list instead of a table")
    p.add_argument("--examples", metavar="DIR", help="save a few example images (original, perturbation x10, adversarial)")
    p.set_defaults(func=cmd_audit)
