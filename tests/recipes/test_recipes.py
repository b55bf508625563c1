"""Shipped recipes: every one loads and validates; the GPU recipes train one short epoch on
synthetic data on the CPU with all their settings (20 bins, round_to 8, label smoothing,
warm-up, distillation)."""

from __future__ import annotations

import math

import pytest
import torch
from widthsearch.recipes.recipe import list_recipes, load_recipe
from widthsearch.search import list_strategies
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.train import train_supernet

GPU_RECIPES = ["resnet50-imagenet", "mobilenetv2-imagenet"]


def test_shipped_recipes_are_the_documented_ones():
    assert set(list_recipes()) >= {
        "quick",
        "resnet20-fashion-mnist",
        "resnet56-cifar10",
        *GPU_RECIPES,
    }


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_loads_and_names_known_strategies(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert set(recipe.search.strategies) <= set(list_strategies())
    assert "uniform" in recipe.search.strategies  # every report has its baseline
    for budget in recipe.search.budgets:
        assert isinstance(budget, str) or 0 < budget <= 1
    assert recipe.train.epochs >= 1 and recipe.finetune.epochs >= 1


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipe_trains_one_epoch_on_synthetic_data_on_cpu(name, tmp_path):
    recipe = load_recipe(name)
    assert (recipe.space.bins, recipe.space.round_to) == (20, 8)
    assert recipe.train.label_smoothing > 0 and recipe.train.distill
    recipe.data.name = "synthetic"
    recipe.data.heldout_size, recipe.data.train_limit = 8, 8
    recipe.data.batch_size, recipe.data.workers = 4, 0
    recipe.model.input_size = 32
    recipe.train.epochs, recipe.train.eval_batches = 1, 1
    recipe.train.warmup_epochs = 0.5  # keeps the warm-up code path inside the one epoch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_supernet(recipe, out_dir=tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    sn, payload = load_supernet(tmp_path / "supernet.pt")
    assert sn.meta["model"] == recipe.model.name
    assert payload["history"][0]["epoch"] == 1 and math.isfinite(payload["history"][0]["loss"])
    for group in sn.space.searchable:
        assert all(c % 8 == 0 or c == group.max_channels for c in group.choices), group.name
