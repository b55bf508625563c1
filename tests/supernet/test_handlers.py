"""Layer handlers: the registry, a new layer kind plugged in as one class, the cost model's
published quadratic forms, and no per-kind branches outside the handlers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from widthsearch.supernet import Supernet, reorder_channels
from widthsearch.supernet.handlers import (
    BatchNormHandler,
    ConvHandler,
    LayerNormHandler,
    LinearHandler,
    handler_for,
    unregister_layer,
)
from widthsearch.supernet.handlers.base import (  # what a handler author uses
    GAMMA,
    ChannelEvidence,
    LayerHandler,
    SlimLayer,
    register_layer,
    replace_param,
    swap,
)
from widthsearch.supernet.models import create_model

ROOT = Path(__file__).resolve().parents[2]


def test_registry_finds_the_most_specific_handler():
    assert isinstance(handler_for(nn.Conv2d(2, 2, 1)), ConvHandler)
    assert isinstance(handler_for(nn.Conv2d(4, 4, 3, groups=4)), ConvHandler)
    assert isinstance(handler_for(nn.BatchNorm2d(2)), BatchNormHandler)
    assert isinstance(handler_for(nn.BatchNorm1d(2)), BatchNormHandler)
    act = timm.layers.BatchNormAct2d(4)  # a BN subclass: the BN handler
    assert isinstance(handler_for(act), BatchNormHandler)
    assert isinstance(handler_for(nn.Linear(2, 2)), LinearHandler)
    assert handler_for(nn.ReLU()) is None and handler_for(nn.GroupNorm(1, 2)) is None
    sn = Supernet.from_model(
        create_model("resnet20", num_classes=10, in_chans=1), torch.zeros(1, 1, 8, 8)
    )
    kinds = {entry.layer.kind for entry in sn.layers}
    assert kinds == {"conv", "bn", "linear"}
    assert all(entry.layer.handler is handler_for(entry.layer.module) for entry in sn.layers)


# ---- a new layer kind: one handler class and its registration --------------------------


class ChannelScale(nn.Module):
    """A per-channel scale: unknown to widthsearch until its handler is registered."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class ChannelScaleHandler(LayerHandler):
    kind = "scale"
    label = "ChannelScale"
    normaliser = True

    def trace(self, module, step):
        return step.existing or SlimLayer(
            step.name, module, self, step.in_spaces, step.in_spaces, source=step.source
        )

    def run_widths(self, layer, w_in, w_out):
        return (1, 1) if w_out == 0 else (w_in, w_out)

    def view(self, layer, module, at):
        saved = {}
        swap(module._parameters, saved, "weight", at.out_span())
        return saved

    def slice(self, layer, module, in_idx, out_idx):
        replace_param(module, "weight", module.weight.index_select(0, out_idx))

    def cost_terms(self, layer, in_g, out_g, macs, params):
        params.add(1, out_g)

    def importance(self, layer):
        return ChannelEvidence(GAMMA, layer.module.weight.detach().abs())


