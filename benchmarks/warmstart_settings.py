"""What ``benchmarks/warmstart.py`` runs: its presets, command line and recipe."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from widthsearch.recipes.recipe import Recipe, load_recipe

STRATEGIES = ["bisection", "evolution", "peel", "uniform"]
OPTIONAL_CELLS = ["ft-second", "ft-uniform", "ft-trained", "tp", "tp-taylor"]
TAYLOR_BATCHES = 16  # training batches whose gradients rank channels for tp-taylor
MODEL = "resnet20"  # the headline's network; --model runs the benchmark on another one

# fine-tuning of every compressed network (not of the from-scratch baselines); not stored in
# settings.json at these values, so cells made before the options existed stay valid
FINETUNE_DEFAULTS = {"finetune_lr": 0.02, "finetune_alpha": 0.5}
UNRECORDED_DEFAULTS = {
    **FINETUNE_DEFAULTS,
    "importance": "gamma",
    "inplace": False,
    "trainer": "bcnet",
    "strategies": STRATEGIES,
    "data": "fashion-mnist",
    "model": MODEL,
}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "data": "fashion-mnist",
        "train_limit": 0,
        "test_limit": 0,
        "pretrain_epochs": 8,
        "supernet_epochs": 4,
        "supernet_lr": 0.02,
        "finetune_epochs": 2,
        "scratch_epochs": 10,
        "trials": 100,
        "heldout_images": 2000,
        "calib_batches": 4,
    },
    "smoke": {  # every cell kind on synthetic data
        "data": "synthetic",
        "train_limit": 1000,
        "test_limit": 500,
        "pretrain_epochs": 1,
        "supernet_epochs": 1,
        "supernet_lr": 0.02,
        "finetune_epochs": 1,
        "scratch_epochs": 1,
        "trials": 8,
        "heldout_images": 250,
        "calib_batches": 1,
    },
}


def parse_args(argv: Sequence[str] | None, *, description: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add("--smoke", action="store_true", help="every cell kind on synthetic data, minutes")
    add("--out", default="benchmarks/results/warmstart", help="cells, tables, checkpoints")
    parts = ["all", "pipeline", "scratch", "control", "random", "latency"]
    add("--part", choices=parts, default="all")
    add("--report", action="store_true", help="only print the table of the finished cells")
    add("--seeds", type=int, nargs="+", default=[0, 1])
    add("--budgets", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    add("--model", default=MODEL, help="built-in name, tv:NAME or timm:NAME (28x28, 1 channel)")
    add("--threads", type=int, default=1, help="torch threads")
    add("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    add("--skip", nargs="*", default=[], choices=OPTIONAL_CELLS, help="cells not to run")
    add("--widths-seed", type=int, help="control cells train this seed's searched widths")
    add("--channel-order", default="ends", choices=["ends", "front", "none"])
    add("--importance", default="gamma", choices=["gamma", "taylor"], help="channel importance")
    add("--trainer", default="bcnet", choices=["bcnet", "budgets"], help="supernet trainer kind")
    add("--strategies", nargs="+", default=STRATEGIES, help="search strategies")
    add(
        "--inplace",
        action="store_true",
        help="budgets trainer: train the full width too; subnets and fine-tunes distil from it",
    )
    add("--finetune-lr", type=float, default=FINETUNE_DEFAULTS["finetune_lr"])
    add("--finetune-alpha", type=float, default=FINETUNE_DEFAULTS["finetune_alpha"])
    for key, value in PRESETS["default"].items():
        add(f"--{key.replace('_', '-')}", type=type(value))
    args = parser.parse_args(argv)
    for key, value in PRESETS["smoke" if args.smoke else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def model_meta(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's network as a supernet ``meta``: 8 widths per group, no rounding."""
    model = {"model": args.model, "num_classes": 10, "in_chans": 1, "input_size": 28}
    return {**model, "bins": 8, "min_bins": 1, "round_to": 1}


def build_recipe(args: argparse.Namespace, seed: int) -> Recipe:
    recipe = load_recipe("resnet20-fashion-mnist")
    recipe.model.name = args.model
    recipe.data.name = args.data
    recipe.data.train_limit = args.train_limit
    recipe.data.test_limit = args.test_limit
    recipe.pretrain.epochs = args.pretrain_epochs
    recipe.pretrain.seed = seed
    recipe.train.init = "pretrain"
    recipe.train.channel_order = args.channel_order
    recipe.train.trainer = args.trainer
    recipe.train.importance = args.importance
    recipe.train.epochs = args.supernet_epochs
    recipe.train.lr = args.supernet_lr
    recipe.train.distill = bool(args.inplace)
    recipe.train.seed = seed
    recipe.search.strategies = list(args.strategies)
    recipe.search.budgets = list(args.budgets)
    recipe.search.evolution_trials = args.trials
    recipe.search.heldout_images = args.heldout_images
    recipe.search.calib_batches = args.calib_batches
    recipe.finetune.epochs = args.finetune_epochs
    return recipe


def random_supernet_recipe(args: argparse.Namespace, seed: int) -> Recipe:
    """The path without a trained network: the BCNet supernet from random weights, as many
    epochs as pretraining and the warm supernet together, at the pretraining lr."""
    recipe = build_recipe(args, seed)
    recipe.train.init = "scratch"
    recipe.train.trainer, recipe.train.distill = "bcnet", False
    recipe.train.epochs = args.pretrain_epochs + args.supernet_epochs
    recipe.train.lr = recipe.pretrain.lr
    return recipe
