"""A tiny trained supernet (resnet20 on 12x12 synthetic images) shared by the search tests.

Trained by the root conftest's plain loop (``train_tiny_supernet``: full width, then
BCNet-style random widths on both sides) so the tests do not depend on the trainer; saved
with ``save_supernet`` (with a recipe and loss records, as the trainer writes them) so the
CLI can load it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from widthsearch.recipes.recipe import Recipe
from widthsearch.search import (
    LatencyTable,
    SubnetEvaluator,
    build_evaluator,
    load_latency_table,
    write_json_atomic,
)
from widthsearch.supernet.checkpoint import load_supernet, save_supernet
from widthsearch.supernet.data import get_data

HELDOUT = 200  # held-out split carved from the synthetic training data


def tiny_recipe() -> Recipe:
    # as a recipe file's tables: a misspelt key is an error, not a new attribute
    return Recipe.from_dict(
        {
            "name": "tiny-test",
            "model": {"name": "resnet20"},
            "data": {"name": "synthetic", "heldout_size": HELDOUT, "train_limit": 1200, "seed": 3},
            "space": {"bins": 8},
            "search": {"heldout_images": 64, "calib_batches": 1, "eval_batch_size": 32},
        }
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, train_tiny_supernet) -> Path:
    recipe = tiny_recipe()
    sn, records = train_tiny_supernet(
        heldout_size=recipe.data.heldout_size,
        seed=recipe.data.seed,
        train_limit=recipe.data.train_limit,
        bins=8,
        full_steps=40,
        random_steps=16,
    )
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    save_supernet(path, sn, recipe=recipe.to_dict(), loss_records=records, epoch=1)
    return path


@pytest.fixture()
def loaded(tiny_checkpoint):
    """A fresh (supernet, payload) per test: strategies must not see each other's state."""
    return load_supernet(tiny_checkpoint)


@pytest.fixture()
def evaluator(loaded) -> SubnetEvaluator:
    sn, payload = loaded
    return build_evaluator(sn, payload)


@pytest.fixture()
def loaded_splits(loaded):
    """The data splits of ``loaded``'s stored recipe (un-augmented), as training made them:
    what the evaluator must score on."""
    sn, payload = loaded
    data = payload["recipe"]["data"]
    return get_data(
        data["name"],
        heldout_size=data["heldout_size"],
        seed=data["seed"],
        train_limit=data["train_limit"] or None,
        augment=False,
        synthetic_in_chans=sn.meta["in_chans"],
        synthetic_input_size=sn.meta["input_size"],
    )


@pytest.fixture(scope="session")
def latency_table_path(tiny_checkpoint, synthetic_latency_table) -> Path:
    """A made-up table of the tiny supernet, written as ``widthsearch profile`` would."""
    sn, _ = load_supernet(tiny_checkpoint)
    path = tiny_checkpoint.with_name("lat.json")
    write_json_atomic(synthetic_latency_table(sn).to_dict(), path)
    return path


@pytest.fixture()
def latency_table(latency_table_path) -> LatencyTable:
    return load_latency_table(latency_table_path)


@pytest.fixture(scope="session")
def convnext_supernet():
    """``tv:convnext_tiny`` untrained, 4 classes, traced at 32x32 (channels-last blocks:
    LayerNorm and Linear on the last dimension), in eval mode; its layer scales (init 1e-6)
    set near 1 and its biases (init 0) made non-zero, so that what the blocks compute shows
    in the outputs. Tests leave it as they found it."""
    import torch
    import torchvision
    from widthsearch.supernet import Supernet

    torch.manual_seed(0)
    model = torchvision.models.get_model("convnext_tiny", weights=None, num_classes=4)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, torchvision.models.convnext.CNBlock):
                block.layer_scale.uniform_(0.5, 1.5)
            if isinstance(block, torch.nn.Linear | torch.nn.Conv2d) and block.bias is not None:
                block.bias.normal_(0.0, 0.1)
    return Supernet.from_model(model, torch.zeros(2, 3, 32, 32), bins=8).eval()
