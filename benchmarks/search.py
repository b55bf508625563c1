"""Search benchmark: every strategy at 25/50/75 % of the full MACs, next to `uniform`.

Prints a markdown table (supernet score, evaluations, seconds per strategy and budget, and
the score difference to the uniform baseline at the same budget), the evaluator's
throughput as a ratio to plain full-width inference of the same model on the same images in
the same process, and the exact command that produced it.

    .venv/bin/python benchmarks/search.py runs/quick/supernet.pt [--trials N] [--strategy S ...]

Settings (held-out split, scoring sizes, trials, relax steps, random samples) come from the
recipe stored in the checkpoint, as for `widthsearch search`; flags override them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
from widthsearch.recipes.search_flags import search_inputs
from widthsearch.search import format_macs, get_strategy, list_strategies, resolve_budgets
from widthsearch.supernet.checkpoint import load_supernet

FRACTIONS = (0.25, 0.5, 0.75)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("supernet", help="supernet checkpoint (supernet.pt)")
    parser.add_argument("--strategy", action="append", help="default: all registered")
    parser.add_argument("--budget", action="append", help="default: 0.25, 0.5, 0.75")
    parser.add_argument("--trials", type=int, help="evolution trials (default: the recipe's)")
    parser.add_argument("--samples", type=int, help="random samples (default: the recipe's)")
    parser.add_argument("--relax-steps", type=int, help="relax steps (default: the recipe's)")
    parser.add_argument("--heldout-images", type=int, help="default: the recipe's")
    parser.add_argument("--calib-batches", type=int, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sn, payload = load_supernet(args.supernet)
    search = (payload.get("recipe") or {}).get("search") or {}
    budgets = resolve_budgets(sn, args.budget or list(FRACTIONS))
    strategies = args.strategy or list_strategies()
    if "uniform" not in strategies:
        strategies.append("uniform")
    # the flags `widthsearch search` has, read as it reads them (no --batch-size: the recipe's)
    options, evaluator = search_inputs(
        sn, payload, args, strategies=strategies, search=search, seed=args.seed
    )

    rows: dict[str, list] = {}
    totals: dict[str, tuple[int, float]] = {}
    for name in strategies:
        evaluator.clear_cache()  # each strategy pays for its own evaluations
        before = evaluator.evaluations
        start = time.perf_counter()
        results = get_strategy(name).search(
            sn, evaluator, budgets=budgets, seed=args.seed, **options.get(name, {})
        )
        totals[name] = (evaluator.evaluations - before, time.perf_counter() - start)
        rows[name] = results
        print(f"# {name}: {totals[name][0]} evaluations, {totals[name][1]:.1f} s", file=sys.stderr)

    full = sn.macs()
    print(
        f"Search on `{args.supernet}` ({sn.meta.get('model', '?')}, {format_macs(full)} MACs, "
        f"{evaluator.num_images} held-out images, {evaluator.num_calib} calibration images "
        f"per side, seed {args.seed})\n"
    )
    print("| strategy | budget | MACs | score | vs uniform | evaluations | seconds |")
    print("|---|---|---|---|---|---|---|")
    uniform = {r.budget_macs: r.score for r in rows["uniform"]}
    for name in strategies:
        for r in rows[name]:
            print(
                f"| {name} | {r.budget_macs / full:.0%} ({format_macs(r.budget_macs)}) "
                f"| {format_macs(r.macs)} ({r.macs / r.budget_macs:.1%}) | {r.score:.4f} "
                f"| {r.score - uniform[r.budget_macs]:+.4f} | {r.evaluations} | {r.seconds:.1f} |"
            )
    print("\nPer call (all budgets at once):\n")
    print("| strategy | evaluations | seconds |")
    print("|---|---|---|")
    for name in strategies:
        print(f"| {name} | {totals[name][0]} | {totals[name][1]:.1f} |")

    plain = evaluator.plain_images_per_second(repeats=3)
    rate = evaluator.images_per_second
    per_eval = evaluator.seconds / max(evaluator.evaluations, 1)
    print(
        f"\nEvaluator: {rate:.0f} images/s (calibration + scoring, both sides, subnets) vs "
        f"{plain:.0f} images/s plain full-width inference on the same images: "
        f"ratio {rate / plain:.2f}; {per_eval:.3f} s per evaluation "
        f"({evaluator.evaluations} evaluations, torch threads {torch.get_num_threads()})"
    )
    exe = os.path.relpath(sys.executable)
    exe = sys.executable if exe.startswith("..") else exe
    print(f"\nCommand: `{shlex.join([exe, *sys.argv])}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
