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
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn
from widthsearch.evaluate import (
    evaluate_model,
    extract_subnet,
    finetune_subnet,
    heldout_data,
    plot_pareto,
    read_subnet,
    save_subnet,
)
from widthsearch.evaluate.measure import counted_macs
from widthsearch.recipes.recipe import Recipe, load_recipe
from widthsearch.search import (
    build_evaluator,
    format_macs,
    list_strategies,
    resolve_budgets,
    run_search,
    search_options,
)
from widthsearch.supernet import Supernet
from widthsearch.supernet.checkpoint import (
    build_supernet,
    load_supernet,
    save_supernet,
    write_json_atomic,
    write_text_atomic,
)
from widthsearch.supernet.train import train_supernet

RECIPE = "resnet20-fashion-mnist"
BASELINE = "uniform"
SCRATCH = "scratch-uniform"
PRUNING = "torch-pruning"

# Scale presets; explicit flags override them. Default: 45-60 min on this 2-core machine.
# Measured here with another job on the cores (per 1,000 training images and epoch): BCNet
# 5.5 s, sandwich 8.5 s, plain full network 2.8 s, fine-tune 3.4 s (idle machine: BCNet about
# 2.1 s). 12,000 images, 6 supernet epochs, 2 fine-tune epochs and 3 ranking epochs then come
# to about 40 min idle, about an hour shared; 20,000 images would not fit an hour shared.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "train_limit": 12000,
        "test_limit": 0,
        "heldout_size": 5000,
        "supernet_epochs": 6,
        "finetune_epochs": 2,
        "ranking_configs": 12,
        "ranking_epochs": 3,
        "seeds": 1,
        "budgets": [0.25, 0.5, 0.75],
        "trials": 60,
        "samples": 20,
        "relax_steps": 100,
        "heldout_images": 1000,
        "calib_batches": 4,
        "latency_seconds": 0.5,
        "scratch_lr": 0.1,
    },
    "smoke": {
        "train_limit": 1000,
        "test_limit": 1000,
        "heldout_size": 500,
        "supernet_epochs": 1,
        "finetune_epochs": 1,
        "ranking_configs": 12,
        "ranking_epochs": 1,
        "seeds": 1,
        "budgets": [0.25, 0.5, 0.75],
        "trials": 10,
        "samples": 3,
        "relax_steps": 5,
        "heldout_images": 250,
        "calib_batches": 1,
        "latency_seconds": 0.05,
        "scratch_lr": 0.1,
    },
}

_STARTED = time.perf_counter()


def log(message: str) -> None:
    """One progress line with the elapsed wall time (the background run's log)."""
    minutes = (time.perf_counter() - _STARTED) / 60
    print(f"[{minutes:6.1f} min] {message}", flush=True)


def passive_openmp() -> None:
    """Re-execute this script with ``OMP_WAIT_POLICY=PASSIVE`` unless it is set.

    The variable is read when OpenMP loads (with torch), so it cannot be set afterwards.
    Spinning waits collapse throughput when another job shares the 2 cores.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.argv])


# ---- settings -------------------------------------------------------------------------------


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


def build_recipe(args: argparse.Namespace, trainer: str = "bcnet") -> Recipe:
    """The shipped resnet20 recipe with the benchmark's scale; only the trainer differs."""
    recipe = load_recipe(RECIPE)
    recipe.data.train_limit = args.train_limit
    recipe.data.test_limit = args.test_limit
    recipe.data.heldout_size = args.heldout_size
    recipe.train.trainer = trainer
    recipe.train.init = "scratch"  # this benchmark is the random-init pipeline (its baseline)
    recipe.train.lr = 0.1  # the recipe's lr when this benchmark was measured
    recipe.train.epochs = args.supernet_epochs
    recipe.search.budgets = list(args.budgets)
    recipe.search.strategies = list_strategies()
    recipe.search.evolution_trials = args.trials
    recipe.search.random_samples = args.samples
    recipe.search.relax_steps = args.relax_steps
    recipe.search.heldout_images = args.heldout_images
    recipe.search.calib_batches = args.calib_batches
    recipe.finetune.epochs = args.finetune_epochs
    recipe.eval.latency_seconds = args.latency_seconds
    return recipe


SETTING_KEYS = (
    "train_limit",
    "test_limit",
    "heldout_size",
    "supernet_epochs",
    "finetune_epochs",
    "ranking_configs",
    "ranking_epochs",
    "seeds",
    "budgets",
    "trials",
    "samples",
    "relax_steps",
    "heldout_images",
    "calib_batches",
    "latency_seconds",
    "scratch_lr",
)


