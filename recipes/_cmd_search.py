"""`widthsearch search SUPERNET --strategy S ... --budget B ...`: widths for many budgets.

Settings come from the recipe stored in the checkpoint (the held-out split training left
out, scoring sizes, trials); flags override the scoring sizes and trials. Every input is
checked before any data is loaded, and the JSON is written atomically at the very end, so a
bad input or an interrupted search never leaves a half-written file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from widthsearch.recipes._latency_flags import (
    add_latency_flags,
    add_limit_flags,
    constraints_from_args,
)
from widthsearch.recipes._runtime_flags import runtime_options
from widthsearch.recipes.search_flags import search_inputs
from widthsearch.search import (
    SearchDocument,
    format_macs,
    format_ms,
    get_strategy,
    list_strategies,
    resolve_budgets,
    search_widths,
    write_json_atomic,
)
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.runtime import local_runtime


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="search per-group widths under MACs budgets on a trained supernet",
        description="Search widths for every budget with every strategy; writes one JSON.",
    )
    p.add_argument("supernet", help="supernet checkpoint (supernet.pt from `widthsearch train`)")
    p.add_argument(
        "--strategy",
        action="append",
        metavar="S",
        help=f"strategy, repeatable (default: the recipe's); one of {', '.join(list_strategies())}",
    )
    p.add_argument(
        "--budget",
        action="append",
        metavar="B",
        help="budget, repeatable: MACs as a fraction of the full model (0.5, 50%%) or absolute "
        "(20M, 1.5G, 300k, 123456), or predicted latency (12ms, 800us; needs "
        "--latency-table); default: the recipe's",
    )
    p.add_argument("--out", help="output JSON (default: search.json next to the supernet)")
    p.add_argument("--storage", help="Optuna storage for evolution: sqlite:///F.db or F.log")
    p.add_argument("--seed", type=int, help="seed of every strategy (default: the recipe's)")
    p.add_argument("--trials", type=int, help="evolution: total Optuna trials")
    p.add_argument("--samples", type=int, help="random: configs tried per budget")
    p.add_argument("--relax-steps", type=int, help="relax: gradient steps")
    p.add_argument("--heldout-images", type=int, help="held-out images per score")
    p.add_argument("--calib-batches", type=int, help="BN recalibration batches per score")
    p.add_argument("--batch-size", type=int, help="batch size for scoring and calibration")
    add_limit_flags(p)
    add_latency_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag in ("trials", "samples", "heldout_images", "calib_batches", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.relax_steps is not None and args.relax_steps < 0:
        raise ValueError(f"--relax-steps must be >= 0, got {args.relax_steps}")
    # cheap checks first: checkpoint, strategies, budgets -- before any data is loaded
    sn, payload = load_supernet(args.supernet, trust_pickle=args.trust_pickle)
    recipe = payload.get("recipe") if isinstance(payload.get("recipe"), dict) else {}
    runtime = local_runtime(**runtime_options(args, recipe.get("run")))  # one process
    search = recipe.get("search") if isinstance(recipe.get("search"), dict) else {}
    strategies = args.strategy or list(search.get("strategies") or ["bisection", "uniform"])
    for name in strategies:
        get_strategy(name)
    raw_budgets = args.budget or list(search.get("budgets") or [0.5])
    constraints = constraints_from_args(args, sn, raw_budgets, search)
    budgets = resolve_budgets(sn, raw_budgets, constraints=constraints)
    seed = args.seed if args.seed is not None else int(search.get("seed", 0))
    out = Path(args.out) if args.out else Path(args.supernet).with_name("search.json")
    if out.exists() and out.is_dir():
        raise ValueError(f"--out {out} is a directory")

    options, evaluator = search_inputs(
        sn, payload, args, strategies=strategies, search=search, seed=seed, runtime=runtime
    )
    doc = search_widths(
        sn,
        evaluator,
        strategies=strategies,
        budgets=budgets,
        seed=seed,
        storage=args.storage,
        options=options,
        supernet_path=str(args.supernet),
        constraints=constraints,
    )
    write_json_atomic(doc.to_dict(), out)
    print(format_table(doc))
    print(f"wrote {out}")
    return 0


def format_table(doc: SearchDocument) -> str:
    """The answers as a plain-text table (strategy x budget)."""
    full = doc.full_macs
    full_ms = doc.full_latency_ms
    latency = full_ms is not None
    header = ("strategy", "budget", "MACs", "of budget", "params", "score", "evals", "seconds")
    if latency:
        header = (*header[:3], "latency", *header[3:])
    rows = [header]
    for r in doc.results:
        if r.budget_ms is not None:
            budget = f"{format_ms(r.budget_ms)} ({r.budget_ms / full_ms:.0%})"
            used = f"{r.latency_ms / r.budget_ms:.1%}"
        else:
            budget = f"{format_macs(r.budget_macs)} ({r.budget_macs / full:.0%})"
            used = f"{r.macs / r.budget_macs:.1%}"
        row = (
            r.strategy,
            budget,
            format_macs(r.macs),
            used,
            format_macs(r.params),
            f"{r.score:.4f}",
            str(r.evaluations),
            f"{r.seconds:.1f}",
        )
        if latency:
            row = (*row[:3], format_ms(r.latency_ms), *row[3:])
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    ev = doc.evaluator
    if ev is not None:  # the evaluator's figures, as recorded (a search document has them)
        lines.append(
            f"evaluator: {ev['evaluations']} evaluations, {ev['images_per_second']:.0f} images/s "
            f"({ev['heldout_images']} held-out + {ev['calib_images']} calibration images per side)"
        )
    return "\n".join(lines)
