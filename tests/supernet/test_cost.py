"""The cost model against hand-written formulas and FlopCounterMode, on tiny models whose every
layer kind (dense, grouped and reused convs, affine and plain BN, flattened linear, a loose
parameter, removable blocks) has a term the formula names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from widthsearch.supernet import Supernet

CHUNK = 8192  # rows the cost model evaluates at once


class _Tiny(nn.Module):
    """stem (a) -> BN -> grouped conv (a, group width 2) called twice -> conv (b) -> plain BN ->
    flatten (4 x 4) -> linear (10), times a loose scalar parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.conv = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(12, affine=False)
        self.fc = nn.Linear(12 * 4 * 4, 10)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.grouped(self.grouped(x))
        x = self.bn2(self.conv(x))
        return self.fc(torch.flatten(x, 1)) * self.scale


def _tiny_macs(a: int, b: int) -> int:
    stem = 9 * 3 * a * 64
    grouped = 2 * (9 * 2 * a * 64)  # two calls, 2 input channels per output channel
    conv = 9 * a * b * 16
    fc = 16 * b * 10
    return stem + grouped + conv + fc


def _tiny_params(a: int, b: int) -> int:
    stem, bn = 27 * a, 2 * a
    grouped = 9 * 2 * a + a
    conv = 9 * a * b + b
    fc = 16 * b * 10 + 10
    return stem + bn + grouped + conv + fc + 1  # + the scale


def _counted_macs(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Supernet.from_model(_Tiny().eval(), torch.randn(1, 3, 8, 8), bins=4)


def test_tiny_groups_are_what_the_formula_assumes(tiny):
    a, b = tiny.space.searchable
    assert (a.name, a.max_channels, b.name, b.max_channels) == ("stem", 8, "conv", 12)
    assert all(w % 2 == 0 for w in a.choices)  # whole conv groups of the grouped conv
    assert len(a.choices) > 1 and len(b.choices) > 1


def test_formula_equals_counted_macs_and_params_of_every_extracted_subnet(tiny):
    a, b = tiny.space.searchable
    x = torch.randn(1, 3, 8, 8)
    for wa in a.choices:
        for wb in b.choices:
            cfg = {a.name: wa, b.name: wb}
            sub = tiny.extract(cfg).eval()
            assert _counted_macs(sub, x) == _tiny_macs(wa, wb) == tiny.macs(cfg), cfg
            params = sum(p.numel() for p in sub.parameters())
            assert params == _tiny_params(wa, wb) == tiny.params(cfg), cfg


def test_vectorised_cost_crosses_the_chunk_boundary_and_equals_the_formula(tiny):
    rng = np.random.default_rng(0)
    cfgs = [tiny.space.sample(rng) for _ in range(CHUNK + 300)]
    widths = tiny.space.encode(cfgs)
    a, b = (widths[:, tiny.space.index[g.name]] for g in tiny.space.searchable)
    macs, params = tiny.cost.macs(widths), tiny.cost.params(widths)
    assert macs.shape == params.shape == (CHUNK + 300,)
    assert macs.dtype == params.dtype == np.int64
    assert macs.tolist() == [_tiny_macs(int(p), int(q)) for p, q in zip(a, b, strict=True)]
    assert params.tolist() == [_tiny_params(int(p), int(q)) for p, q in zip(a, b, strict=True)]
    # one row -> a plain int, not an array
    assert tiny.cost.macs(widths[CHUNK]) == macs[CHUNK] and isinstance(
        tiny.cost.macs(widths[CHUNK]), int
    )
    with pytest.raises(ValueError, match=f"expected {len(tiny.space)} widths per config, got 1"):
        tiny.cost.macs(np.ones((2, 1)))


class _Block(nn.Module):
    """``relu(skip(x) + bn(conv2(relu(bn(conv1(x))))) * gamma)`` with an optional 1x1 skip."""

    def __init__(self, channels: int, projection: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.skip = nn.Conv2d(channels, channels, 1, bias=False) if projection else nn.Identity()

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.skip(x) + self.bn2(self.conv2(out)) * self.gamma)


class _TwoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.plain = _Block(4, projection=False)  # identity skip: removable
        self.projected = _Block(4, projection=True)  # same shape, 1x1 conv skip: not removable
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = self.projected(self.plain(torch.relu(self.stem(x))))
        return self.head(torch.flatten(self.pool(x), 1))


def test_depth_pruning_only_removes_the_identity_block_of_a_same_shape_pair():
    torch.manual_seed(0)
    model = _TwoBlocks().eval()
    x = torch.randn(2, 3, 8, 8)
    sn = Supernet.from_model(model, x[:1], bins=3).eval()
    blocks = {g.name: g.block for g in sn.space.groups}
    assert blocks["plain.conv1"] == "plain" and blocks["projected.conv1"] == ""
    with pytest.raises(ValueError, match=r"projected\.conv1"):
        sn.macs({**sn.space.max(), "projected.conv1": 0})
    cfg = {**sn.space.max(), "plain.conv1": 0}
    with torch.no_grad(), sn.active(cfg):
        expected = sn(x)
    sub = sn.extract(cfg).eval()
    assert isinstance(sub.plain, nn.Identity) and not isinstance(sub.projected, nn.Identity)
    with torch.no_grad():
        assert torch.allclose(sub(x), expected, atol=1e-6)
        assert not torch.allclose(sub(x), model(x), atol=1e-3)  # the block did something
    assert sn.macs(cfg) == _counted_macs(sub, x[:1])
    assert sn.params(cfg) == sum(p.numel() for p in sub.parameters())
    # the removed block's loose parameter (gamma: 4 values) leaves with it
    block = sum(p.numel() for p in model.plain.parameters())
    assert sn.params() - sn.params(cfg) == block


def test_quadratic_forms_by_hand():
    from widthsearch.supernet import GatedQuadraticForm, QuadraticForm

    form = QuadraticForm(2.0, np.array([1.0, 3.0]), np.array([[0.5, 2.0], [0.0, 0.0]]))
    # 2 + (1*1 + 3*2) + (0.5*1*1 + 2*1*2) = 13.5;  2 + 3*1 + 0.5*3*3 = 9.5
    np.testing.assert_array_equal(form.value(np.array([[1, 2], [3, 0]])), [13.5, 9.5])
    assert form.value([1, 2]).shape == (1,)
    zeros = np.zeros((2, 2))
    assert QuadraticForm(0.0, np.zeros(2), zeros).is_zero()
    assert not QuadraticForm(1.0, np.zeros(2), zeros).is_zero()
    assert not QuadraticForm(0.0, np.array([0.0, 1.0]), zeros).is_zero()
    assert not QuadraticForm(0.0, np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]])).is_zero()
    # width 0 of group 1 removes its block's other terms: 1 + 0.5 * w0
    gated = GatedQuadraticForm(form, {1: QuadraticForm(1.0, np.array([0.5, 0.0]), zeros)})
    np.testing.assert_array_equal(gated.value(np.array([[1, 2], [3, 0]])), [13.5, 7.0])
    np.testing.assert_array_equal(gated.value([3, 0]), [7.0])


