"""The headline benchmark's tables and plot, read from its finished cells.

Accuracy at budget (seeds merged, difference to the uniform baseline), ranking quality
(Kendall tau and Spearman rho against the from-scratch truth) and cost; :func:`report` writes
them to ``tables.md``, ``pareto.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from baselines import PRUNING, SCRATCH
from headline_settings import BASELINE, pct
from scipy import stats
from widthsearch.evaluate import plot_pareto
from widthsearch.search import format_macs
from widthsearch.supernet.checkpoint import write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from headline import Headline


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def accuracy_rows(bench: Headline) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Per (budget, method): the seeds' cells merged (mean top-1, values)."""
    cells, args = bench.cells, bench.args
    methods = [BASELINE] + [s for s in bench.strategies if s != BASELINE]
    rows = []
    for frac, budget in zip(bench.fractions, bench.budgets, strict=True):
        for method in [*methods, SCRATCH, PRUNING]:
            prefix = {SCRATCH: "scratch", PRUNING: "tp"}.get(method, f"ft-{method}")
            runs = [cells.get(f"{prefix}-{pct(frac)}-s{s}") for s in range(args.seeds)]
            runs = [r for r in runs if r is not None]
            if not runs:
                rows.append({"strategy": method, "budget_macs": budget, "fraction": frac})
                continue
            first = runs[0]
            ratios = first.get("ratios") or {}
            rows.append(
                {
                    "strategy": method,
                    "budget_macs": budget,
                    "fraction": frac,
                    "score": first.get("score"),
                    "top1": _mean([r["top1"] for r in runs]),
                    "top1_values": [r["top1"] for r in runs],
                    "macs": first["macs"],
                    "params": first["params"],
                    "latency_ms": first.get("latency_ms"),
                    "latency_ratio_b1": ratios.get("latency_batch1"),
                    "latency_ratio_b64": ratios.get("latency_batch64"),
                    "inheritance": (first.get("inheritance") or {}).get("chosen"),
                }
            )
    return rows, cells.get("full-scratch")


