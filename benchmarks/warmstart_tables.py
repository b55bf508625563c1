"""The warm-start benchmark's tables (``benchmarks/warmstart.py``): accuracy per method and
budget over the finished seeds, and the CPU cost of delivering several budgets."""

from __future__ import annotations

import argparse
import statistics

from cells import Cells


def pct(fraction: float) -> str:
    return f"{round(100 * fraction)}"


def table(cells: Cells, args: argparse.Namespace, full_macs: int) -> str:
    """The benchmark's table: test top-1 per method and budget (mean ± std over the seeds
    finished), then the cost table."""
    rows = [
        ("trained full network", "full"),
        ("best searched subnet (warm supernet, fine-tuned)", "ft-best"),
        ("best searched subnet of a supernet from random weights, the same way", "ft-random"),
        ("second-best searched subnet, the same way", "ft-second"),
        ("uniform subnet of the warm supernet, the same way", "ft-uniform"),
        ("same widths as the best, weights from the trained network", "ft-trained"),
        ("Torch-Pruning L1 of the same network, same fine-tune", "tp"),
        ("Torch-Pruning Taylor (global) of the same network, same fine-tune", "tp-taylor"),
        ("uniform widths from scratch", "scratch"),
        ("searched widths from scratch (control)", "scratch-searched"),
    ]
    head = " | ".join(f"{pct(f)} % MACs" for f in args.budgets)
    lines = [f"| method | {head} |", "|---" + "|---:" * len(args.budgets) + "|"]
    for label, prefix in rows:
        cols = []
        for frac in args.budgets:
            docs = [
                cells.get(f"{prefix}-s{s}" if prefix == "full" else f"{prefix}-{pct(frac)}-s{s}")
                for s in args.seeds
            ]
            docs = [d for d in docs if d is not None and "top1" in d]
            if not docs:
                cols.append("-")
                continue
            top = [d["top1"] for d in docs]
            macs = statistics.mean(d["macs"] for d in docs) / full_macs
            spread = f" ± {statistics.stdev(top):.4f}" if len(top) > 1 else ""
            cols.append(f"{statistics.mean(top):.4f}{spread} ({100 * macs:.1f} %, n={len(top)})")
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n\n" + costs(cells, args)


def costs(cells: Cells, args: argparse.Namespace) -> str:
    """CPU seconds to deliver N budgets: what each method pays once and per budget (the
    median of its finished cells' wall time, one thread each), totals and break-even."""

    def median(prefix: str, per_budget: bool = True) -> float | None:
        names = [
            f"{prefix}-{pct(f)}-s{s}" if per_budget else f"{prefix}-s{s}"
            for f in (args.budgets if per_budget else [None])
            for s in args.seeds
        ]
        seconds = [d["wall_seconds"] for d in map(cells.get, names) if d]
        return statistics.median(seconds) if seconds else None

    full, supernet, ft, tp, scratch = (
        median("full", False),
        median("supernet", False),
        median("ft-best"),
        median("tp"),
        median("scratch"),
    )
    searches = [cells.get(f"search-s{s}") for s in args.seeds]
    searches = [d for d in searches if d]
    if not searches or None in (full, supernet, ft, tp, scratch):
        return "(cost table: cells not finished)\n"
    # one search answers all its budgets at once: its share per budget
    per_search = statistics.median(
        d["wall_seconds"] / len({r["budget_macs"] for r in d["results"]}) for d in searches
    )
    methods = {
        "widthsearch (pretrain + supernet once; search + fine-tune per budget)": (
            full + supernet,
            per_search + ft,
        ),
        "Torch-Pruning (pretrain once; prune + fine-tune per budget)": (full, tp),
        "uniform from scratch (train per budget)": (0.0, scratch),
    }
    lines = [
        "| method | once (s) | per budget (s) | 1 budget | 3 budgets | 10 budgets |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (once, each) in methods.items():
        totals = " | ".join(f"{once + n * each:,.0f}" for n in (1, 3, 10))
        lines.append(f"| {name} | {once:,.0f} | {each:,.0f} | {totals} |")
    ours_once, ours_each = methods[next(iter(methods))]
    for name, (once, each) in list(methods.items())[1:]:
        gain = each - ours_each
        if gain > 0 and ours_once > once:
            verdict = f"cheaper from {int((ours_once - once) / gain) + 1} budgets on"
        else:
            verdict = "never cheaper" if ours_once >= once else "always cheaper"
        lines.append(f"\nAgainst {name.split(' (')[0]}: widthsearch is {verdict}.")
    return "\n".join(lines) + "\n"
