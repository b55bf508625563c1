"""The ``budgets`` trainer: one subnet near each requested MACs budget per step, left side,
distilled from the trained network; its draws lie where a search answer lies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import widthsearch.supernet.trainer_kinds as kinds_mod
from widthsearch.evaluate.teacher import load_teacher
from widthsearch.recipes._cmd_run import _training_done
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import Supernet, create_model
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.errors import CheckpointError
from widthsearch.supernet.recipe import validate
from widthsearch.supernet.sampling import BudgetSampler
from widthsearch.supernet.steps import Teacher, budgets_step
from widthsearch.supernet.train import pretrain_network, train_supernet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet20() -> Supernet:
    model = create_model("resnet20", num_classes=10, in_chans=1)
    return Supernet.from_model(model, torch.zeros(1, 1, 16, 16), bins=8)


def test_every_draw_lies_in_its_budgets_window_and_the_draws_vary(resnet20):
    sn, full = resnet20, resnet20.macs()
    budgets = [0.1, 0.25, 0.5]
    sampler = BudgetSampler(sn.space, macs=sn.macs, budgets=budgets, seed=3, window=0.9)
    plans = [sampler.plan(t) for t in range(60)]
    for i, budget in enumerate(budgets):
        fractions = np.array([sn.macs(plan[i]) / full for plan in plans])
        assert np.all(fractions <= budget) and np.all(fractions >= 0.9 * budget), budget
        distinct = {tuple(sorted(plan[i].items())) for plan in plans}
        assert len(distinct) > 20, budget  # the neighbourhood is trained, not one config
        for plan in plans:
            sn.space.validate(plan[i])
    # the level of each budget (what the per-epoch evaluation reports) is uniform and fits
    for level, budget in zip(sampler.levels, budgets, strict=True):
        assert sn.macs(level) <= budget * full
        ratios = {level[g.name] / g.max_channels for g in sn.space.searchable}
        assert max(ratios) - min(ratios) < 0.2


def test_draws_are_a_function_of_seed_and_step(resnet20):
    sn = resnet20

    def sampler(seed: int) -> BudgetSampler:
        return BudgetSampler(sn.space, macs=sn.macs, budgets=[0.25, 0.5], seed=seed)

    a, b, c = sampler(1), sampler(1), sampler(2)
    assert [a.plan(t) for t in (5, 0, 7)] == [b.plan(t) for t in (5, 0, 7)]
    assert [a.plan(t) for t in range(5)] != [c.plan(t) for t in range(5)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budgets": []}, "at least one MACs budget"),
        ({"budgets": [0.0]}, r"MACs fractions in \(0, 1\]"),
        ({"budgets": [1.5]}, r"MACs fractions in \(0, 1\]"),
        ({"budgets": [0.5], "window": 0.0}, "window"),
        ({"budgets": [0.5], "spread": -1}, "spread"),
    ],
)
def test_bad_sampler_arguments_say_what_is_wrong(resnet20, kwargs, match):
    with pytest.raises(ValueError, match=match):
        BudgetSampler(resnet20.space, macs=resnet20.macs, **kwargs)
    with pytest.raises(ValueError, match="step must be >= 0"):
        BudgetSampler(resnet20.space, macs=resnet20.macs, budgets=[0.5]).plan(-1)


def test_a_step_trains_only_the_left_channels_its_configs_use(resnet20):
    sn = resnet20
    sampler = BudgetSampler(sn.space, macs=sn.macs, budgets=[0.1, 0.25], seed=0)
    cfgs = sampler.plan(0)
    sn.train()
    sn.zero_grad()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    losses = budgets_step(sn, x, y, cfgs, criterion=torch.nn.CrossEntropyLoss())
    assert len(losses) == 2 and all(torch.isfinite(v) for v in losses)
    stem = next(m for m in sn.model.modules() if isinstance(m, torch.nn.Conv2d))
    group = next(g for g in sn.space.searchable if g.max_channels == stem.out_channels)
    widest = max(cfg[group.name] for cfg in cfgs)
    per_channel = stem.weight.grad.abs().flatten(1).sum(1)
    assert torch.all(per_channel[widest:] == 0)  # right of every trained config: untouched
    assert torch.all(per_channel[:widest] > 0)
    sn.eval()
    with torch.no_grad(), sn.active(None):
        full_width = sn(x)
    with torch.no_grad():
        assert torch.equal(sn(x), full_width)  # back at full width after the step


def test_inplace_the_full_width_trains_first_and_the_subnets_distil_from_it(resnet20):
    sn = resnet20
    frozen = create_model("resnet20", num_classes=10, in_chans=1)
    teacher = Teacher(frozen, alpha=1.0, temperature=2.0)  # pure distillation
    cfgs = BudgetSampler(sn.space, macs=sn.macs, budgets=[0.1, 0.25], seed=0).plan(1)
    ce = torch.nn.CrossEntropyLoss()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    sn.train()
    sn.zero_grad()
    losses = budgets_step(sn, x, y, cfgs, criterion=ce, teacher=teacher, inplace=True)
    stepped = [p.grad.clone() for p in sn.parameters()]

    sn.zero_grad()  # the same passes by hand: full width on the frozen teacher, then from it
    with sn.active(None):
        full = sn(x)
    assert torch.allclose(losses[0], ce(full, y))
    teacher.loss(full, ce(full, y), teacher.logits(x)).backward()
    for cfg in cfgs:
        with sn.active(cfg, "left"):
            logits = sn(x)
        teacher.loss(logits, ce(logits, y), full.detach()).backward()
    assert len(losses) == 1 + len(cfgs)
    for got, want in zip(stepped, (p.grad for p in sn.parameters()), strict=True):
        torch.testing.assert_close(got, want)


def _train_recipe(train_tiny):
    recipe = load_recipe(str(train_tiny))
    recipe.data.train_limit = 128  # 4 steps of 32
    recipe.pretrain.epochs = 1
    recipe.train.trainer = "budgets"
    recipe.train.init = "pretrain"
    recipe.train.epochs = 1
    recipe.search.budgets = [0.25, "5M", 0.5]  # MACs counts are left to the search
    return recipe


def test_the_trainer_distils_each_search_budget_and_reports_them(train_tiny, tmp_path, monkeypatch):
    recipe = _train_recipe(train_tiny)
    calls = []
    real = kinds_mod.budgets_step

    def spy(sn, x, y, cfgs, **kwargs):
        calls.append(([sn.macs(c) / sn.macs() for c in cfgs], kwargs["teacher"]))
        return real(sn, x, y, cfgs, **kwargs)

    monkeypatch.setattr(kinds_mod, "budgets_step", spy)
    pretrain_network(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)
    result = train_supernet(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)

    assert len(calls) == 4
    for fractions, teacher in calls:
        assert teacher is not None  # the trained network teaches every subnet
        assert 0.9 * 0.25 <= fractions[0] <= 0.25 and 0.9 * 0.5 <= fractions[1] <= 0.5
    (entry,) = result.history
    assert entry["trainer"] == "budgets"
    assert {"loss_b25", "loss_b50", "top1_b25", "top1_b50"} <= set(entry)
    assert sum(entry["macs_hist"]) == 8  # two subnets per step
    _, payload = load_supernet(result.checkpoint)
    assert payload["train_state"]["trainer"] == "budgets"
    # channel_order "auto": a left-only trainer puts the important channels in front
    assert payload["init"]["channel_order"] == "front"


def test_recipe_errors_for_the_budgets_trainer(train_tiny):
    recipe = _train_recipe(train_tiny)
    recipe.search.budgets = ["5M", "12ms"]
    with pytest.raises(ValueError, match="budgets trainer needs MACs fractions"):
        validate(recipe)
    recipe.train.budgets = [0.2, 2.0]
    with pytest.raises(ValueError, match=r"\[train\].budgets must be MACs fractions"):
        validate(recipe)
    recipe.train.budgets = [0.2]
    recipe.train.budget_window = 1.5
    with pytest.raises(ValueError, match="budget_window"):
        validate(recipe)
    recipe.train.budget_window = 0.9
    validate(recipe)


def test_a_resume_keeps_the_budgets_it_started_with(train_tiny, tmp_path):
    recipe = _train_recipe(train_tiny)
    recipe.train.epochs = 2
    quiet = {"progress": False, "log": lambda line: None}
    pretrain_network(recipe, out_dir=tmp_path, **quiet)
    train_supernet(recipe, out_dir=tmp_path, stop_after=1, **quiet)
    _, payload = load_supernet(tmp_path / "supernet.pt")
    assert payload["recipe"]["train"]["budgets"] == [0.25, 0.5]  # resolved, then stored

    recipe.search.budgets = [0.1, 0.5]  # edited between the two calls
    with pytest.raises(CheckpointError, match=r"budgets \[0.25, 0.5\].*\[0.1, 0.5\]"):
        train_supernet(recipe, out_dir=tmp_path, resume=True, **quiet)
    recipe.search.budgets = [0.25, 0.5]
    result = train_supernet(recipe, out_dir=tmp_path, resume=True, **quiet)
    assert [h["epoch"] for h in result.history] == [1, 2]

    # `run` reuses both finished trainings for the same recipe, and not for other budgets
    full = tmp_path / "full.pt"
    assert _training_done(full, recipe, kind="widthsearch.full", epochs=1)
    assert _training_done(tmp_path / "supernet.pt", recipe)
    recipe.search.budgets = [0.1, 0.5]
    assert not _training_done(tmp_path / "supernet.pt", recipe)
    assert _training_done(full, recipe, kind="widthsearch.full", epochs=1)


def test_with_distill_the_full_width_trains_and_becomes_the_finetune_teacher(train_tiny, tmp_path):
    recipe = _train_recipe(train_tiny)
    recipe.train.distill = True
    pretrain_network(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)
    result = train_supernet(recipe, out_dir=tmp_path, progress=False, log=lambda line: None)
    (entry,) = result.history
    assert {"loss_max", "top1_max", "loss_b25", "loss_b50"} <= set(entry)
    assert sum(entry["macs_hist"]) == 12  # the full width and two subnets per step
    sn, payload = load_supernet(result.checkpoint)
    teacher, recalibrate = load_teacher(result.checkpoint, payload["meta"])
    assert recalibrate  # the full width's BN statistics are a mix over the trained widths
    x = torch.randn(4, 1, 16, 16)
    sn.eval()
    with torch.no_grad(), sn.active(None):
        assert torch.allclose(teacher(x), sn(x), atol=1e-6)  # the supernet's full width
