"""Concatenation along the channels on a tiny Fire-style model: how the groups lie along a
concat, BN statistics of a concat kept through the indexed view, one BCNet training step,
and bisection answering a budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from widthsearch.search import SubnetEvaluator, get_strategy, resolve_budgets
from widthsearch.supernet import Supernet, UnsupportedModelError
from widthsearch.supernet.steps import bcnet_step


class _Fire(nn.Module):
    """squeeze -> [expand 1x1 | expand 3x3] concatenated -> BN over the concat -> depthwise
    conv -> classifier on the global mean, which also reads the squeeze output again."""

    def __init__(self) -> None:
        super().__init__()
        self.squeeze, self.bn0 = nn.Conv2d(3, 6, 1), nn.BatchNorm2d(6)
        self.e1, self.e3 = nn.Conv2d(6, 8, 1), nn.Conv2d(6, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.fc = nn.Linear(12 + 6, 5)

    def forward(self, x):
        s = torch.relu(self.bn0(self.squeeze(x)))
        y = torch.relu(self.bn(torch.cat([self.e1(s), self.e3(s)], dim=1)))
        y = self.dw(y)
        return self.fc(torch.cat([y.mean((2, 3)), s.mean((2, 3))], 1))


@pytest.fixture()
def fire():
    torch.manual_seed(0)
    return Supernet.from_model(_Fire().eval(), torch.randn(1, 3, 8, 8), bins=4)


def test_concat_layouts_name_each_groups_channels(fire):
    names = [g.name for g in fire.space.groups]
    layout = {lay.name: ([names[g] for g in i], [names[g] for g in o]) for lay, i, o in fire.layers}
    assert layout["bn"] == (["e1", "e3"], ["e1", "e3"])
    assert layout["dw"] == (["e1", "e3"], ["e1", "e3"])
    assert layout["fc"] == (["e1", "e3", "squeeze"], ["fc"])
    index = fire.space.index
    e1, e3, squeeze = index["e1"], index["e3"], index["squeeze"]
    assert [(g, rows.start, rows.stop) for g, rows in fire.segments((e1, e3, squeeze))] == [
        (e1, 0, 8),
        (e3, 8, 12),
        (squeeze, 12, 18),
    ]
    # the concat's groups keep their own widths: fc reads e1 + e3 + squeeze of them
    cfg = {g.name: g.choices[1] for g in fire.space.searchable}
    assert fire.extract(cfg).fc.in_features == cfg["e1"] + cfg["e3"] + cfg["squeeze"]


@pytest.mark.parametrize("side", ["left", "right"])
def test_bn_of_a_concat_updates_only_the_active_channels(fire, side):
    fire.train()
    bn = fire.model.bn
    before = bn.running_mean.clone()
    assert 4 in fire.space["e1"].choices and 2 in fire.space["e3"].choices
    cfg = {**fire.space.max(), "e1": 4, "e3": 2}
    with fire.active(cfg, side):
        fire(torch.randn(4, 3, 8, 8) + 3)
    # e1 is positions 0-7 of the concat, e3 8-11: each keeps its own side
    kept = [0, 1, 2, 3, 8, 9] if side == "left" else [4, 5, 6, 7, 10, 11]
    changed = (bn.running_mean != before).nonzero().flatten()
    assert changed.tolist() == kept
    assert isinstance(bn.weight, nn.Parameter) and bn.weight.shape == (12,)


def test_concat_supernet_trains_and_bisection_answers_a_budget(fire):
    fire.train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)
    opt = torch.optim.SGD(fire.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in fire.state_dict().items()}
    cfg = fire.space.sample(np.random.default_rng(0))
    losses = bcnet_step(fire, x, y, cfg, criterion=nn.CrossEntropyLoss())
    opt.step()
    assert set(losses) == {"left", "right"} and all(torch.isfinite(v) for v in losses.values())
    assert not torch.equal(before["model.e3.weight"], fire.model.e3.weight)
    fire.eval()
    evaluator = SubnetEvaluator(fire, x, y, x, batch_size=8)
    budgets = resolve_budgets(fire, [0.5])
    (result,) = get_strategy("bisection").search(fire, evaluator, budgets=budgets, seed=0)
    assert 0 < result.macs <= budgets[0]
    assert fire.macs(result.widths) == result.macs
    assert result.score == evaluator.score(result.widths)
    sub = fire.extract(result.widths).eval()
    with torch.no_grad(), fire.active(result.widths):
        assert (sub(x) - fire(x)).abs().max().item() <= 1e-5


def test_latency_tables_refuse_a_layer_that_reads_a_concatenation(fire):
    from widthsearch.search.latency import layer_groups
    from widthsearch.supernet import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="reads or writes a concatenation of several"):
        layer_groups(fire)


class _Ghost(nn.Module):
    """GhostNet's module: a conv, a depthwise conv of its output, both concatenated, then
    ``out[:, :out_chs]``; a whole slice when the halves make exactly ``out_chs``."""

    def __init__(self, out_chs: int) -> None:
        super().__init__()
        init = -(-out_chs // 2)
        self.primary = nn.Conv2d(3, init, 1)
        self.cheap = nn.Conv2d(init, init, 3, padding=1, groups=init)
        self.out_chs, self.fc = out_chs, nn.Linear(out_chs, 4)

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)[:, : self.out_chs]
        return self.fc(out.mean((2, 3)))


def test_a_slice_that_keeps_every_channel_passes_them_through():
    """``[:, :8]`` of 4 + 4 channels keeps all of them at every width: the primary conv's
    group slims, laid out twice along the concat, and subnets extract exactly; ``[:, :7]``
    of 4 + 4 drops one: the group keeps full width, and with nothing else to slim the
    model is refused, naming the op."""
    torch.manual_seed(0)
    sn = Supernet.from_model(_Ghost(8).eval(), torch.randn(1, 3, 6, 6), bins=4).eval()
    assert [g.name for g in sn.space.searchable] == ["primary"] and not sn.frozen
    x = torch.randn(2, 3, 6, 6)
    for side in ("left", "right"):
        cfg = {"primary": 2}
        with torch.no_grad(), sn.active(cfg, side):
            expected = sn(x)
        sub = sn.extract(cfg, side).eval()
        assert (sub.primary.out_channels, sub.fc.in_features) == (2, 4)
        torch.testing.assert_close(sub(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(UnsupportedModelError, match=r"'getitem'.*mixes or reorders channels"):
        Supernet.from_model(_Ghost(7).eval(), torch.randn(1, 3, 6, 6), bins=4)
