"""The report: a markdown table (strategy x budget) and a Pareto plot (top-1 vs MACs).

Rows are plain dicts so the pipeline fills them from whatever it measured::

    {"strategy": "evolution", "budget_macs": 20275712, "score": 0.91, "top1": 0.89,
     "macs": 20101120, "params": 135000, "latency_ms": {"batch1": 1.2, "batch64": 30.1}}

``score`` is the supernet's held-out score from the search, ``top1`` the fine-tuned test
top-1; missing values print as "—". At every budget the baseline strategy (``uniform``)
comes first and every row shows its top-1 difference to it: that difference is what a
search strategy is worth. The MACs column says how much of a MACs budget each answer uses,
so a difference bought with more MACs (uniform widths often stop well below the budget)
reads as such.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from widthsearch.search import format_macs
from widthsearch.supernet.checkpoint import atomic_path, write_text_atomic

__all__ = [
    "PARETO_NAME",
    "REPORT_NAME",
    "format_table",
    "plot_pareto",
    "save_png",
    "write_report",
]

REPORT_NAME = "report.md"
PARETO_NAME = "pareto.png"


def _latency(row: Mapping[str, Any], batch: int) -> float | None:
    lat = row.get("latency_ms")
    if isinstance(lat, Mapping):
        value = lat.get(f"batch{batch}")
        return None if value is None else float(value)
    if isinstance(lat, (int, float)) and batch == 1:
        return float(lat)
    return None


def _full_label(full: Mapping[str, Any]) -> str:
    """The reference row's name: the trained network a warm start began from, else the
    supernet's full width."""
    return "trained network" if full.get("network") == "trained" else "full model"


