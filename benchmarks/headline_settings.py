"""The headline benchmark's settings: scale presets, the recipe it runs, the settings check.

``headline.py``'s flags override a preset; :func:`check_settings` keeps one output folder to
one set of settings, and :func:`pct` names a budget in cell names and tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from widthsearch.recipes.recipe import Recipe, load_recipe
from widthsearch.search import list_strategies
from widthsearch.supernet.checkpoint import write_json_atomic

RECIPE = "resnet20-fashion-mnist"
BASELINE = "uniform"

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