def check_settings(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Refuse to mix cells of different settings in one folder (a silent mix would lie)."""
    settings = {k: getattr(args, k) for k in SETTING_KEYS}
    path = out / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = [k for k in SETTING_KEYS if saved.get(k) != settings[k]]
        if changed:
            sys.exit(
                f"{out} holds cells made with other settings ({', '.join(changed)}); "
                "use another --out, or --fresh to start over"
            )
    else:
        write_json_atomic(settings, path)
    return settings


def pct(fraction: float) -> str:
    return f"{round(100 * fraction)}"


# ---- cells ----------------------------------------------------------------------------------


class Cells:
    """One JSON file per finished unit of work; a rerun reads it instead of redoing the work."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "cells"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.failed: list[str] = []

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The cell's figures: from its file, else computed, saved and returned.

        A failing cell is logged and skipped (``None``), so one broken baseline does not cost
        the rest of an hour-long run; the run exits non-zero at the end.
        """
        done = self.get(name)
        if done is not None:
            log(f"{name}: done before, skipped")
            return done
        log(f"{name}: running")
        start = time.perf_counter()
        try:
            doc = work()
        except Exception:
            log(f"{name}: FAILED\n{traceback.format_exc()}")
            self.failed.append(name)
            return None
        doc = {"cell": name, "wall_seconds": round(time.perf_counter() - start, 2), **doc}
        write_json_atomic(doc, self.folder / f"{name}.json")
        log(f"{name}: done in {doc['wall_seconds']:.0f} s")
        return doc


# ---- shared pieces --------------------------------------------------------------------------


def train_cell(recipe: Recipe, folder: Path) -> dict[str, Any]:
    """Train (or finish training) a supernet; its training seconds exclude per-epoch evals."""
    ckpt = folder / "supernet.pt"
    result = train_supernet(
        recipe,
        out_dir=folder,
        resume=ckpt.is_file(),
        progress=False,
        log=lambda line: log(f"  {recipe.train.trainer} {line}"),
    )
    history = result.history
    seconds = [float(h["seconds"]) for h in history]
    return {
        "trainer": recipe.train.trainer,
        "checkpoint": str(ckpt),
        "epochs": len(history),
        "train_seconds": round(sum(seconds), 2),
        "seconds_per_epoch": round(statistics.median(seconds), 2) if seconds else None,
        "train_images": int(recipe.data.train_limit),
        "history": history,
    }


def finetune_seconds(payload: Mapping[str, Any]) -> float:
    """Training seconds of a fine-tune (the sum of its epochs, resumes included)."""
    return round(sum(float(h["seconds"]) for h in payload["finetune"]["history"]), 2)


def tuned_figures(path: Path, payload: Mapping[str, Any]) -> dict[str, Any]:
    """What every fine-tuned cell reports: fine-tune time and log, then the measurements."""
    return {
        "finetune_seconds": finetune_seconds(payload),
        "finetune_history": payload["finetune"]["history"],
        **measure(path),
    }


def measure(path: Path, *, latency: bool = True) -> dict[str, Any]:
    """Test top-1, MACs, params and latency (ratio to the full width, timed in the same call).

    The full model is rebuilt untrained (``supernet`` dropped from the payload): its latency,
    MACs and params do not depend on the weights, and its top-1 comes from its own cell.
    """
    payload = read_subnet(path)
    payload["supernet"] = None
    figures = evaluate_model(payload, latency=latency, full=latency, progress=False)
    keep = ("top1", "macs", "macs_counted", "params", "latency_ms", "test_images", "ratios")
    out = {k: figures.get(k) for k in keep}
    if latency:
        full = figures["full"]
        out["full"] = {k: full.get(k) for k in ("macs", "params", "latency_ms")}
    return out


def random_init_subnet(
    meta: Mapping[str, Any], widths: Mapping[str, int], recipe: Recipe, *, seed: int, label: str
) -> dict[str, Any]:
    """A subnet payload with fresh random weights (the from-scratch baselines)."""
    torch.manual_seed(seed)
    sn = build_supernet(dict(meta))
    cfg = sn.space.validate(widths)
    module = sn.extract(cfg, side="left")
    return {
        "module": module,
        "widths": {k: int(v) for k, v in cfg.items()},
        "inheritance": {"chosen": "random-init", "scores": {}},
        "meta": dict(sn.meta),
        "macs": int(sn.macs(cfg)),
        "params": int(sn.params(cfg)),
        "supernet": None,
        "strategy": label,
        "budget_macs": None,
        "score": None,
        "full_macs": int(sn.macs()),
        "full_params": int(sn.params()),
        "recipe": recipe.to_dict(),
    }


def train_from_scratch(
    init: Path, out: Path, *, epochs: int, lr: float, seed: int, eval_images: int = 1000
) -> dict[str, Any]:
    """Plain training through the fine-tune loop (SGD + cosine, no teacher), resumable."""
    ckpt = out.with_name(out.stem + ".ckpt.pt")
    return finetune_subnet(
        init,
        out=out,
        epochs=epochs,
        lr=lr,
        teacher=None,
        seed=seed,
        eval_images=eval_images,
        resume=ckpt.is_file(),
        progress=False,
        log=lambda line: log(f"  {out.stem}: {line}"),
    )


def finetune(subnet: Path, out: Path, recipe: Recipe, *, teacher: Path | None, seed: int):
    """The one fine-tune every compressed network gets (recipe epochs, lr, distillation)."""
    ckpt = out.with_name(out.stem + ".ckpt.pt")
    return finetune_subnet(
        subnet,
        out=out,
        epochs=recipe.finetune.epochs,
        lr=recipe.finetune.lr,
        weight_decay=recipe.finetune.weight_decay,
        teacher=teacher if recipe.finetune.distill else None,
        seed=seed,
        resume=ckpt.is_file(),
        progress=False,
        log=lambda line: log(f"  {out.stem}: {line}"),
    )


class Lazy:
    """Loaded supernets, evaluators and held-out batches, built once per process on demand."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


# ---- Torch-Pruning --------------------------------------------------------------------------


def prune_to_budget(model: nn.Module, meta: Mapping[str, Any], budget: int) -> dict[str, Any]:
    """L1 magnitude pruning (Torch-Pruning), the ratio bisected to the widest net <= budget.

    Returns the pruned module, the ratio, its widths per supernet group and the check that
    those widths describe it exactly (same tensor shapes as the supernet's extraction, same
    MACs and params as the cost model), which is what lets the shared fine-tune and measure
    code treat it as any other subnet.
    """
    import torch_pruning as tp

    example = torch.zeros(
        1, int(meta["in_chans"]), int(meta["input_size"]), int(meta["input_size"])
    )

    def prune(ratio: float) -> nn.Module:
        pruned = copy.deepcopy(model).eval()
        pruner = tp.pruner.MagnitudePruner(
            pruned,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[pruned.fc],
        )
        pruner.step()
        return pruned

    # MACs fall as the ratio grows: keep MACs(hi) <= budget < MACs(lo). Not 0.99: a ratio
    # that would empty a layer makes Torch-Pruning skip it (nothing pruned at all)
    lo, hi = 0.0, 0.9
    if counted_macs(prune(hi), example) > budget:
        raise ValueError(f"Torch-Pruning cannot reach {budget} MACs")
    for _ in range(20):
        mid = (lo + hi) / 2
        if counted_macs(prune(mid), example) <= budget:
            hi = mid
        else:
            lo = mid
    pruned = prune(hi)
    # every width valid: bins = the widest group, so each group may take any channel count
    wide = {**dict(meta), "bins": 64, "min_bins": 1, "round_to": 1}
    sn = build_supernet(wide)
    widths = {g.name: int(pruned.get_submodule(g.name).out_channels) for g in sn.space.searchable}
    cfg = sn.space.validate(widths)
    shapes = {k: tuple(v.shape) for k, v in sn.extract(cfg).state_dict().items()}
    same_shapes = shapes == {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    macs = counted_macs(pruned, example)
    params = sum(p.numel() for p in pruned.parameters())
    verified = same_shapes and macs == sn.macs(cfg) and params == sn.params(cfg)
    return {
        "module": pruned,
        "ratio": hi,
        "widths": cfg,
        "meta": dict(sn.meta),
        "macs": int(macs),
        "params": int(params),
        "verified": bool(verified),
        "full_macs": int(sn.macs()),
        "full_params": int(sn.params()),
    }


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
            data = self.lazy.get("heldout", lambda: heldout_data(payload, sn.meta))
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
            save_subnet(
                {
                    "module": pruned["module"],
                    "widths": pruned["widths"],
                    "inheritance": {"chosen": "torch-pruning-l1", "ratio": pruned["ratio"]},
                    "meta": pruned["meta"],
                    "macs": pruned["macs"],
                    "params": pruned["params"],
                    "supernet": None,
                    "strategy": PRUNING,
                    "budget_macs": budget,
                    "score": None,
                    "full_macs": pruned["full_macs"],
                    "full_params": pruned["full_params"],
                    "recipe": self.recipe.to_dict(),
                },
                pruned_path,
            )
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


# ---- tables ---------------------------------------------------------------------------------


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