class _ScaledNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.scale1 = nn.Conv2d(1, 8, 3, padding=1), ChannelScale(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.scale2 = ChannelScale(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.scale1(self.conv1(x)))
        x = torch.relu(self.scale2(self.bn2(self.conv2(x))) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture()
def scale_registered():
    register_layer(ChannelScale)(ChannelScaleHandler)
    yield
    unregister_layer(ChannelScale)


def _counted_macs(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return counter.get_total_flops() // (2 * x.shape[0])


def test_a_new_layer_kind_plugs_in_as_one_registered_handler(scale_registered):
    torch.manual_seed(0)
    model = _ScaledNet().eval()
    x = torch.randn(2, 1, 6, 6)
    sn = Supernet.from_model(model, x, bins=4).eval()
    scales = [e.layer for e in sn.layers if e.layer.kind == "scale"]
    assert [(lay.name, lay.source) for lay in scales] == [("scale1", "conv1"), ("scale2", "bn2")]
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for cfg in [sn.space.sample(rng) for _ in range(4)] + [sn.space.min()]:
            for side in ("left", "right"):
                with sn.active(cfg, side):
                    expected = sn(x)
                sub = sn.extract(cfg, side).eval()
                torch.testing.assert_close(sub(x), expected, rtol=1e-5, atol=1e-6)
                assert sub.scale1.weight.shape == (cfg[sn.space.groups[1].name],)
                assert sn.params(cfg) == sum(p.numel() for p in sub.parameters())
                assert sn.macs(cfg) == _counted_macs(sub, x)
        before = sn(x)
        reorder_channels(sn, "front")  # importance and permutation through the handler
        torch.testing.assert_close(sn(x), before, rtol=1e-5, atol=1e-6)


# ---- channels-last: LayerNorm, Linear on the last dim, a layer-scale parameter ----------


class _ChannelsLastBlock(nn.Module):
    """ConvNeXt's block in miniature: conv -> permute -> LayerNorm -> Linear -> GELU ->
    Linear -> permute -> layer scale -> residual, then a LayerNorm2d head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 1)
        self.norm, self.up, self.down = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8)
        self.layer_scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)  # timm's way: reshaped in forward
        self.head, self.fc = torchvision.models.convnext.LayerNorm2d(8), nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(x.permute(0, 2, 3, 1))
        y = self.down(nn.functional.gelu(self.up(y))).permute(0, 3, 1, 2)
        x = (x + self.layer_scale * y) * self.gamma.reshape(1, -1, 1, 1)
        return self.fc(self.head(x).mean((2, 3)))


def test_layer_norm_and_layer_scale_slim_channels_last_blocks_exactly():
    torch.manual_seed(0)
    model = _ChannelsLastBlock().eval()
    with torch.no_grad():
        for norm in (model.norm, model.head):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
    x = torch.randn(2, 2, 5, 5)
    sn = Supernet.from_model(model, x, bins=4).eval()
    assert [(g.name, g.max_channels) for g in sn.space.searchable] == [("stem", 8), ("up", 16)]
    rows = {e.layer.name: (e.layer.kind, e.in_groups, e.out_groups) for e in sn.layers}
    assert rows["norm"] == rows["head"] == ("ln", (1,), (1,))
    assert rows["up"] == ("linear", (1,), (2,))
    assert rows["layer_scale"] == rows["gamma"] == ("attribute", (1,), (1,))
    assert isinstance(handler_for(model.head), LayerNormHandler)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for cfg in [sn.space.min(), *(sn.space.sample(rng) for _ in range(3))]:
            for side in ("left", "right"):
                with sn.active(cfg, side):
                    expected = sn(x)
                sub = sn.extract(cfg, side).eval()
                assert (sub(x) - expected).abs().max().item() <= 1e-5
                width = cfg["stem"]
                assert sub.norm.normalized_shape == sub.head.normalized_shape == (width,)
                assert sub.layer_scale.shape == (width, 1, 1) and sub.gamma.shape == (width,)
                assert sn.params(cfg) == sum(p.numel() for p in sub.parameters())
                assert sn.macs(cfg) == _counted_macs(sub, x)  # no MACs for layer norm
        assert sn.macs() == _counted_macs(sn.model, x)
        before = sn(x)
        reorder_channels(sn, "front")  # LayerNorm and layer scale permute with their group
        torch.testing.assert_close(sn(x), before, rtol=1e-5, atol=1e-6)


# ---- the cost model's quadratic forms ---------------------------------------------------


def _fit(f, origin: np.ndarray, free: np.ndarray):
    """Coefficients of a quadratic ``f`` by finite differences (how search/_macs.py used to
    recover them): the reference the published forms must equal exactly."""
    n = len(origin)
    eye = np.eye(n, dtype=np.int64)[free]
    k = len(free)
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    rows = [origin, *(origin + eye), *(origin + 2 * eye)]
    rows += [origin + eye[a] + eye[b] for a, b in pairs]
    v = f(np.stack(rows).astype(np.float64))
    f0, f1, f2 = v[0], v[1 : k + 1], v[k + 1 : 2 * k + 1]
    diag = (f2 - 2 * f1 + f0) / 2
    quad = np.zeros((n, n))
    quad[free, free] = diag
    for j, (a, b) in enumerate(pairs):
        quad[free[a], free[b]] = v[2 * k + 1 + j] - f1[a] - f1[b] + f0
    lin_u = np.zeros(n)
    lin_u[free] = f1 - f0 - diag
    o = origin.astype(np.float64)
    return float(f0 - lin_u @ o + o @ quad @ o), lin_u - (quad + quad.T) @ o, quad


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (lambda: create_model("resnet20", num_classes=10, in_chans=1), (1, 1, 8, 8)),
        (lambda: torchvision.models.get_model("resnet50", num_classes=10), (1, 3, 32, 32)),
        (lambda: torchvision.models.get_model("mobilenet_v2", num_classes=10), (1, 3, 32, 32)),
    ],
    ids=["resnet20", "resnet50", "mobilenet_v2"],
)
@pytest.mark.parametrize("cost", ["macs", "params"])
def test_published_quadratic_form_equals_finite_differences_and_the_cost(factory, shape, cost):
    torch.manual_seed(0)
    sn = Supernet.from_model(factory().eval(), torch.zeros(shape), bins=4)
    form = sn.cost.quadratic_form(cost)
    f = getattr(sn.cost, cost)
    n = len(sn.space.groups)
    ones = np.ones(n, dtype=np.int64)
    const, linear, quad = _fit(lambda w: f(w).astype(np.float64), ones, np.arange(n))
    assert form.main.const == const
    assert np.array_equal(form.main.linear, linear) and np.array_equal(form.main.quad, quad)
    removable = [g for g, group in enumerate(sn.space.groups) if group.removable]
    expected_gated = {}
    for g in removable:
        origin = ones.copy()
        origin[g] = 0
        free = np.array([i for i in range(n) if i != g])
        rest = _fit(lambda w: form.main.value(w) - f(w), origin, free)
        if rest[0] or np.any(rest[1]) or np.any(rest[2]):
            expected_gated[g] = rest
    assert list(form.gated) == list(expected_gated)
    for g, (c, lin, q) in expected_gated.items():
        got = form.gated[g]
        assert got.const == c and np.array_equal(got.linear, lin) and np.array_equal(got.quad, q)
    rng = np.random.default_rng(0)
    cfgs = [sn.space.sample(rng) for _ in range(20)] + [sn.space.min(), sn.space.max()]
    for cfg in cfgs[:10]:
        for g in removable:
            if rng.random() < 0.5:
                cfg[sn.space.groups[g].name] = 0
    widths = sn.space.encode(cfgs)
    assert np.array_equal(np.rint(form.value(widths)).astype(np.int64), f(widths))
    if cost == "macs" and isinstance(sn.model, torchvision.models.ResNet):
        assert form.gated  # a removed bottleneck also drops conv3: gated terms


def test_quadratic_form_rejects_an_unknown_cost():
    sn = Supernet.from_model(nn.Sequential(nn.Conv2d(1, 2, 1)), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="macs"):
        sn.cost.quadratic_form("latency")


# ---- the seam holds: no per-kind branches and no private layer table outside -----------


def _package_sources() -> list[Path]:
    return [
        p
        for folder in ("supernet", "search", "evaluate", "recipes", "benchmarks")
        for p in sorted((ROOT / folder).rglob("*.py"))
        if "handlers" not in p.relative_to(ROOT).parts
    ]


def test_no_layer_kind_branches_or_private_layer_table_outside_the_handlers():
    kind_branch = re.compile(r"\.kind\s*(==|!=|\bin\b|\bnot in\b)")
    private = re.compile(r"\._layers\b")
    found = []
    for path in _package_sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            if kind_branch.search(line):
                found.append(where)
            if private.search(line) and path != ROOT / "supernet" / "supernet.py":
                found.append(where)
    assert not found, "ask the layer's handler instead:\n" + "\n".join(found)
