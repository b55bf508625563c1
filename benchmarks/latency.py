"""Latency tables: how well they predict, what they cost to build, and what they buy.

Two parts, each resumable per cell (``OUT/cells/*.json``; ``--report`` only reprints):

``--part error``: for each model, batch and thread count, build the model's latency table
(``profile_latency``, timed) and compare its predictions with the measured latency of
``--subnets`` random extracted subnets (``torch.utils.benchmark`` medians): median and 90th
percentile relative error, Spearman rho of predicted against measured, and the rho of the
MACs count against measured (what a MACs budget assumes). Weights do not matter for timing,
so the supernets are the models' own random initialisation.

``--part accuracy``: on a trained supernet (resnet20 on Fashion-MNIST by default), for each
latency budget (fractions of the full network's predicted latency) the latency-searched
subnet next to the MACs-searched subnet of the same *measured* latency (its MACs budget
bisected until the measured latencies agree within ``--match``), both by the same strategy;
accuracy is the supernet score on the held-out split (BN recalibrated, both sides), and,
with ``--finetune-epochs N``, test top-1 after fine-tuning each subnet as the pipeline does.

    .venv/bin/python benchmarks/latency.py --part error --threads 1
    .venv/bin/python benchmarks/latency.py --part accuracy --supernet SUPERNET.pt
    .venv/bin/python benchmarks/latency.py --report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cells import Cells, log
from scipy import stats
from widthsearch.evaluate.measure import measure_latency
from widthsearch.evaluate.profile import interpolate_grid, profile_latency, sample_indices
from widthsearch.search import build_evaluator, get_strategy, search_options
from widthsearch.search.constraints import NS_PER_MS, Constraints
from widthsearch.search.latency import LatencyTable, LayerLatency
from widthsearch.supernet.checkpoint import load_supernet, write_json_atomic
from widthsearch.supernet.spec import SupernetSpec

MODELS = {  # name -> (input size, input channels, classes)
    "resnet20": (28, 1, 10),
    "tv:mobilenet_v2": (224, 3, 1000),
    "tv:resnet50": (224, 3, 1000),
}
DEFAULT_SUPERNET = "benchmarks/results/warmstart/work/s0/supernet.pt"


def error_cell(model: str, *, batch: int, threads: int, args: argparse.Namespace) -> dict:
    size, chans, classes = MODELS[model]
    torch.manual_seed(args.seed)
    sn = SupernetSpec(model=model, num_classes=classes, in_chans=chans, input_size=size).build()
    torch.set_num_threads(threads)
    table = profile_latency(
        sn,
        threads=threads,
        batch=batch,
        seconds=args.table_seconds,
        sample_widths=args.sample_widths,
        progress=False,
    )
    tables = args.out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    name = cell_name(model, batch, threads, args.sample_widths)
    write_json_atomic(table.to_dict(), tables / f"{name}.json")
    predictor = table.bind(sn)
    timed = {g: len(sample_indices(len(c), args.sample_widths)) for g, c in table.choices.items()}
    example = torch.randn(batch, chans, size, size)
    rng = np.random.default_rng(args.seed + 1)  # not the table's own calibration subnets
    configs = [sn.space.sample(rng) for _ in range(args.subnets)]
    modules = [sn.extract(cfg).eval() for cfg in configs]
    # rounds over all subnets, the fastest round per subnet (as timeit advises): a burst of
    # load elsewhere on this shared machine then slows some rounds, not the figure
    times = [
        [
            measure_latency(m, example, min_run_time=args.measure_seconds, threads=threads)
            for m in modules
        ]
        for _ in range(args.rounds)
    ]
    rows = [
        {
            "macs": int(sn.macs(cfg)),
            "predicted_ms": round(float(predictor.predict(sn.widths_vector(cfg))), 6),
            "measured_ms": round(float(np.min(column)), 6),
            "rounds_ms": [round(t, 6) for t in column],
        }
        for cfg, column in zip(configs, zip(*times, strict=True), strict=True)
    ]
    return {
        "model": model,
        "batch": batch,
        "threads": threads,
        "table_seconds": round(table.seconds, 1),
        "table_entries": sum(int(np.size(t.ms)) for t in table.layers),
        "sample_widths": table.sample_widths,
        "rounds": args.rounds,
        "timed_entries": sum(int(np.prod([timed[g] for g in t.groups])) for t in table.layers),
        "full_predicted_ms": round(float(predictor.predict(sn.widths_vector(sn.space.max()))), 4),
        **error_figures(rows),
        "subnets": rows,
    }


def error_figures(rows: list[dict]) -> dict[str, float]:
    predicted = np.array([r["predicted_ms"] for r in rows])
    measured = np.array([r["measured_ms"] for r in rows])
    macs = np.array([r["macs"] for r in rows])
    relative = np.abs(predicted - measured) / measured
    return {
        "median_rel_error": round(float(np.median(relative)), 4),
        "p90_rel_error": round(float(np.percentile(relative, 90)), 4),
        "spearman_rho": round(float(stats.spearmanr(predicted, measured).statistic), 4),
        "macs_spearman_rho": round(float(stats.spearmanr(macs, measured).statistic), 4),
        **repeatability(rows),
    }


def repeatability(rows: list[dict]) -> dict[str, float]:
    """How well the measurement agrees with itself: the median over subnets of the spread of
    their rounds (slowest / fastest - 1), and the median Spearman rho of one round against
    another (the fastest of several rounds, which the table is compared with, agrees better)."""
    rounds = np.array([r["rounds_ms"] for r in rows])
    pairs = [
        stats.spearmanr(rounds[:, i], rounds[:, j]).statistic
        for i in range(rounds.shape[1])
        for j in range(i + 1, rounds.shape[1])
    ]
    return {
        "round_spread": round(float(np.median(rounds.max(1) / rounds.min(1) - 1)), 4),
        "rounds_rho": round(float(np.median(pairs)), 4) if pairs else float("nan"),
    }


def cell_name(model: str, batch: int, threads: int, sample_widths: int | None = None) -> str:
    sampled = f"-s{sample_widths}" if sample_widths else ""
    return f"{model.replace(':', '_')}-b{batch}-t{threads}{sampled}"


def part_error(args: argparse.Namespace, cells: Cells) -> None:
    for threads in args.threads:
        for model in args.models:
            for batch in args.batches:
                name = "error-" + cell_name(model, batch, threads, args.sample_widths)
                cells.run(
                    name,
                    lambda m=model, b=batch, t=threads: error_cell(
                        m, batch=b, threads=t, args=args
                    ),
                )


def sampling_cell(error: dict, *, sample: int, args: argparse.Namespace) -> dict:
    """The interpolation's own error with the timings held fixed: an error cell's full table
    cut to ``sample`` choices per group and filled back by ``profile``'s
    interpolation, its predictions of the cell's subnets against the full table's."""
    model, batch, threads = error["model"], error["batch"], error["threads"]
    size, chans, classes = MODELS[model]
    path = args.out / "tables" / f"{cell_name(model, batch, threads)}.json"
    table = LatencyTable.from_dict(json.loads(path.read_text()))
    keep = {g: sample_indices(len(c), sample) for g, c in table.choices.items()}
    cut = dataclasses.replace(
        table,
        layers=[
            LayerLatency(
                t.name,
                t.groups,
                interpolate_grid(
                    np.asarray(t.ms),
                    [table.choices[g] for g in t.groups],
                    [keep[g] for g in t.groups],
                ).tolist(),
            )
            for t in table.layers
        ],
    )
    sn = SupernetSpec(model=model, num_classes=classes, in_chans=chans, input_size=size).build()
    rng = np.random.default_rng(args.seed + 1)  # the error cell's subnets
    configs = [sn.space.sample(rng) for _ in range(len(error["subnets"]))]
    if [sn.macs(c) for c in configs] != [r["macs"] for r in error["subnets"]]:
        raise RuntimeError(f"{path}: the error cell's subnets were drawn with another seed")
    vectors = np.stack([sn.widths_vector(c) for c in configs])
    full, sampled = table.bind(sn).predict(vectors), cut.bind(sn).predict(vectors)
    change = np.abs(sampled - full) / full
    rows = [
        {**r, "predicted_ms": round(float(p), 6)}
        for r, p in zip(error["subnets"], sampled, strict=True)
    ]
    return {
        "model": model,
        "batch": batch,
        "threads": threads,
        "sample_widths": sample,
        "median_change": round(float(np.median(change)), 4),
        "max_change": round(float(np.max(change)), 4),
        "rho_full_vs_sampled": round(float(stats.spearmanr(full, sampled).statistic), 4),
        "full_table": {k: error[k] for k in ("median_rel_error", "spearman_rho")},
        "sampled_table": {
            k: v
            for k, v in error_figures(rows).items()
            if k in ("median_rel_error", "spearman_rho")
        },
    }


def part_sampling(args: argparse.Namespace, cells: Cells) -> None:
    sample = args.sample_widths or 4
    for path in sorted(cells.folder.glob("error-*.json")):
        error = cells.get(path.stem)
        name = cell_name(error["model"], error["batch"], error["threads"])
        if path.stem != f"error-{name}":
            continue  # a sampled table or a rerun kept beside its cell: full tables only
        cells.run(
            f"sampling-{name}-s{sample}",
            lambda e=error: sampling_cell(e, sample=sample, args=args),
        )


class Matcher:
    """Searches one supernet under a latency or a MACs budget and measures the answers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sn, payload = load_supernet(args.supernet)
        self.sn.eval()
        self.args = args
        torch.set_num_threads(args.accuracy_threads)
        table_path = args.out / "tables" / f"accuracy-b{args.accuracy_batch}.json"
        if table_path.is_file():
            self.table = LatencyTable.from_dict(json.loads(table_path.read_text()))
        else:
            self.table = profile_latency(
                self.sn,
                threads=args.accuracy_threads,
                batch=args.accuracy_batch,
                seconds=args.table_seconds,
                progress=False,
            )
            table_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.table.to_dict(), table_path)
        self.latency = self.table.bind(self.sn)
        self.evaluator = build_evaluator(
            self.sn, payload, heldout_images=args.heldout_images, seed=args.seed
        )
        search = (payload.get("recipe") or {}).get("search") or {}
        self.options = search_options(search, [args.strategy], payload.get("loss_records")).get(
            args.strategy, {}
        )
        meta = self.sn.meta
        self.example = torch.randn(
            args.accuracy_batch,
            int(meta["in_chans"]),
            int(meta["input_size"]),
            int(meta["input_size"]),
        )
        self.full_ms = float(self.latency.predict(self.sn.widths_vector(self.sn.space.max())))

    def search(self, budget: int, measure: str):
        constraints = Constraints(measure=measure, latency=self.latency)
        (answer,) = get_strategy(self.args.strategy).search(
            self.sn,
            self.evaluator,
            budgets=[budget],
            seed=self.args.seed,
            constraints=constraints,
            **self.options,
        )
        return answer

    def measured(self, widths: dict[str, int]) -> float:
        return measure_latency(
            self.sn.extract(widths).eval(),
            self.example,
            min_run_time=self.args.measure_seconds,
            threads=self.args.accuracy_threads,
        )

    def row(self, answer, measured: float) -> dict[str, Any]:
        return {
            "macs": int(answer.macs),
            "macs_fraction": round(answer.macs / self.sn.macs(), 4),
            "params": int(answer.params),
            "score": round(float(answer.score), 4),
            "predicted_ms": round(
                float(self.latency.predict(self.sn.widths_vector(answer.widths))), 4
            ),
            "measured_ms": round(measured, 4),
            "widths": answer.widths,
        }

    def cell(self, fraction: float) -> dict[str, Any]:
        budget_ms = fraction * self.full_ms
        by_latency = self.search(int(budget_ms * NS_PER_MS), "latency")
        target = self.measured(by_latency.widths)
        # the MACs budget whose answer measures as fast: bisection on the MACs fraction
        # from the narrowest subnet's MACs: a smaller budget has no answer
        low, high, best = self.sn.macs(self.sn.space.min()) / self.sn.macs(), 1.0, None
        for _ in range(self.args.match_steps):
            mid = (low + high) / 2
            answer = self.search(int(mid * self.sn.macs()), "macs")
            ms = self.measured(answer.widths)
            if best is None or abs(ms - target) < abs(best[1] - target):
                best = (answer, ms)
            if abs(ms - target) <= self.args.match * target:
                break
            low, high = (mid, high) if ms < target else (low, mid)
        by_macs, by_macs_ms = best
        return {
            "fraction": fraction,
            "budget_ms": round(budget_ms, 4),
            "full_predicted_ms": round(self.full_ms, 4),
            "latency_searched": self.row(by_latency, target),
            "macs_searched": self.row(by_macs, by_macs_ms),
        }


