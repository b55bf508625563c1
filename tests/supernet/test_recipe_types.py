"""The recipe as data (widthsearch.supernet.recipe): what a file stores comes back typed,
with the defaults held once; an older file's extra keys are skipped, bad values are one line."""

from __future__ import annotations

import pytest
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import CheckpointError
from widthsearch.supernet.recipe import Recipe, SearchSection, stored_recipe


def test_a_stored_recipe_comes_back_equal():
    recipe = load_recipe("resnet20-fashion-mnist")
    recipe.search.budgets = [0.1, "20M"]
    recipe.finetune.inheritance = ["left", "bn"]
    again = Recipe.from_dict(recipe.to_dict())
    assert again == recipe and again.source == recipe.source
    assert stored_recipe({"recipe": recipe.to_dict()}) == recipe


def test_missing_values_take_the_defaults_and_older_extras_are_skipped():
    stored = {"search": {"heldout_images": 64, "retired_option": 3}, "gone": {"x": 1}}
    recipe = stored_recipe({"recipe": stored})
    assert recipe.search.heldout_images == 64
    assert recipe.search.calib_batches == SearchSection().calib_batches
    assert stored_recipe({}) == Recipe()  # a file without a recipe: every default
    with pytest.raises(ValueError, match="unknown key 'retired_option' in recipe section"):
        Recipe.from_dict(stored)  # a recipe file is strict


def test_an_invalid_stored_recipe_is_one_clear_line():
    with pytest.raises(CheckpointError, match=r"^x\.pt: its stored recipe is not valid: .*int"):
        stored_recipe({"recipe": {"search": {"heldout_images": "many"}}}, where="x.pt")
    with pytest.raises(CheckpointError, match="trainer must be one of bcnet, sandwich"):
        stored_recipe({"recipe": {"train": {"trainer": "nosuch"}}})


def test_finetune_init_is_checked():
    assert Recipe().finetune.init == "inherit"
    assert Recipe.from_dict({"finetune": {"init": "random"}}).finetune.init == "random"
    with pytest.raises(ValueError, match=r"\[finetune\].init must be one of inherit, random"):
        Recipe.from_dict({"finetune": {"init": "pretrained"}})
