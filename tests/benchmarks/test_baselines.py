"""Torch-Pruning as a baseline (benchmarks/baselines.py): budgets met, widths exact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from widthsearch.supernet import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import baselines

META = {"model": "resnet20", "num_classes": 10, "in_chans": 1, "input_size": 16}


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10, in_chans=1).eval()


def test_taylor_pruning_ranked_globally_stops_just_under_the_budget(trained):
    """Global Taylor ranking lands just under the budget; the per-group L1 ratio stops in
    steps further below. Both pruned networks are described exactly by supernet widths (same
    shapes, MACs and params as the cost model)."""
    full = baselines.prune_to_budget(trained, META, 10**12)["full_macs"]
    budget = full // 4
    torch.manual_seed(1)
    batches = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))) for _ in range(2)]
    taylor = baselines.prune_to_budget(
        trained, META, budget, importance="taylor", batches=batches, global_ranking=True
    )
    l1 = baselines.prune_to_budget(trained, META, budget)
    assert taylor["verified"] and l1["verified"]
    assert 0.98 * budget <= taylor["macs"] <= budget  # 16 x 16 maps: coarser steps than 28
    assert l1["macs"] <= budget
    assert taylor["widths"] != l1["widths"]
    assert all(p.grad is None for p in taylor["module"].parameters())  # no stale gradients
    assert all(p.grad is None for p in trained.parameters())  # the input is left alone


def test_taylor_pruning_needs_data_and_unknown_importance_is_refused(trained):
    with pytest.raises(ValueError, match="batches of training data"):
        baselines.prune_to_budget(trained, META, 10**6, importance="taylor")
    with pytest.raises(ValueError, match="importance must be one of"):
        baselines.prune_to_budget(trained, META, 10**6, importance="fpgm")


def test_pruning_any_model_keeps_its_classifier_and_any_channel_count():
    """A torchvision MobileNetV2 (its classifier is ``classifier.1``, its widest group 1,280
    channels, wider than resnet20's 64) prunes under the budget and its widths describe the
    pruned network exactly."""
    meta = {**META, "model": "tv:mobilenet_v2"}
    torch.manual_seed(0)
    model = create_model("tv:mobilenet_v2", num_classes=10, in_chans=1).eval()
    full = baselines.prune_to_budget(model, meta, 10**12)["full_macs"]
    pruned = baselines.prune_to_budget(model, meta, full // 2)
    assert pruned["verified"] and pruned["macs"] <= full // 2
    assert pruned["module"].classifier[1].out_features == 10
    assert baselines.any_width(meta)["bins"] == 1280