def part_accuracy(args: argparse.Namespace, cells: Cells) -> None:
    matcher = None
    for fraction in args.latency_fractions:
        name = f"accuracy-{args.strategy}-b{args.accuracy_batch}-{fraction:g}"
        if cells.get(name) is None and matcher is None:
            matcher = Matcher(args)
        cells.run(name, lambda f=fraction, m=matcher: m.cell(f))


def print_row(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


def print_header(*columns: str, left: int = 1) -> None:
    """A markdown table's first two lines: the first ``left`` columns aligned left."""
    print_row(*columns)
    print("|" + "---|" * left + "---:|" * (len(columns) - left))


def report(args: argparse.Namespace, cells: Cells) -> None:
    docs = sorted(
        (cells.get(p.stem) for p in cells.folder.glob("error-*.json")),
        key=lambda d: (
            d["threads"],
            list(MODELS).index(d["model"]),
            d["batch"],
            d.get("sample_widths", 0),
            d.get("rounds", 3),
        ),
    )
    if docs:
        print_header(
            "model", "batch", "threads", "table build (s)", "entries (timed)",
            "median rel. error", "p90 rel. error", "Spearman rho", "rho of MACs", "rounds",
            "round spread", "rho between rounds",
        )  # fmt: skip
        for d in docs:
            d = {**d, **error_figures(d["subnets"])}  # cells older than the last two columns
            timed = d.get("timed_entries", d["table_entries"])
            print_row(
                d["model"], d["batch"], d["threads"], f"{d['table_seconds']:.0f}",
                f"{d['table_entries']} ({timed})", f"{d['median_rel_error']:.1%}",
                f"{d['p90_rel_error']:.1%}", f"{d['spearman_rho']:.3f}",
                f"{d['macs_spearman_rho']:.3f}", len(d["subnets"][0]["rounds_ms"]),
                f"{d['round_spread']:.1%}", f"{d['rounds_rho']:.3f}",
            )  # fmt: skip
    docs = [cells.get(p.stem) for p in sorted(cells.folder.glob("sampling-*.json"))]
    if docs:
        print()
        print_header(
            "model", "batch", "threads", "timed per group", "prediction change: median", "max",
            "rho full vs sampled", "error full -> sampled", "rho full -> sampled",
        )  # fmt: skip
        for d in docs:
            full, cut = d["full_table"], d["sampled_table"]
            print_row(
                d["model"], d["batch"], d["threads"], d["sample_widths"],
                f"{d['median_change']:.1%}", f"{d['max_change']:.1%}",
                f"{d['rho_full_vs_sampled']:.3f}",
                f"{full['median_rel_error']:.1%} -> {cut['median_rel_error']:.1%}",
                f"{full['spearman_rho']:.3f} -> {cut['spearman_rho']:.3f}",
            )  # fmt: skip
    docs = [cells.get(p.stem) for p in sorted(cells.folder.glob("accuracy-*.json"))]
    if docs:
        print()
        print_header(
            "latency budget", "searched under", "MACs", "predicted ms", "measured ms",
            "held-out score", left=2,
        )  # fmt: skip
        for d in docs:
            for key, label in (("latency_searched", "latency"), ("macs_searched", "MACs")):
                r = d[key]
                print(
                    f"| {d['fraction']:.0%} ({d['budget_ms']:.3f} ms) | {label} | "
                    f"{r['macs_fraction']:.1%} | {r['predicted_ms']:.3f} | "
                    f"{r['measured_ms']:.3f} | {r['score']:.4f} |"
                )
        gaps = [d["latency_searched"]["score"] - d["macs_searched"]["score"] for d in docs]
        print(f"\nScore difference latency - MACs searched: median {statistics.median(gaps):+.4f}")
    exe = os.path.relpath(sys.executable)
    print(f"\nCommand: `{shlex.join([exe, *sys.argv])}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("error", "sampling", "accuracy"), action="append")
    parser.add_argument("--report", action="store_true", help="only reprint finished cells")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count() or 1])
    parser.add_argument("--subnets", type=int, default=50)
    parser.add_argument(
        "--table-seconds",
        type=float,
        default=0.02,
        help="minimum timing per table entry (profile --seconds)",
    )
    parser.add_argument(
        "--measure-seconds",
        type=float,
        default=0.1,
        help="minimum timing per measured subnet and round",
    )
    parser.add_argument("--rounds", type=int, default=3, help="measurements per subnet")
    parser.add_argument(
        "--sample-widths",
        type=int,
        help="time this many width choices per group and interpolate the rest "
        "(profile --sample-widths; default: every choice)",
    )
    parser.add_argument("--supernet", default=DEFAULT_SUPERNET)
    parser.add_argument("--strategy", default="bisection")
    parser.add_argument("--latency-fractions", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--accuracy-batch", type=int, default=32)
    parser.add_argument("--accuracy-threads", type=int, default=1)
    parser.add_argument("--heldout-images", type=int, default=5000)
    parser.add_argument(
        "--match", type=float, default=0.02, help="measured latencies agree within this fraction"
    )
    parser.add_argument("--match-steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cells = Cells(args.out)
    if not args.report:
        start = time.perf_counter()
        for part in args.part or ["error", "accuracy"]:
            parts = {"error": part_error, "sampling": part_sampling, "accuracy": part_accuracy}
            parts[part](args, cells)
        log(f"done in {time.perf_counter() - start:.0f} s")
    report(args, cells)
    return 1 if cells.failed else 0


if __name__ == "__main__":
    sys.exit(main())
