"""Headline benchmark: accuracy at budget, ranking quality and cost, resnet20 / Fashion-MNIST.

    .venv/bin/python benchmarks/headline.py                 # default scale, about an hour
    .venv/bin/python benchmarks/headline.py --smoke --out /tmp/headline-smoke   # ~2 min check

Three questions, one command:

1. **Accuracy at budget** (25/50/75 % of the full MACs). Every registered search strategy runs
   on the BCNet supernet; each answer is extracted (adaptive inheritance), fine-tuned (same
   epochs for all, distilled from the supernet as the recipe says) and measured on the test
   split (top-1, MACs, params, CPU latency ratio to the full model). Next to it: the uniform
   network at the same MACs trained from scratch for supernet + fine-tune epochs
   (``scratch-uniform``), the uniform subnet from the supernet (the ``uniform`` strategy row),
   and Torch-Pruning (full network trained from scratch, L1 magnitude pruning with the ratio
   bisected to the budget, fine-tuned like the others, distilled from its own full network).
2. **Ranking quality**: random configs, one per MACs quantile bin, scored by the BCNet and by
   a sandwich-rule supernet (same recipe and epochs) against the same configs trained from
   scratch and evaluated on the test split; Kendall tau and Spearman rho.
3. **Cost**: supernet training vs plain training of the full network for the same epochs,
   search seconds per strategy, fine-tune seconds.

Every finished *cell* (one training, one search, one fine-tune + evaluation, ...) is saved as
JSON under ``--out/cells`` (atomically), and a rerun skips it; supernet training and
fine-tuning also resume per epoch. Checkpoints live in ``--out/work`` (git-ignored). The
tables go to stdout and ``--out/tables.md``, the Pareto plot to ``--out/pareto.png``. The test
split gives final numbers only: search and inheritance score on the held-out split.

Threads: OpenMP is put in passive wait (the script re-executes itself with
``OMP_WAIT_POLICY=PASSIVE``): on this shared 2-core machine an active-spinning 2-thread torch
next to another busy process ran a training step 8x slower than with passive waits.

The pieces: ``cells.py`` (resumable cells, the train / fine-tune / measure calls),
``baselines.py`` (from-scratch and Torch-Pruning), ``headline_settings.py`` (presets, recipe)
and ``headline_tables.py`` (tables, plot); this file runs the cells in order.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

# warmstart.py and inherit_trained.py import Cells, log, measure, passive_openmp,
# prune_to_budget, random_init_subnet and train_from_scratch from here
from baselines import (
    PRUNING,
    SCRATCH,
    baseline_subnet,
    prune_to_budget,
    random_init_subnet,
    train_from_scratch,
)
from cells import (
    Cells,
    Lazy,
    finetune,
    finetune_seconds,
    log,
    measure,
    passive_openmp,
    train_cell,
    tuned_figures,
)
from headline_settings import BASELINE, PRESETS, build_recipe, check_settings, pct
from headline_tables import report
from widthsearch.evaluate import extract_subnet, read_subnet, save_subnet
from widthsearch.search import (
    build_evaluator,
    list_strategies,
    resolve_budgets,
    run_search,
    scoring_data,
    search_options,
)
from widthsearch.supernet import Supernet
from widthsearch.supernet.checkpoint import (
    build_supernet,
    load_supernet,
    save_supernet,
    write_text_atomic,
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags over the chosen preset (``--smoke`` or the default scale)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="tiny preset: the whole script in ~2 minutes")
    add("--out", default="benchmarks/results/headline", help="cells, tables, plot, checkpoints")
    add("--fresh", action="store_true", help="delete --out's cells and checkpoints first")
    add("--threads", type=int, default=2, help="torch threads (latency is timed on 1)")
    add("--train-limit", type=int, help="training images (0 = all 55,000)")
    add("--test-limit", type=int, help="test images (0 = all 10,000)")
    add("--heldout-size", type=int, help="images carved from training for search scores")
    add("--supernet-epochs", type=int, help="BCNet and sandwich supernet epochs")
    add("--finetune-epochs", type=int, help="fine-tune epochs of every extracted subnet")
    add("--ranking-configs", type=int, help="random configs for the ranking study")
    add("--ranking-epochs", type=int, help="from-scratch epochs of each ranking config")
    add("--seeds", type=int, help="fine-tune seeds per cell (mean reported)")
    add("--budgets", type=float, nargs="+", help="MACs budgets as fractions of the full model")
    add("--trials", type=int, help="evolution trials (all budgets in one study)")
    add("--samples", type=int, help="random-search samples per budget")
    add("--relax-steps", type=int, help="relax gradient steps")
    add("--heldout-images", type=int, help="held-out images per subnet score")
    add("--calib-batches", type=int, help="BN recalibration batches per subnet score")
    add("--latency-seconds", type=float, help="minimum timing per latency figure")
    add("--scratch-lr", type=float, help="peak lr of from-scratch training")
    args = parser.parse_args(argv)
    preset = PRESETS["smoke" if args.smoke else "default"]
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.ranking_configs < 3 or args.seeds < 1 or min(args.budgets) <= 0:
        parser.error("need --ranking-configs >= 3, --seeds >= 1 and budgets > 0")
    return args


# ---- the benchmark --------------------------------------------------------------------------


class Headline:
    """All cells of the benchmark, in an order that gives the headline table first."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.work = self.out / "work"
        self.cells = Cells(self.out)
        self.recipe = build_recipe(args)
        self.lazy = Lazy()
        self.bcnet_ckpt = self.work / "bcnet" / "supernet.pt"
        self.sandwich_ckpt = self.work / "sandwich" / "supernet.pt"
        self.full_teacher = self.work / "full" / "teacher.pt"
        self.strategies = list_strategies()
        # absolute budgets from the cost model alone (no training needed)
        probe = build_supernet({**self.meta(), **self.space_meta()})
        self.full_macs = int(probe.macs())
        self.budgets = resolve_budgets(probe, list(args.budgets))
        self.fractions = list(args.budgets)

    def meta(self) -> dict[str, Any]:
        return {"model": "resnet20", "num_classes": 10, "in_chans": 1, "input_size": 28}

    def space_meta(self) -> dict[str, Any]:
        space = self.recipe.space
        return {"bins": space.bins, "min_bins": space.min_bins, "round_to": space.round_to}

    def supernet(self, ckpt: Path) -> tuple[Supernet, dict[str, Any]]:
        return self.lazy.get(f"sn:{ckpt}", lambda: load_supernet(ckpt))

    def evaluator(self, ckpt: Path):
        sn, payload = self.supernet(ckpt)
        return self.lazy.get(f"ev:{ckpt}", lambda: build_evaluator(sn, payload))

    # -- 1. accuracy at budget ------------------------------------------------------------------
    def run(self) -> None:
        cells, args = self.cells, self.args
        cells.run("supernet-bcnet", lambda: train_cell(self.recipe, self.bcnet_ckpt.parent))
        for name in self.strategies:
            cells.run(f"search-{name}", lambda name=name: self.search_cell(name))
        for seed in range(args.seeds):
            for frac, budget in zip(self.fractions, self.budgets, strict=True):
                for name in self.strategies:
                    cells.run(
                        f"ft-{name}-{pct(frac)}-s{seed}",
                        lambda n=name, b=budget, f=frac, s=seed: self.finetune_cell(n, b, f, s),
                    )
        cells.run("full-scratch", self.full_cell)
        for seed in range(args.seeds):
            for frac, budget in zip(self.fractions, self.budgets, strict=True):
                cells.run(
                    f"tp-{pct(frac)}-s{seed}",
                    lambda b=budget, f=frac, s=seed: self.pruning_cell(b, f, s),
                )
                cells.run(
                    f"scratch-{pct(frac)}-s{seed}",
                    lambda b=budget, f=frac, s=seed: self.scratch_cell(b, f, s),
                )
        # -- 2. ranking ---------------------------------------------------------------------
        sandwich = build_recipe(args, trainer="sandwich")
        cells.run("supernet-sandwich", lambda: train_cell(sandwich, self.sandwich_ckpt.parent))
        configs = cells.run("ranking-configs", self.ranking_configs_cell)
        if configs is None:
            return
        for trainer, ckpt in (("bcnet", self.bcnet_ckpt), ("sandwich", self.sandwich_ckpt)):
            cells.run(
                f"ranking-scores-{trainer}",
                lambda c=ckpt: self.ranking_scores_cell(c, configs["configs"]),
            )
        for i, entry in enumerate(configs["configs"]):
            cells.run(f"ranking-truth-{i:02d}", lambda i=i, e=entry: self.ranking_truth_cell(i, e))

    def search_cell(self, name: str) -> dict[str, Any]:
        """One strategy over all budgets in one call (strategies share work across budgets)."""
        sn, payload = self.supernet(self.bcnet_ckpt)
        options = search_options(
            self.recipe.to_dict()["search"], [name], payload.get("loss_records")
        )
        doc = run_search(
            sn,
            self.evaluator(self.bcnet_ckpt),
            strategies=[name],
            budgets=self.budgets,
            seed=self.recipe.search.seed,
            options=options,
            supernet_path=str(self.bcnet_ckpt),
        )
        return {
            "strategy": name,
            "call": doc["calls"][0],
            "results": doc["results"],
            "full_macs": doc["full_macs"],
            "evaluator": {k: doc["evaluator"][k] for k in ("heldout_images", "calib_images")},
        }

    def search_result(self, name: str, budget: int) -> dict[str, Any]:
        cell = self.cells.get(f"search-{name}")
        if cell is None:
            raise RuntimeError(f"search-{name} did not finish")
        return next(r for r in cell["results"] if int(r["budget_macs"]) == budget)

    def finetune_cell(self, name: str, budget: int, frac: float, seed: int) -> dict[str, Any]:
        """Extract (best inheritance), fine-tune with the recipe, measure on the test split."""
        result = self.search_result(name, budget)
        subnets = self.work / "subnets"
        extracted = subnets / f"{name}-{pct(frac)}.pt"
        sn, payload = self.lazy.get(
            "extract-sn", lambda: load_supernet(self.bcnet_ckpt)
        )  # its own copy: the search evaluator's supernet keeps its BN snapshot
        start = time.perf_counter()
        if not extracted.is_file():
            data = self.lazy.get("heldout", lambda: scoring_data(payload, sn.meta, where="extract"))
            extract_subnet(
                (sn, payload),
                widths=result["widths"],
                strategy=name,
                budget=budget,
                out=extracted,
                candidates=self.recipe.finetune.inheritance,
                data=data,
                supernet_path=str(self.bcnet_ckpt),
                progress=False,
            )
        extract_seconds = time.perf_counter() - start
        tuned = subnets / f"{name}-{pct(frac)}-s{seed}-ft.pt"
        if not tuned.is_file():
            finetune(extracted, tuned, self.recipe, teacher=self.bcnet_ckpt, seed=seed)
        ft = read_subnet(tuned)
        return {
            "kind": "strategy",
            "method": name,
            "fraction": frac,
            "budget_macs": budget,
            "seed": seed,
            "score": result["score"],
            "search_evaluations": result["evaluations"],
            "widths": result["widths"],
            "inheritance": ft.get("inheritance"),
            "extract_seconds": round(extract_seconds, 2),
            **tuned_figures(tuned, ft),
        }

    def full_cell(self) -> dict[str, Any]:
        """The full resnet20 trained from scratch for the supernet's epochs: reference top-1,
        the cost comparison, Torch-Pruning's starting point and its distillation teacher."""
        args = self.args
        meta = {**self.meta(), **self.space_meta()}
        init = self.work / "full" / "init.pt"
        trained = self.work / "full" / "full.pt"
        if not trained.is_file():
            probe = build_supernet(meta)
            save_subnet(
                random_init_subnet(
                    meta, probe.space.max(), self.recipe, seed=10_000, label="full-scratch"
                ),
                init,
            )
            train_from_scratch(
                init,
                trained,
                epochs=args.supernet_epochs,
                lr=args.scratch_lr,
                seed=0,
                eval_images=0,
            )
        payload = read_subnet(trained)
        teacher = build_supernet(meta)  # a supernet checkpoint: what finetune_subnet distils from
        teacher.model.load_state_dict(payload["module"].state_dict())
        save_supernet(self.full_teacher, teacher, recipe=self.recipe.to_dict())
        seconds = finetune_seconds(payload)
        return {
            "kind": "full",
            "method": "full-scratch",
            "epochs": args.supernet_epochs,
            "lr": args.scratch_lr,
            "train_seconds": seconds,
            "seconds_per_epoch": round(seconds / max(args.supernet_epochs, 1), 2),
            "history": payload["finetune"]["history"],
            **measure(trained),
        }

    def pruning_cell(self, budget: int, frac: float, seed: int) -> dict[str, Any]:
        """Torch-Pruning: prune the trained full network to the budget, fine-tune, measure."""
        folder = self.work / "tp"
        pruned_path = folder / f"pruned-{pct(frac)}.pt"
        start = time.perf_counter()
        if not pruned_path.is_file():
            full = read_subnet(self.work / "full" / "full.pt")
            pruned = prune_to_budget(full["module"], full["meta"], budget)
            if not pruned["verified"]:
                raise RuntimeError(
                    "pruned channels do not map onto the supernet's groups; "
                    "the shared fine-tune and measure code cannot describe this model"
                )
            payload = baseline_subnet(
                pruned["module"],
                widths=pruned["widths"],
                meta=pruned["meta"],
                macs=pruned["macs"],
                params=pruned["params"],
                full_macs=pruned["full_macs"],
                full_params=pruned["full_params"],
                inheritance={"chosen": "torch-pruning-l1", "ratio": pruned["ratio"]},
                strategy=PRUNING,
                recipe=self.recipe,
                budget_macs=budget,
            )
            save_subnet(payload, pruned_path)
        prune_seconds = time.perf_counter() - start
        tuned = folder / f"pruned-{pct(frac)}-s{seed}-ft.pt"
        if not tuned.is_file():
            finetune(pruned_path, tuned, self.recipe, teacher=self.full_teacher, seed=seed)
        ft = read_subnet(tuned)
        return {
            "kind": "baseline",
            "method": PRUNING,
            "fraction": frac,
            "budget_macs": budget,
            "seed": seed,
            "ratio": ft["inheritance"]["ratio"],
            "widths": ft["widths"],
            "mapped_onto_groups": True,
            "prune_seconds": round(prune_seconds, 2),
            **tuned_figures(tuned, ft),
        }

    def scratch_cell(self, budget: int, frac: float, seed: int) -> dict[str, Any]:
        """The largest uniform config under the budget, random init, trained for supernet +
        fine-tune epochs: what the supernet must beat to be worth its training."""
        args = self.args
        widths = self.search_result(BASELINE, budget)["widths"]
        folder = self.work / "scratch"
        init = folder / f"uniform-{pct(frac)}-s{seed}-init.pt"
        trained = folder / f"uniform-{pct(frac)}-s{seed}.pt"
        epochs = args.supernet_epochs + args.finetune_epochs
        if not trained.is_file():
            meta = {**self.meta(), **self.space_meta()}
            payload = random_init_subnet(
                meta, widths, self.recipe, seed=20_000 + seed, label=SCRATCH
            )
            payload["budget_macs"] = budget
            save_subnet(payload, init)
            train_from_scratch(init, trained, epochs=epochs, lr=args.scratch_lr, seed=seed)
        payload = read_subnet(trained)
        return {
            "kind": "baseline",
            "method": SCRATCH,
            "fraction": frac,
            "budget_macs": budget,
            "seed": seed,
            "epochs": epochs,
            "widths": payload["widths"],
            "train_seconds": finetune_seconds(payload),
            **measure(trained),
        }

    # -- 2. ranking -------------------------------------------------------------------------
    def ranking_configs_cell(self) -> dict[str, Any]:
        """One random config per MACs quantile bin of many random samples (seeded)."""
        n = self.args.ranking_configs
        sn = build_supernet({**self.meta(), **self.space_meta()})
        rng = np.random.default_rng(12345)
        pool = [sn.space.sample(rng) for _ in range(4000)]
        macs = np.array([sn.macs(c) for c in pool])
        edges = np.quantile(macs, np.linspace(0.0, 1.0, n + 1))
        configs = []
        for k in range(n):
            upper = macs <= edges[k + 1] if k == n - 1 else macs < edges[k + 1]
            members = np.nonzero((macs >= edges[k]) & upper)[0]
            pick = int(rng.choice(members))
            configs.append({"widths": pool[pick], "macs": int(macs[pick])})
        return {"pool": len(pool), "configs": configs}

    def ranking_scores_cell(self, ckpt: Path, configs: list[dict[str, Any]]) -> dict[str, Any]:
        """Held-out top-1 of every config per side the search scores in this supernet (both
        for BCNet, left only for the sandwich rule)."""
        evaluator = self.evaluator(ckpt)
        start = time.perf_counter()
        per_config = [evaluator.sides(c["widths"]) for c in configs]
        by_side = {
            side: [scores[k] for scores in per_config]
            for k, side in enumerate(evaluator.side_names)
        }
        return {
            "supernet": str(ckpt),
            **by_side,
            "seconds": round(time.perf_counter() - start, 2),
        }

    def ranking_truth_cell(self, i: int, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Ground truth: the config trained from scratch, test top-1 (never used to choose)."""
        args = self.args
        folder = self.work / "ranking"
        init, trained = folder / f"config-{i:02d}-init.pt", folder / f"config-{i:02d}.pt"
        if not trained.is_file():
            meta = {**self.meta(), **self.space_meta()}
            payload = random_init_subnet(
                meta, entry["widths"], self.recipe, seed=30_000 + i, label="ranking"
            )
            save_subnet(payload, init)
            train_from_scratch(
                init, trained, epochs=args.ranking_epochs, lr=args.scratch_lr, seed=0
            )
        payload = read_subnet(trained)
        figures = measure(trained, latency=False)
        return {
            "index": i,
            "macs": figures["macs"],
            "top1": figures["top1"],
            "test_images": figures["test_images"],
            "heldout_top1": payload["finetune"]["history"][-1]["heldout_top1"],
            "train_seconds": finetune_seconds(payload),
        }


def main(argv: list[str] | None = None) -> int:
    passive_openmp()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.fresh:
        for name in ("cells", "work", "settings.json", "tables.md", "pareto.png", "summary.json"):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ignore = out / ".gitignore"
    if not ignore.is_file():
        write_text_atomic("work/\n", ignore)  # checkpoints: large, rebuilt by a rerun
    check_settings(out, args)
    exe = os.path.relpath(sys.executable)
    exe = sys.executable if exe.startswith("..") else exe
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join([exe, "benchmarks/headline.py", *[a for a in given if a != "--fresh"]])
    bench = Headline(args)
    log(f"headline benchmark -> {out} ({command})")
    bench.run()
    print(report(bench, command), flush=True)
    log(f"finished; {len(bench.cells.failed)} failed cell(s)")
    return 1 if bench.cells.failed else 0


if __name__ == "__main__":
    sys.exit(main())