def test_cost_model_quadratic_forms_equal_the_formulas():
    # built here, not from the module fixture: mutation testing then sees this test run the
    # cost table's construction (several layers add to one term: their sum must be kept)
    torch.manual_seed(0)
    tiny = Supernet.from_model(_Tiny().eval(), torch.randn(1, 3, 8, 8), bins=4)
    a, b = tiny.space.searchable
    widths = tiny.space.encode([{a.name: p, b.name: q} for p in a.choices for q in b.choices])
    pairs = [(int(w[tiny.space.index[a.name]]), int(w[tiny.space.index[b.name]])) for w in widths]
    macs, params = tiny.cost.quadratic_form("macs"), tiny.cost.quadratic_form("params")
    assert macs.value(widths).tolist() == [_tiny_macs(p, q) for p, q in pairs]
    assert params.value(widths).tolist() == [_tiny_params(p, q) for p, q in pairs]
    assert tiny.cost.quadratic_form().value(widths).tolist() == macs.value(widths).tolist()
    with pytest.raises(ValueError) as info:
        tiny.cost.quadratic_form("flops")
    assert str(info.value) == "cost must be 'macs' or 'params', got 'flops'"


def test_gated_quadratic_forms_equal_the_costs_of_removed_blocks():
    torch.manual_seed(0)
    sn = Supernet.from_model(_TwoBlocks().eval(), torch.randn(1, 3, 8, 8), bins=3)
    rng = np.random.default_rng(0)
    cfgs = [sn.space.sample(rng) for _ in range(40)]
    cfgs += [{**cfg, "plain.conv1": 0} for cfg in cfgs[:10]]  # the removable block removed
    widths = sn.space.encode(cfgs)
    for cost in ("macs", "params"):
        form = sn.cost.quadratic_form(cost)
        exact = getattr(sn.cost, cost)(widths)
        assert form.value(widths).tolist() == exact.tolist(), cost