def accuracy_table(bench: Headline) -> str:
    rows, full = accuracy_rows(bench)
    seeds = bench.args.seeds
    lines = [
        "| budget | method | supernet score | test top-1"
        + (f" (mean of {seeds})" if seeds > 1 else "")
        + " | Δ vs uniform | MACs | params | latency b1 / full | latency b64 / full |"
        + (" top-1 per seed |" if seeds > 1 else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if seeds > 1 else ""),
    ]
    if full is not None:
        lines.append(
            f"| 100% | *full resnet20, from scratch* | — | {_fmt(full['top1'])} | — "
            f"| {format_macs(full['macs'])} | {format_macs(full['params'])} | 1.00 | 1.00 |"
            + (" |" if seeds > 1 else "")
        )
    base = {r["budget_macs"]: r.get("top1") for r in rows if r["strategy"] == BASELINE}
    for r in rows:
        top1, ref = r.get("top1"), base.get(r["budget_macs"])
        delta = "baseline" if r["strategy"] == BASELINE else "—"
        if r["strategy"] != BASELINE and top1 is not None and ref is not None:
            delta = f"{100 * (top1 - ref):+.2f} pt"
        macs = r.get("macs")
        macs_cell = "—" if macs is None else f"{format_macs(macs)} ({macs / bench.full_macs:.1%})"
        name = f"**{r['strategy']}**" if r["strategy"] == BASELINE else r["strategy"]
        cells = [
            f"{pct(r['fraction'])}%",
            name,
            _fmt(r.get("score")),
            _fmt(top1),
            delta,
            macs_cell,
            format_macs(r.get("params")),
            _fmt(r.get("latency_ratio_b1"), ".2f"),
            _fmt(r.get("latency_ratio_b64"), ".2f"),
        ]
        if seeds > 1:
            cells.append(", ".join(f"{v:.4f}" for v in r.get("top1_values", [])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranking_summary(bench: Headline) -> dict[str, Any] | None:
    """Kendall tau / Spearman rho of each supernet's scores against the from-scratch truth."""
    cells = bench.cells
    configs = cells.get("ranking-configs")
    if configs is None:
        return None
    truth = [cells.get(f"ranking-truth-{i:02d}") for i in range(len(configs["configs"]))]
    have = [i for i, t in enumerate(truth) if t is not None]
    if len(have) < 3:
        return None
    target = [truth[i]["top1"] for i in have]
    predictors: dict[str, list[float]] = {
        "MACs alone (reference)": [configs["configs"][i]["macs"] for i in have]
    }
    for trainer in ("bcnet", "sandwich"):
        scores = cells.get(f"ranking-scores-{trainer}")
        if scores is None:
            continue
        left = [scores["left"][i] for i in have]
        if trainer == "bcnet":
            right = [scores["right"][i] for i in have]
            predictors["BCNet: mean(left, right) (its search score)"] = [
                (a + b) / 2 for a, b in zip(left, right, strict=True)
            ]
            predictors["BCNet: left only"] = left
        else:
            predictors["sandwich: left (the side it trains)"] = left
    rows = []
    for name, values in predictors.items():
        tau = stats.kendalltau(values, target)
        rho = stats.spearmanr(values, target)
        rows.append(
            {
                "predictor": name,
                "kendall_tau": float(tau.statistic),
                "kendall_p": float(tau.pvalue),
                "spearman_rho": float(rho.statistic),
                "spearman_p": float(rho.pvalue),
            }
        )
    return {"configs": len(have), "rows": rows, "truth": target}


def ranking_table(bench: Headline) -> str:
    summary = ranking_summary(bench)
    if summary is None:
        return "(ranking cells not finished)"
    lines = [
        "| predictor of from-scratch test top-1 | Kendall tau (p) | Spearman rho (p) |",
        "|---|---:|---:|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['predictor']} | {r['kendall_tau']:+.3f} ({r['kendall_p']:.3f}) "
            f"| {r['spearman_rho']:+.3f} ({r['spearman_p']:.3f}) |"
        )
    truth = summary["truth"]
    lines.append(
        f"\n{summary['configs']} random configs (one per MACs quantile bin of 4,000 samples), "
        f"each trained from scratch for {bench.args.ranking_epochs} epochs; ground truth = "
        f"test top-1 ({min(truth):.4f} to {max(truth):.4f}). Supernet scores: held-out top-1 "
        "after BN recalibration, as the search sees them."
    )
    return "\n".join(lines)


def cost_table(bench: Headline) -> str:
    cells = bench.cells
    full = cells.get("full-scratch")
    base = full["train_seconds"] if full else None
    lines = [
        "| work | seconds | per epoch | vs full-network training |",
        "|---|---:|---:|---:|",
    ]

    def ratio(seconds: float | None) -> str:
        return "—" if seconds is None or not base else f"{seconds / base:.2f}x"

    if full:
        lines.append(
            f"| full resnet20, plain training, {full['epochs']} epochs "
            f"| {full['train_seconds']:.0f} | {full['seconds_per_epoch']:.1f} | 1.00x |"
        )
    for trainer in ("bcnet", "sandwich"):
        cell = cells.get(f"supernet-{trainer}")
        if cell:
            lines.append(
                f"| supernet, {trainer}, {cell['epochs']} epochs | {cell['train_seconds']:.0f} "
                f"| {cell['seconds_per_epoch']:.1f} | {ratio(cell['train_seconds'])} |"
            )
    for name in bench.strategies:
        cell = cells.get(f"search-{name}")
        if cell:
            call = cell["call"]
            lines.append(
                f"| search: {name}, {len(bench.budgets)} budgets in one call "
                f"({call['evaluations']} evaluations) | {call['seconds']:.1f} | — | "
                f"{ratio(call['seconds'])} |"
            )
    groups = {
        "fine-tune (extracted subnet, distilled)": "ft-",
        "fine-tune (Torch-Pruning net, distilled)": "tp-",
    }
    for label, prefix in groups.items():
        values = [
            json.loads(p.read_text())["finetune_seconds"]
            for p in sorted(cells.folder.glob(f"{prefix}*.json"))
        ]
        if values:
            med = statistics.median(values)
            lines.append(
                f"| {label}, {bench.args.finetune_epochs} epochs, median of {len(values)} "
                f"| {med:.0f} | {med / max(bench.args.finetune_epochs, 1):.1f} | {ratio(med)} |"
            )
    scratch = [json.loads(p.read_text()) for p in sorted(cells.folder.glob("scratch-*.json"))]
    if scratch:
        med = statistics.median(c["train_seconds"] for c in scratch)
        epochs = scratch[0]["epochs"]
        lines.append(
            f"| uniform net from scratch, {epochs} epochs, median of {len(scratch)} | {med:.0f} "
            f"| {med / epochs:.1f} | {ratio(med)} |"
        )
    truth = [json.loads(p.read_text()) for p in sorted(cells.folder.glob("ranking-truth-*.json"))]
    if truth:
        total = sum(c["train_seconds"] for c in truth)
        lines.append(
            f"| ranking ground truth, {len(truth)} configs x {bench.args.ranking_epochs} epochs "
            f"| {total:.0f} | — | {ratio(total)} |"
        )
    return "\n".join(lines)


def header(bench: Headline, command: str) -> str:
    args, cells = bench.args, bench.cells
    bc, sw, full = (cells.get(n) for n in ("supernet-bcnet", "supernet-sandwich", "full-scratch"))

    def per_epoch(cell: Mapping[str, Any] | None) -> str:
        return "—" if cell is None else f"{cell['seconds_per_epoch']:.1f} s"

    wall = sum(
        json.loads(p.read_text()).get("wall_seconds", 0) for p in cells.folder.glob("*.json")
    )
    return "\n".join(
        [
            "# Headline benchmark: resnet20 / Fashion-MNIST",
            "",
            f"Settings: {args.train_limit or 55000:,} training images, {args.heldout_size:,} "
            f"held-out (search and inheritance scores), "
            f"{'all 10,000' if not args.test_limit else f'{args.test_limit:,}'} test images "
            f"(final numbers only); supernets {args.supernet_epochs} epochs; fine-tune "
            f"{args.finetune_epochs} epochs (lr {bench.recipe.finetune.lr}, distilled); "
            f"from-scratch lr {args.scratch_lr}; evolution {args.trials} trials, random "
            f"{args.samples} samples/budget, relax {args.relax_steps} steps; scores on "
            f"{args.heldout_images} held-out + {args.calib_batches} x 250 calibration images; "
            f"{args.seeds} fine-tune seed(s); {torch.get_num_threads()} torch threads "
            "(latency: 1 thread, median).",
            f"Measured: BCNet {per_epoch(bc)}/epoch, sandwich {per_epoch(sw)}/epoch, plain "
            f"full-network training {per_epoch(full)}/epoch; all cells together "
            f"{wall / 60:.0f} min of wall time.",
            "",
            f"Command: `{command}`",
        ]
    )


def report(bench: Headline, command: str) -> str:
    """All tables as markdown; also writes tables.md and pareto.png into --out."""
    text = "\n".join(
        [
            header(bench, command),
            "",
            "## Accuracy at budget",
            "",
            "Strategies: searched on the BCNet supernet, extracted with the best inheritance "
            "(held-out), fine-tuned, distilled from the supernet. **uniform** = the uniform "
            f"subnet from the supernet; {SCRATCH} = the same widths from random init, trained "
            f"supernet + fine-tune epochs; {PRUNING} = full network trained from scratch, L1 "
            "magnitude pruning (MagnitudePruner, p=1, per-layer ratio bisected to the "
            "budget), fine-tuned like the others but distilled from its own full network. "
            "Latency: ratio to the full model timed in the same call.",
            "",
            accuracy_table(bench),
            "",
            "![top-1 vs MACs](pareto.png)",
            "",
            "## Ranking quality",
            "",
            ranking_table(bench),
            "",
            "## Cost",
            "",
            cost_table(bench),
        ]
    )
    if bench.cells.failed:
        text += f"\n\nFailed cells (see the log): {', '.join(bench.cells.failed)}"
    out = bench.out
    write_text_atomic(text + "\n", out / "tables.md")
    rows, full = accuracy_rows(bench)
    points = [r for r in rows if r.get("top1") is not None]
    if points:
        plot_pareto(
            points,
            out / "pareto.png",
            full=full,
            title="resnet20 / Fashion-MNIST: test top-1 vs MACs",
        )
    summary = ranking_summary(bench)
    write_json_atomic({"accuracy": rows, "full": full, "ranking": summary}, out / "summary.json")
    return text
