"""What the supernet trainer actually trains: every channel equally often (spied on the
steps it takes, not on the sampler alone), on the warm-up + cosine schedule, with the
recipe's label smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import widthsearch.supernet.trainer as trainer_mod
import widthsearch.supernet.trainer_kinds as kinds_mod
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.sampling import channel_usage
from widthsearch.supernet.train import train_supernet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trained_configs_are_fair_per_channel_and_follow_the_schedule(
    train_tiny, tmp_path, monkeypatch
):
    recipe = load_recipe(str(train_tiny))
    recipe.data.train_limit = 384  # 12 steps of 32 per epoch: two whole sampler cycles
    recipe.train.epochs = 2
    recipe.train.lr = 0.1
    recipe.train.warmup_epochs = 0.5  # 6 warm-up steps
    recipe.train.label_smoothing = 0.1
    recipe.train.eval_batches = 0
    trained, lrs, smoothing = [], [], []
    real_step = kinds_mod.bcnet_step
    real_train_step = trainer_mod.SupernetTrainer._train_step

    def spy_step(sn, x, y, cfg, **kwargs):
        trained.append(cfg)  # None: a full-width step
        smoothing.append(kwargs["criterion"].label_smoothing)
        return real_step(sn, x, y, cfg, **kwargs)

    def spy_train_step(self, x, y):
        lrs.append(self.optimizer.param_groups[0]["lr"])  # the lr this step is taken with
        return real_train_step(self, x, y)

    monkeypatch.setattr(kinds_mod, "bcnet_step", spy_step)
    monkeypatch.setattr(trainer_mod.SupernetTrainer, "_train_step", spy_train_step)
    result = train_supernet(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)
    space = load_supernet(result.checkpoint)[0].space

    assert len(trained) == len(lrs) == 24
    assert sum(cfg is None for cfg in trained) == 24 // (recipe.train.full_every + 1)
    usage = {g.name: np.zeros(g.max_channels, dtype=np.int64) for g in space.searchable}
    for cfg in trained:
        sides = ("left",) if cfg is None else ("left", "right")  # full width: one pass
        for name, counts in channel_usage(space, cfg, sides=sides).items():
            usage[name] += counts
    for name, counts in usage.items():
        assert counts.min() == counts.max() > 0, (name, counts)
    assert any(cfg is not None and cfg != space.max() for cfg in trained)

    expected = [0.1 * (s + 1) / 6 for s in range(6)]
    expected += [0.1 * 0.5 * (1 + math.cos(math.pi * (s - 6) / 18)) for s in range(6, 24)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert smoothing == [0.1] * 24


def test_a_new_trainer_kind_is_one_class_and_its_registration(train_tiny, tmp_path):
    from widthsearch.supernet import TrainerKind, get_trainer, list_trainers, register_trainer
    from widthsearch.supernet.steps import sandwich_step
    from widthsearch.supernet.trainer_kinds import _KINDS, StepLosses

    calls = []

    @register_trainer("max-only")
    class MaxOnly(TrainerKind):
        sides = ("left",)

        def step(self, sn, x, y, index, ctx):
            calls.append(index)
            (loss,) = sandwich_step(sn, x, y, [self.space.max()], criterion=ctx.criterion)
            return StepLosses(["max"], [self.space.max()], loss.reshape(1))

    try:
        assert "max-only" in list_trainers() and get_trainer("max-only") is MaxOnly
        with pytest.raises(ValueError, match="already registered"):
            register_trainer("max-only")(MaxOnly)
        recipe = load_recipe(str(train_tiny))
        recipe.data.train_limit = 128  # 4 steps
        recipe.train.epochs = 1
        recipe.train.trainer = "max-only"
        result = train_supernet(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)
        assert calls == [0, 1, 2, 3]
        (entry,) = result.history
        assert entry["trainer"] == "max-only" and set(entry) >= {"loss_max", "top1_max"}
    finally:
        _KINDS.pop("max-only", None)
    with pytest.raises(ValueError, match="trainer must be one of bcnet, sandwich, budgets, plain"):
        get_trainer("max-only")
