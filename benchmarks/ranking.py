"""Search signal: how well does a supernet's score rank subnets by their real accuracy?

    .venv/bin/python benchmarks/ranking.py --supernet warm=SUPERNET.pt \
        [--supernet scratch=OTHER.pt ...] [--configs 30] [--seeds 0 1] \
        [--truth finetune scratch] --out benchmarks/results/ranking
    .venv/bin/python benchmarks/ranking.py --smoke --out /tmp/ranking-smoke   # about a minute
    .venv/bin/python benchmarks/ranking.py --supernet warm=SUPERNET.pt --report   # table only

1. ``configs``: ``--configs`` width configs of the first supernet's space, one per
   equal-width stratum of 5-100 % of its full MACs, drawn (seeded) from random configs and
   jittered uniform ones, so that large subnets are represented as well as small ones; with
   ``--at-budget F`` all of them within ``--window`` (0.97) to 1 of F x full MACs instead,
   where MACs alone cannot rank them and only the scores can (the search's question).
2. Ground truth per config and seed, test top-1 (never used to choose anything):
   ``finetune``: extracted from the first supernet with the pipeline's inheritance choice
   and fine-tuned as the pipeline does (the recipe's epochs and lr, distilled from the
   trained network the supernet carries, else its own full width); ``scratch``: the same
   widths from random weights, trained ``--scratch-epochs``.
3. Scores, each after BN recalibration on the held-out split the supernets' training left
   out: per supernet, metric (``top1``, ``ce``, and ``kd`` when the supernet carries a
   trained network) and held-out size; ``trained``: the first supernet's trained network
   (or ``--trained FULL.pt``) with BN recalibration only, no supernet training, in its own
   channel order and (``trained-ordered``) in the order the supernet's warm start chose; and
   MACs alone.
4. Kendall tau and Spearman rho of every score against the truth (its mean over seeds),
   with 95 % bootstrap intervals over configs, each score's tau minus MACs alone's with a
   paired interval (the same resamples), its partial tau given MACs (what it knows that
   MACs do not), and the scoring seconds per config; the truth's own seed-to-seed tau
   bounds what any predictor can reach.

Every finished unit is a JSON cell under ``--out/cells`` (a rerun skips it; trainings
resume per epoch); the table goes to stdout and ``--out/tables.md``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import train_from_scratch
from cells import Cells, log, measure, passive_openmp
from ranking_stats import bootstrap, seed_agreement
from widthsearch.evaluate import extract_subnet, finetune_subnet, save_subnet
from widthsearch.recipes.recipe import Recipe
from widthsearch.search import build_evaluator, scoring_data
from widthsearch.supernet import Supernet, load_weights, read_state_dict, reorder_channels
from widthsearch.supernet.checkpoint import (
    build_supernet,
    load_supernet,
    write_json_atomic,
    write_text_atomic,
)
from widthsearch.supernet.train import train_supernet

LOW, HIGH = 0.05, 1.0  # the MACs range the configs cover, as fractions of full MACs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--supernet", action="append", default=[], metavar="NAME=PATH", help="repeatable")
    add("--trained", help="the trained full network (default: the first supernet's teacher)")
    add("--out", default="benchmarks/results/ranking")
    add("--configs", type=int, default=30)
    add(
        "--at-budget",
        type=float,
        metavar="FRACTION",
        help="every config within --window of this MACs budget (a fraction of the full MACs) "
        "instead of one per stratum of 5-100 %%: how a score ranks where MACs say nothing",
    )
    add("--window", type=float, default=0.97, help="with --at-budget: the lowest share used")
    add("--seeds", type=int, nargs="+", default=[0, 1])
    add("--truth", nargs="+", default=["finetune"], choices=["finetune", "scratch"])
    add("--metrics", nargs="+", default=["top1", "ce", "kd"])
    add("--heldout-images", type=int, nargs="+", default=[500, 2000, 5000])
    add("--finetune-epochs", type=int, help="default: the supernet recipe's")
    add("--scratch-epochs", type=int, default=10)
    add("--scratch-lr", type=float, default=0.1)
    add("--train-limit", type=int, help="truth runs on this many training images")
    add("--bootstrap", type=int, default=2000)
    add("--threads", type=int, default=1)
    add("--smoke", action="store_true", help="tiny synthetic supernet, every cell kind")
    add("--report", action="store_true", help="only the table of the finished cells")
    args = parser.parse_args(argv)
    if args.smoke:
        args.configs, args.seeds, args.heldout_images = 6, [0], [40, 80]
        args.finetune_epochs, args.scratch_epochs, args.truth = 1, 1, ["finetune", "scratch"]
        args.bootstrap = 200
    elif not args.supernet:
        parser.error("give at least one --supernet NAME=PATH (or --smoke)")
    if args.configs < 3:
        parser.error("need --configs >= 3")
    if args.at_budget is not None and not (0 < args.at_budget <= 1 and 0 < args.window < 1):
        parser.error("--at-budget must be in (0, 1] and --window in (0, 1)")
    return args


def smoke_supernet(out: Path) -> Path:
    """A one-epoch resnet20 supernet on 16x16 synthetic images (the --smoke input)."""
    recipe = Recipe.from_dict(
        {
            "name": "ranking-smoke",
            "model": {"input_size": 16},
            "data": {
                "name": "synthetic",
                "heldout_size": 200,
                "train_limit": 320,
                "test_limit": 100,
                "batch_size": 32,
            },
            "space": {"bins": 4},
            "train": {"epochs": 1, "eval_batches": 0},
            "search": {"calib_batches": 1, "eval_batch_size": 40},
        }
    )
    folder = out / "work" / "smoke"
    if not (folder / "supernet.pt").is_file():
        train_supernet(recipe, out_dir=folder, progress=False, log=lambda line: None)
    return folder / "supernet.pt"


def jittered_uniform(space, ratio: float, rng: np.random.Generator, *, spread: int):
    """The uniform config at ``ratio``, each group moved up to ``spread`` choices either way."""
    cfg = space.uniform(ratio)
    for g in space.searchable:
        k = g.choices.index(cfg[g.name]) + int(rng.integers(-spread, spread + 1))
        cfg[g.name] = g.choices[min(max(k, 0), len(g.choices) - 1)]
    return cfg


def stratified_configs(sn: Supernet, count: int, *, seed: int) -> list[dict[str, Any]]:
    """One config per equal-width MACs stratum of [LOW, HIGH] x full MACs (seeded)."""
    rng = np.random.default_rng(seed)
    space, full = sn.space, sn.macs()
    pool = [space.sample(rng) for _ in range(2000)]
    for ratio in np.linspace(0.15, 1.0, 400):  # jittered uniform configs reach the top
        pool.append(jittered_uniform(space, float(ratio), rng, spread=1))
    fractions = np.array([sn.macs(c) / full for c in pool])
    edges = np.linspace(LOW, HIGH, count + 1)
    configs = []
    for lo, hi in itertools.pairwise(edges):
        members = np.nonzero((fractions >= lo) & (fractions <= hi))[0]
        if not len(members):  # an empty stratum: the pool's nearest config
            members = np.array([int(np.argmin(np.abs(fractions - (lo + hi) / 2)))])
        pick = int(rng.choice(members))
        configs.append({"widths": pool[pick], "macs": int(sn.macs(pool[pick]))})
    return configs


def budget_configs(
    sn: Supernet, count: int, *, fraction: float, window: float, seed: int, draws: int = 50_000
) -> list[dict[str, Any]]:
    """``count`` distinct configs whose MACs lie in ``[window, 1] x fraction x`` full MACs,
    drawn (seeded) from random configs and jittered uniform ones around the budget."""
    rng = np.random.default_rng(seed)
    space, budget = sn.space, fraction * sn.macs()
    found: dict[tuple[int, ...], dict[str, Any]] = {}
    for i in range(draws):
        if i % 2:
            cfg = space.sample(rng)
        else:  # uniform widths near the budget
            cfg = jittered_uniform(space, float(np.sqrt(fraction)), rng, spread=2)
        macs = sn.macs(cfg)
        if window * budget <= macs <= budget:
            found.setdefault(
                tuple(cfg[g.name] for g in space.searchable), {"widths": cfg, "macs": int(macs)}
            )
        if len(found) == count:
            return list(found.values())
    raise ValueError(
        f"only {len(found)} of {count} configs within {window:.0%}-100 % of "
        f"{fraction:.0%} MACs in {draws} draws: widen --window or ask for fewer --configs"
    )


class Ranking:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.cells = Cells(self.out)
        if args.smoke:
            args.supernet = [f"smoke={smoke_supernet(self.out)}"]
        self.supernets = dict(item.split("=", 1) for item in args.supernet)
        self.reference = next(iter(self.supernets.values()))

    def run(self) -> None:
        cells, args = self.cells, self.args
        configs = cells.run("configs", self.configs_cell)
        if configs is None:
            return
        if configs.get("at_budget") != args.at_budget:
            raise SystemExit(
                f"{self.out} holds configs drawn with --at-budget {configs.get('at_budget')}; "
                "use another --out"
            )
        for name, path in self.supernets.items():
            for metric in args.metrics:
                for images in args.heldout_images:
                    cells.run(
                        f"score-{name}-{metric}-{images}",
                        lambda p=path, m=metric, n=images: self.score_cell(p, m, n, configs),
                    )
        for images in args.heldout_images:
            cells.run(
                f"score-trained-top1-{images}", lambda n=images: self.trained_cell(n, configs)
            )
            cells.run(
                f"score-trained-ordered-top1-{images}",
                lambda n=images: self.trained_cell(n, configs, ordered=True),
            )
        for seed in args.seeds:
            for i, entry in enumerate(configs["configs"]):
                for kind in args.truth:
                    name = f"truth-{kind}-{i:02d}-s{seed}"
                    if cells.get(name) is None and not self.claim(name):
                        log(f"{name}: another worker has it, skipped")
                        continue
                    cells.run(
                        name, lambda k=kind, i=i, e=entry, s=seed: self.truth_cell(k, i, e, s)
                    )

    def claim(self, name: str) -> bool:
        """Whether this process may run the cell: no other live worker of ``--out`` holds it."""
        path = self.out / "work" / "claims" / f"{name}.pid"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            holder = int(path.read_text() or 0)
            if holder != os.getpid() and Path(f"/proc/{holder}").exists():
                return False
        path.write_text(str(os.getpid()))
        return True

    # -- cells -----------------------------------------------------------------------------
    def configs_cell(self) -> dict[str, Any]:
        sn, _ = load_supernet(self.reference)
        return {
            "supernet": self.reference,
            "full_macs": int(sn.macs()),
            "at_budget": self.args.at_budget,
            "window": self.args.window if self.args.at_budget is not None else None,
            "configs": (
                stratified_configs(sn, self.args.configs, seed=12345)
                if self.args.at_budget is None
                else budget_configs(
                    sn,
                    self.args.configs,
                    fraction=self.args.at_budget,
                    window=self.args.window,
                    seed=12345,
                )
            ),
        }

    def _scores(self, sn: Supernet, payload: dict[str, Any], metric: str, images: int, configs):
        evaluator = build_evaluator(sn, payload, heldout_images=images, metric=metric)
        start = time.perf_counter()
        scores = [evaluator.score(c["widths"]) for c in configs["configs"]]
        seconds = time.perf_counter() - start
        return {
            "metric": metric,
            "heldout_images": evaluator.num_images,
            "sides": list(evaluator.side_names),
            "scores": scores,
            "seconds_per_config": round(seconds / len(scores), 4),
        }

    def score_cell(self, path: str, metric: str, images: int, configs) -> dict[str, Any]:
        sn, payload = load_supernet(path)
        if metric == "kd" and payload.get("teacher_state_dict") is None:
            return {"skipped": "kd needs the trained network a warm-started supernet carries"}
        return {"supernet": path, **self._scores(sn, payload, metric, images, configs)}

    def trained_cell(self, images: int, configs, *, ordered: bool = False) -> dict[str, Any]:
        """The trained full network as the supernet, BN recalibrated per config, no supernet
        training (what a search straight on a trained checkpoint relies on). ``ordered``:
        its channels first arranged as the supernet's warm start arranged them, so that a
        config's slices hold the channels the supernet's do (|BN gamma| importance is
        recomputed exactly; Taylor importance on held-out images the scores do not use)."""
        sn, payload = load_supernet(self.reference)
        if self.args.trained:
            state = read_state_dict(self.args.trained)
        elif payload.get("teacher_state_dict") is not None:
            state = payload["teacher_state_dict"]
        else:
            return {"skipped": "no trained network: give --trained FULL.pt"}
        trained = build_supernet(dict(sn.meta))
        load_weights(trained.model, state, where="the trained network")
        order = None
        if ordered:
            init = payload.get("init") or {}
            order = init.get("channel_order")
            if order is None:
                return {"skipped": "the supernet was not warm-started: no channel order"}
            batches = None
            if init.get("importance", "gamma") == "taylor":  # held-out images not scored
                images_fit, labels_fit = scoring_data(payload, sn.meta, fit=True).fit
                batches = list(zip(images_fit.split(128), labels_fit.split(128), strict=True))
            reorder_channels(trained, order, batches=batches)
        return {
            "weights": self.args.trained or "teacher",
            "channel_order": order,
            **self._scores(trained.eval(), payload, "top1", images, configs),
        }

    def truth_cell(self, kind: str, i: int, entry: dict[str, Any], seed: int) -> dict[str, Any]:
        args = self.args
        folder = self.out / "work" / "truth"
        folder.mkdir(parents=True, exist_ok=True)
        start_path = folder / f"{kind}-{i:02d}-s{seed}-init.pt"
        tuned = folder / f"{kind}-{i:02d}-s{seed}.pt"
        if not tuned.is_file():
            if not start_path.is_file():
                sn, payload = load_supernet(self.reference)
                data = scoring_data(payload, sn.meta, where="extract")
                subnet = extract_subnet((sn, payload), widths=entry["widths"], data=data)
                if kind == "scratch":  # the same architecture from random weights
                    torch.manual_seed(10_000 * seed + i)
                    for module in subnet["module"].modules():
                        if module is not subnet["module"] and hasattr(module, "reset_parameters"):
                            module.reset_parameters()
                    subnet["state_dict"] = subnet["module"].state_dict()
                    subnet["inheritance"] = {"chosen": "random-init", "scores": {}}
                save_subnet(subnet, start_path)
            if kind == "scratch":
                train_from_scratch(
                    start_path, tuned, epochs=args.scratch_epochs, lr=args.scratch_lr, seed=seed
                )
            else:
                finetune_subnet(
                    start_path,
                    out=tuned,
                    epochs=args.finetune_epochs,  # None: the recipe's, as the pipeline
                    teacher=self.reference,
                    train_limit=args.train_limit,
                    seed=seed,
                    eval_images=0,
                    resume=tuned.with_name(tuned.stem + ".ckpt.pt").is_file(),
                    progress=False,
                    log=lambda line: log(f"  {tuned.stem}: {line}"),
                )
        figures = measure(tuned, latency=False)
        return {"kind": kind, "index": i, "seed": seed, **figures}

    # -- table -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        configs = self.cells.get("configs")
        if configs is None:
            return {}
        n = len(configs["configs"])
        out: dict[str, Any] = {}
        for kind in self.args.truth:
            runs: dict[int, dict[int, float]] = {}
            for s in self.args.seeds:
                for i in range(n):
                    cell = self.cells.get(f"truth-{kind}-{i:02d}-s{s}")
                    if cell is not None:
                        runs.setdefault(s, {})[i] = cell["top1"]
            truth = [[r[i] for r in runs.values() if i in r] for i in range(n)]
            have = [i for i, t in enumerate(truth) if t]
            if len(have) < 3:
                continue
            target = [float(np.mean(truth[i])) for i in have]
            all_macs = [c["macs"] for c in configs["configs"]]
            macs = [all_macs[i] for i in have]
            rounds = self.args.bootstrap
            rows = [
                {
                    "predictor": "MACs alone",
                    "seconds_per_config": 0.0,
                    **bootstrap(macs, target, rounds=rounds, baseline=macs),
                }
            ]
            for cell in sorted(p.stem for p in self.cells.folder.glob("score-*.json")):
                doc = self.cells.get(cell)
                if doc is None or "scores" not in doc:
                    continue
                rows.append(
                    {
                        "predictor": cell.removeprefix("score-"),
                        "seconds_per_config": doc["seconds_per_config"],
                        **bootstrap(
                            [doc["scores"][i] for i in have], target, rounds=rounds, baseline=macs
                        ),
                    }
                )
            out[kind] = {
                "at_budget": configs.get("at_budget"),
                "window": configs.get("window"),
                "configs": len(have),
                "seeds": self.args.seeds,
                "rows": rows,
                "seed_agreement": seed_agreement(runs, all_macs),
            }
        return out

    def table(self) -> str:
        lines = []
        for kind, block in self.summary().items():
            spread = f"over {round(100 * LOW)}-{round(100 * HIGH)} % MACs"
            if block.get("at_budget") is not None:
                spread = (
                    f"within {block['window']:.0%}-100 % of the {block['at_budget']:.0%} "
                    "MACs budget"
                )
            lines += [
                f"Truth: {kind} test top-1, mean over seeds {block['seeds']}, "
                f"{block['configs']} configs {spread}",
                "",
                "| score (supernet-metric-held-out images) | Kendall tau [95 % CI] "
                "| tau - MACs' [paired 95 % CI] | partial tau given MACs [95 % CI] "
                "| Spearman rho [95 % CI] | s / config |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for r in sorted(block["rows"], key=lambda r: -r["kendall_tau"]):
                tau_ci = ", ".join(f"{v:.2f}" for v in r["kendall_ci"])
                gain_ci = ", ".join(f"{v:+.2f}" for v in r.get("tau_gain_ci", []))
                partial = "—"
                if "partial_tau" in r:
                    partial_ci = ", ".join(f"{v:+.2f}" for v in r["partial_ci"])
                    partial = f"{r['partial_tau']:+.3f} [{partial_ci}]"
                rho_ci = ", ".join(f"{v:.2f}" for v in r["spearman_ci"])
                lines.append(
                    f"| {r['predictor']} | {r['kendall_tau']:.3f} [{tau_ci}] "
                    f"| {r.get('tau_gain', 0.0):+.3f} [{gain_ci}] | {partial} "
                    f"| {r['spearman_rho']:.3f} [{rho_ci}] | {r['seconds_per_config']:.3f} |"
                )
            agree = block["seed_agreement"]
            if agree:
                a, b = agree["seeds"]
                lines += [
                    "",
                    f"The truth against itself, seed {a} vs seed {b} over the "
                    f"{agree['configs']} configs both have: Kendall tau "
                    f"{agree['kendall_tau']:.3f} (MACs alone against each: "
                    f"{agree['macs_tau'][0]:.3f} / {agree['macs_tau'][1]:.3f}), partial tau "
                    f"given MACs {agree['partial_tau']:+.3f}; top-1 gaps median "
                    f"{agree['median_gap']:.4f}, max {agree['max_gap']:.4f}.",
                ]
            lines.append("")
        return "\n".join(lines) if lines else "(no truth cells finished)"


def main(argv: list[str] | None = None) -> int:
    passive_openmp()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bench = Ranking(args)
    if not args.report:
        bench.run()
    summary = bench.summary()
    write_json_atomic(summary, bench.out / "summary.json")
    table = bench.table()
    write_text_atomic(table + "\n", bench.out / "tables.md")
    print(table)
    return 1 if bench.cells.failed else 0


if __name__ == "__main__":
    sys.exit(main())
