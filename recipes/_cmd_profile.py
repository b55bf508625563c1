"""`widthsearch profile SUPERNET --threads N --batch B --out LAT.json`: a latency table.

Times every slimmable layer of the supernet over its width choices on this machine (see
:func:`widthsearch.evaluate.profile_latency` for what is measured and what is not) and
writes the table atomically; `search --budget 12ms --latency-table LAT.json` reads it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from widthsearch.evaluate.profile import profile_latency
from widthsearch.recipes._runtime_flags import runtime_options
from widthsearch.search import format_ms, write_json_atomic
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.runtime import local_runtime


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "profile",
        help="measure a supernet's per-layer latency table on this machine",
        description="Time every slimmable layer over its width choices; writes LAT.json.",
    )
    p.add_argument("supernet", help="supernet checkpoint (supernet.pt from `widthsearch train`)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--batch", type=int, default=1, help="batch size of every forward (default 1)")
    p.add_argument(
        "--seconds",
        type=float,
        default=0.05,
        help="minimum measuring time per table entry and per whole subnet (default 0.05)",
    )
    p.add_argument(
        "--sample-widths",
        type=int,
        metavar="K",
        help="time K evenly spaced width choices per group (both ends) and interpolate the "
        "rest: for models whose full table takes too long (default: every choice)",
    )
    p.add_argument("--out", required=True, help="output latency table (JSON)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.threads < 1 or args.batch < 1:
        raise ValueError("--threads and --batch must be >= 1")
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    if args.sample_widths is not None and args.sample_widths < 2:
        raise ValueError(f"--sample-widths must be >= 2 (both ends), got {args.sample_widths}")
    out = Path(args.out)
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory")
    sn, payload = load_supernet(args.supernet, trust_pickle=args.trust_pickle)
    recipe = payload.get("recipe") if isinstance(payload.get("recipe"), dict) else {}
    runtime = local_runtime(**runtime_options(args, recipe.get("run")))
    table = profile_latency(
        sn,
        threads=args.threads,
        batch=args.batch,
        seconds=args.seconds,
        sample_widths=args.sample_widths,
        runtime=runtime,
    )
    write_json_atomic(table.to_dict(), out)
    for row in table.calibration:
        print(
            f"{row['config']:<13} measured {format_ms(row['measured_ms'])}  "
            f"predicted {format_ms(row['predicted_ms'])}"
        )
    sampled = (
        f", {table.sample_widths} choices per group timed (the rest interpolated)"
        if table.sample_widths
        else ""
    )
    print(
        f"{table.describe()}: {len(table.layers)} layers, overhead {format_ms(table.overhead_ms)}, "
        f"scale {table.scale:.3f}{sampled}, {table.seconds:.1f} s"
    )
    print(f"wrote {out}")
    return 0
