"""The warm-start benchmark's tables and plot (``benchmarks/warmstart.py``): accuracy per
method and budget over the finished seeds, the CPU cost of delivering several budgets, and
top-1 against MACs with error bars (``pareto.png``)."""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import NamedTuple

from cells import Cells
from widthsearch.evaluate import save_png


def pct(fraction: float) -> str:
    return f"{round(100 * fraction)}"


ROWS = [
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


class Point(NamedTuple):
    """One method at one budget over the seeds finished."""

    top1: float  # mean test top-1
    std: float  # its standard deviation (0 for one seed)
    macs: float  # mean MACs as a fraction of the full network's
    seeds: int


def point(
    cells: Cells, args: argparse.Namespace, full_macs: int, prefix: str, frac: float
) -> Point | None:
    """The method's finished cells at a budget (``None``: none finished)."""
    names = [
        f"{prefix}-s{s}" if prefix == "full" else f"{prefix}-{pct(frac)}-s{s}" for s in args.seeds
    ]
    docs = [d for d in map(cells.get, names) if d is not None and "top1" in d]
    if not docs:
        return None
    top = [d["top1"] for d in docs]
    return Point(
        statistics.mean(top),
        statistics.stdev(top) if len(top) > 1 else 0.0,
        statistics.mean(d["macs"] for d in docs) / full_macs,
        len(top),
    )


def table(cells: Cells, args: argparse.Namespace, full_macs: int) -> str:
    """The benchmark's table: test top-1 per method and budget (mean ± std over the seeds
    finished), then the cost table."""
    lines = header(args)
    for label, prefix in ROWS:
        cols = []
        for frac in args.budgets:
            p = point(cells, args, full_macs, prefix, frac)
            if p is None:
                cols.append("-")
                continue
            spread = f" ± {p.std:.4f}" if p.seeds > 1 else ""
            cols.append(f"{p.top1:.4f}{spread} ({100 * p.macs:.1f} %, n={p.seeds})")
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n\n" + sizes(cells, args) + costs(cells, args)


def sizes(cells: Cells, args: argparse.Namespace) -> str:
    """Params and measured latency per method and budget (``--part latency`` cells): mean
    params over the seeds, median latency as a fraction of the full network's; empty until
    some have finished."""
    lines = []
    for label, prefix in ROWS[1:]:
        cols = []
        for frac in args.budgets:
            names = (f"latency-{prefix}-{pct(frac)}-s{s}" for s in args.seeds)
            docs = [d for d in map(cells.get, names) if d is not None]
            if not docs:
                cols.append("-")
                continue
            params = statistics.mean(d["params"] for d in docs)
            ratio = statistics.median(d["latency_ratio"] for d in docs)
            cols.append(f"{params / 1e3:.1f}k, {ratio:.2f}x")
        if any(c != "-" for c in cols):
            lines.append(f"| {label} | " + " | ".join(cols) + " |")
    if not lines:
        return ""
    title = "Params and latency (batch 32, one thread, fraction of the full network's time):"
    return title + "\n\n" + "\n".join(header(args) + lines) + "\n\n"


def header(args: argparse.Namespace) -> list[str]:
    """A table's first two lines: the method, then one column per budget."""
    head = " | ".join(f"{pct(f)} % MACs" for f in args.budgets)
    return [f"| method | {head} |", "|---" + "|---:" * len(args.budgets) + "|"]


def pareto(cells: Cells, args: argparse.Namespace, full_macs: int, path: Path) -> Path:
    """Test top-1 against MACs, one line per method over the budgets, error bars one standard
    deviation over the seeds, the trained network as a star; PNG, written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, prefix in ROWS:
        points = [point(cells, args, full_macs, prefix, f) for f in args.budgets]
        points = [p for p in points if p is not None]
        if not points:
            continue
        if prefix == "full":
            p = points[0]
            ax.errorbar(
                [100 * p.macs], [p.top1], yerr=[p.std], fmt="*", ms=14, color="black", label=label
            )
            continue
        points.sort(key=lambda p: p.macs)
        ax.errorbar(
            [100 * p.macs for p in points],
            [p.top1 for p in points],
            yerr=[p.std for p in points],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.set_xlabel("MACs (% of the full network)")
    ax.set_ylabel("test top-1")
    seeds = ", ".join(map(str, args.seeds))
    ax.set_title(f"{args.model} / Fashion-MNIST, seeds {seeds} (mean ± std)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="x-small")
    return save_png(fig, path)


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