def _num(value: Any, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _sorted(rows: Sequence[Mapping[str, Any]], baseline: str) -> list[Mapping[str, Any]]:
    order = {name: i for i, name in enumerate(dict.fromkeys(str(r["strategy"]) for r in rows))}
    return sorted(
        rows,
        key=lambda r: (
            _budget_key(r),
            r["strategy"] != baseline,
            order[str(r["strategy"])],
        ),
    )


def _budget_key(r: Mapping[str, Any]) -> tuple[float, float]:
    """Orders and groups rows by budget: MACs budgets, then latency budgets (``budget_ms``)."""
    return (float(r.get("budget_ms") or 0.0), float(r.get("budget_macs") or 0))


def format_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    full: Mapping[str, Any] | None = None,
    baseline: str = "uniform",
) -> str:
    """The markdown table: one line per (budget, strategy), baseline first at each budget."""
    for r in rows:
        if "strategy" not in r:
            raise ValueError(f"report row without a strategy: {dict(r)}")
    full_macs = (full or {}).get("macs")
    base_top1 = {_budget_key(r): r.get("top1") for r in rows if r["strategy"] == baseline}
    header = [
        "budget",
        "strategy",
        "supernet score",
        "top-1 (fine-tuned)",
        f"Δ top-1 vs {baseline}",
        "MACs",
        "params",
        "latency b1 (ms)",
        "latency b64 (ms)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    if full:
        lines.append(
            f"| full | *{_full_label(full)}* | — | "
            + " | ".join(
                [
                    _num(full.get("top1"), ".4f"),
                    "—",
                    format_macs(full.get("macs")),
                    format_macs(full.get("params")),
                    _num(_latency(full, 1), ".3f"),
                    _num(_latency(full, 64), ".3f"),
                ]
            )
            + " |"
        )
    for r in _sorted(rows, baseline):
        budget = int(r.get("budget_macs") or 0)
        label = format_macs(budget) if budget else "—"
        if budget and full_macs:
            label += f" ({budget / full_macs:.0%})"
        if r.get("budget_ms") is not None:  # a latency budget (predicted)
            label = f"{float(r['budget_ms']):.3f} ms"
        top1, base = r.get("top1"), base_top1.get(_budget_key(r))
        delta = "—"
        if r["strategy"] == baseline:
            delta = "baseline" if base is not None else "—"
        elif top1 is not None and base is not None:
            delta = f"{100 * (float(top1) - float(base)):+.2f} pt"
        name = f"**{r['strategy']}**" if r["strategy"] == baseline else str(r["strategy"])
        macs = format_macs(r.get("macs"))
        if budget and r.get("budget_ms") is None and r.get("macs") is not None:
            macs += f" ({float(r['macs']) / budget:.0%} of budget)"
        cells = [
            label,
            name,
            _num(r.get("score"), ".4f"),
            _num(top1, ".4f"),
            delta,
            macs,
            format_macs(r.get("params")),
            _num(_latency(r, 1), ".3f"),
            _num(_latency(r, 64), ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    full: Mapping[str, Any] | None = None,
    title: str = "",
    baseline: str = "uniform",
) -> Path:
    """Top-1 (fine-tuned; the supernet score when no row has one) vs MACs, one series per
    strategy, the full model as a star; written atomically as PNG (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    key = "top1" if any(r.get("top1") is not None for r in rows) else "score"
    fig = Figure(figsize=(7, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in dict.fromkeys(str(r["strategy"]) for r in rows):
        points = sorted(
            (float(r["macs"]), float(r[key]))
            for r in rows
            if str(r["strategy"]) == name and r.get("macs") is not None and r.get(key) is not None
        )
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        style = {"linestyle": "--", "color": "0.4"} if name == baseline else {}
        ax.plot([x / 1e6 for x in xs], ys, marker="o", label=name, **style)
    if full and full.get("macs") is not None and full.get("top1") is not None:
        ax.plot(
            [float(full["macs"]) / 1e6],
            [float(full["top1"])],
            marker="*",
            markersize=14,
            color="black",
            linestyle="none",
            label=_full_label(full),
        )
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("test top-1 (fine-tuned)" if key == "top1" else "supernet score (held-out)")
    ax.set_title(title or "accuracy vs MACs")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    return save_png(fig, path)


def save_png(fig: Any, path: str | os.PathLike[str]) -> Path:
    """A matplotlib figure as PNG at ``path``, laid out tight, written atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return Path(path)


def write_report(
    rows: Sequence[Mapping[str, Any]],
    *,
    out_dir: str | os.PathLike[str],
    title: str = "widthsearch report",
    full: Mapping[str, Any] | None = None,
    baseline: str = "uniform",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.md`` and ``pareto.png`` into ``out_dir`` (each atomically).

    Args:
        rows: One dict per (strategy, budget): ``strategy``, ``budget_macs``, ``score``,
            ``top1``, ``macs``, ``params``, ``latency_ms`` (ms at batch 1, or
            ``{"batch1", "batch64"}``). Missing values print as "—".
        out_dir: Output folder (created).
        title: Report heading and plot title.
        full: The full model's ``top1``, ``macs``, ``params``, ``latency_ms`` (reference row
            and star in the plot).
        baseline: Strategy listed first at each budget and compared against.
        notes: Extra markdown lines after the table (recipe, commands, ...).

    Returns:
        ``{"report": path, "pareto": path}``.
    """
    if not rows:
        raise ValueError("no rows to report")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report folder {out} is a file")
    table = format_table(rows, full=full, baseline=baseline)
    pareto = plot_pareto(rows, out / PARETO_NAME, full=full, title=title, baseline=baseline)
    strategies = list(dict.fromkeys(str(r["strategy"]) for r in rows))
    budgets = sorted({_budget_key(r) for r in rows})
    text = [
        f"# {title}",
        "",
        f"{len(strategies)} strategies x {len(budgets)} budgets. *Supernet score*: held-out "
        "top-1 of the subnet inside the supernet (search's estimate); *top-1*: test top-1 of "
        "the extracted, fine-tuned subnet. Latency: CPU median.",
        "",
        table,
        "",
        f"![top-1 vs MACs]({PARETO_NAME})",
    ]
    if notes:
        text += ["", *notes]
    report = write_text_atomic("\n".join(text) + "\n", out / REPORT_NAME)
    return {"report": report, "pareto": pareto}
