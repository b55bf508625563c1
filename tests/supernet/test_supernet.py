"""The supernet core against ground truth: extracted models, FlopCounterMode, the original model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from widthsearch.supernet import Supernet, UnsupportedModelError, counted_macs


def _tv(name: str, **kwargs) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)


def _timm(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _convnext() -> nn.Module:
    """ConvNeXt-T with a layer scale per channel that matters (its init is 1e-6, which
    would hide any slicing error of the blocks behind the residual stream)."""
    model = _tv("convnext_tiny")
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, torchvision.models.convnext.CNBlock):
                block.layer_scale.uniform_(0.5, 1.5)
    return model


def _vit() -> nn.Module:
    """torchvision's ViT-B/16 on 32 x 32 inputs, with a head that is not zero at init (which
    would make every subnet's output 0 and hide any slicing error)."""
    model = _tv("vit_b_16", image_size=32)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.02)
    return model


def _builtin(name: str) -> nn.Module:
    from widthsearch.supernet.models import create_model

    return create_model(name, num_classes=10, in_chans=1)


class _Concat(nn.Module):
    """Two convs concatenated along the channels, then a BN over the concat and a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.c(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))


class _ConcatJoinsConv(nn.Module):
    """A residual add of a concat (4 + 4 channels) and one conv's 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1) + self.c(x)


class _MhaBlock(nn.Module):
    """A pre-norm transformer block written with ``nn.MultiheadAttention``, as users do."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _MhaTransformer(nn.Module):
    """Patch embedding, a class token, two ``_MhaBlock`` (4 heads of 4 features), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.blocks = nn.Sequential(_MhaBlock(16, 4), _MhaBlock(16, 4))
        self.norm, self.head = nn.LayerNorm(16), nn.Linear(16, 5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.norm(self.blocks(x))[:, 0])


# (id, factory, input shape); small inputs keep the whole file to seconds
MODELS = [
    ("resnet20", lambda: _builtin("resnet20"), (2, 1, 28, 28)),
    ("resnet56", lambda: _builtin("resnet56"), (2, 1, 28, 28)),
    ("tv:resnet18", lambda: _tv("resnet18"), (2, 3, 32, 32)),
    ("tv:resnet50", lambda: _tv("resnet50"), (2, 3, 32, 32)),
    ("tv:mobilenet_v2", lambda: _tv("mobilenet_v2"), (2, 3, 32, 32)),
    ("tv:mobilenet_v3_small", lambda: _tv("mobilenet_v3_small"), (2, 3, 32, 32)),
    ("tv:efficientnet_b0", lambda: _tv("efficientnet_b0"), (2, 3, 32, 32)),
    ("tv:regnet_x_400mf", lambda: _tv("regnet_x_400mf"), (2, 3, 32, 32)),
    ("tv:vgg11_bn", lambda: _tv("vgg11_bn"), (2, 3, 32, 32)),
    ("timm:resnet18", lambda: _timm("resnet18"), (2, 3, 32, 32)),
    ("timm:mobilenetv2_100", lambda: _timm("mobilenetv2_100"), (2, 3, 32, 32)),
    ("timm:efficientnet_b0", lambda: _timm("efficientnet_b0"), (2, 3, 32, 32)),
    ("timm:mobilenetv3_small_100", lambda: _timm("mobilenetv3_small_100"), (2, 3, 32, 32)),
    # concatenation along the channels
    ("concat", lambda: _Concat(), (2, 3, 8, 8)),
    ("tv:squeezenet1_0", lambda: _tv("squeezenet1_0"), (2, 3, 32, 32)),
    ("tv:densenet121", lambda: _tv("densenet121"), (2, 3, 32, 32)),
    # channels-last blocks: permute, LayerNorm, Linear on the last dim, a layer-scale tensor
    ("tv:convnext_tiny", _convnext, (2, 3, 32, 32)),
    # channel shuffle, split and slicing, attention: the groups there keep full width
    ("tv:shufflenet_v2_x0_5", lambda: _tv("shufflenet_v2_x0_5"), (2, 3, 32, 32)),
    ("timm:ghostnet_100", lambda: _timm("ghostnet_100"), (2, 3, 32, 32)),
    ("tv:vit_b_16", _vit, (2, 3, 32, 32)),
    (
        "timm:vit_tiny_patch16_224",
        lambda: _timm("vit_tiny_patch16_224", img_size=32),
        (2, 3, 32, 32),
    ),
    ("nn.MultiheadAttention", _MhaTransformer, (2, 3, 16, 16)),
]
NO_RESIDUALS = {
    "tv:vgg11_bn",
    "concat",
    "tv:squeezenet1_0",
    "tv:densenet121",
    "tv:shufflenet_v2_x0_5",
    "timm:ghostnet_100",  # its residual blocks' groups are fixed (the ghost modules slice)
    "tv:vit_b_16",
    "timm:vit_tiny_patch16_224",
    "nn.MultiheadAttention",
}


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine BN/LayerNorm parameters, so that slicing the
    wrong channels shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _counted_macs(model: nn.Module, x: torch.Tensor) -> int:
    """``FlopCounterMode`` total / 2 at batch 1, attention's matmuls included."""
    return counted_macs(model, x[:1])


@pytest.fixture(scope="module", params=MODELS, ids=[m[0] for m in MODELS])
def built(request):
    name, factory, shape = request.param
    torch.manual_seed(0)
    model = factory().eval()
    with torch.no_grad():
        _randomise_norms(model)
    x = torch.randn(shape)
    with torch.no_grad():
        reference = model(x)
    sn = Supernet.from_model(model, x[:1]).eval()
    return name, sn, x, reference


def test_max_config_reproduces_original(built):
    _, sn, x, reference = built
    with torch.no_grad(), sn.active(sn.space.max(), "left"):
        left = sn(x)
    with torch.no_grad(), sn.active(sn.space.max(), "right"):
        right = sn(x)
    assert torch.equal(left, reference) and torch.equal(right, reference)
    assert sn.macs() == _counted_macs(sn.model, x)
    assert sn.params() == sum(p.numel() for p in sn.model.parameters())


def _assert_extraction_exact(sn: Supernet, x: torch.Tensor, side: str, name: str) -> None:
    """Min, uniform 0.5 and 3 random configs on ``side``: the extracted model is of the
    original class, computes the active subnet and costs what the cost model says."""
    rng = np.random.default_rng(1)
    configs = [sn.space.min(), sn.space.uniform(0.5)] + [sn.space.sample(rng) for _ in range(3)]
    for cfg in configs:
        with torch.no_grad(), sn.active(cfg, side):
            expected = sn(x)
        sub = sn.extract(cfg, side).eval()
        assert type(sub) is type(sn.model)
        with torch.no_grad():
            got = sub(x)
        assert (got - expected).abs().max().item() <= 1e-5, name
        assert sn.macs(cfg) == _counted_macs(sub, x), name
        assert sn.params(cfg) == sum(p.numel() for p in sub.parameters()), name


@pytest.mark.parametrize("side", ["left", "right"])
def test_extracted_equals_subnet_and_cost_is_exact(built, side):
    name, sn, x, reference = built
    _assert_extraction_exact(sn, x, side, name)
    # the supernet itself is untouched by extraction and by running subnets
    with torch.no_grad():
        assert torch.equal(sn(x), reference)


class _Reduced(nn.Module):
    """conv -> BN -> a spatial reduction (global pooling written as an op) -> linear."""

    def __init__(self, reduce) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.reduce = reduce

    def forward(self, x):
        return self.fc(torch.flatten(self.reduce(torch.relu(self.bn(self.conv(x)))), 1))


_SPATIAL = {
    "mean": lambda x: x.mean((2, 3)),
    "mean-keepdim": lambda x: x.mean([2, 3], keepdim=True),
    "amax": lambda x: torch.amax(x, dim=(-2, -1)),
    "sum": lambda x: x.sum(3).sum(dim=2),
    "adaptive-max": lambda x: nn.functional.adaptive_max_pool2d(x, 1),
    "adaptive-avg-module": nn.AdaptiveAvgPool2d((1, 1)),
}


@pytest.mark.parametrize("reduce", list(_SPATIAL.values()), ids=list(_SPATIAL))
def test_spatial_reductions_pass_channels_through(reduce):
    torch.manual_seed(0)
    model = _Reduced(reduce).eval()
    with torch.no_grad():
        _randomise_norms(model)
    x = torch.randn(2, 3, 8, 8)
    sn = Supernet.from_model(model, x[:1], bins=4).eval()
    assert [g.name for g in sn.space.searchable] == ["conv"]  # one group: conv, BN and fc
    for side in ("left", "right"):
        _assert_extraction_exact(sn, x, side, "reduce")


def test_sides_differ_and_slimmed_is_smaller(built):
    _, sn, x, _ = built
    cfg = sn.space.uniform(0.5)
    with torch.no_grad():
        with sn.active(cfg, "left"):
            left = sn(x)
        with sn.active(cfg, "right"):
            right = sn(x)
    assert not torch.allclose(left, right)
    assert sn.macs(sn.space.min()) < sn.macs(cfg) < sn.macs()
    assert sn.params(cfg) < sn.params()


def test_no_slimmable_state_left_in_extracted(built):
    _, sn, _, _ = built
    sub = sn.extract(sn.space.uniform(0.5))
    for module in sub.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
        assert "widthsearch.supernet.supernet" not in type(module).__module__


def test_vectorised_cost_equals_scalar():
    """8,300 rows cross the cost model's 8,192-row chunk; each row is checked against the
    single-row path, and a few (either side of the boundary) against the extracted subnet."""
    sn = Supernet.from_model(_tv("resnet18"), torch.randn(1, 3, 32, 32))
    rng = np.random.default_rng(0)
    cfgs = [sn.space.sample(rng) for _ in range(8300)]
    widths = sn.space.encode(cfgs)
    macs, params = sn.cost.macs(widths), sn.cost.params(widths)
    assert len(set(macs.tolist())) > 8000  # distinct rows: a shifted chunk would show
    assert macs.tolist() == [sn.cost.macs(row) for row in widths]
    assert params.tolist() == [sn.cost.params(row) for row in widths]
    x = torch.randn(1, 3, 32, 32)
    for i in (0, 8191, 8192, 8299):
        sub = sn.extract(cfgs[i]).eval()
        assert macs[i] == _counted_macs(sub, x), i
        assert params[i] == sum(p.numel() for p in sub.parameters()), i


def test_groups_found_by_tracing_resnet20():
    sn = Supernet.from_model(_builtin("resnet20"), torch.randn(1, 1, 28, 28))
    groups = {g.name: g for g in sn.space.groups}
    # input and logits are fixed; each stage's residual stream is one group; each block's
    # inner conv is its own group: 3 stages + 9 inner = 12 searchable groups
    assert groups["input"].fixed and groups["input"].choices == (1,)
    assert groups["fc"].fixed and groups["fc"].choices == (10,)
    searchable = [g for g in sn.space.groups if not g.fixed]
    assert len(searchable) == 12
    assert sorted(g.max_channels for g in searchable) == [16] * 4 + [32] * 4 + [64] * 4


def test_depthwise_and_se_couplings_mobilenet_v3():
    sn = Supernet.from_model(_tv("mobilenet_v3_small"), torch.randn(1, 3, 32, 32))
    by_layer = {layer.name: (in_g, out_g) for layer, (in_g,), (out_g,) in sn.layers}
    # depthwise conv output is tied to its input; SE expand output is tied to the gated tensor
    dw_in, dw_out = by_layer["features.1.block.0.0"]
    assert dw_in == dw_out
    assert by_layer["features.1.block.1.fc2"][1] == dw_out
    # SE reduce layer is its own group
    assert by_layer["features.1.block.1.fc1"][1] not in (dw_in, dw_out)


def test_grouped_conv_widths_keep_whole_groups():
    sn = Supernet.from_model(_tv("regnet_x_400mf"), torch.randn(1, 3, 32, 32))
    grouped = [
        (layer, out_g)
        for layer, _, (out_g,) in sn.layers
        if layer.kind == "conv" and layer.group_width > 1
    ]
    # regnet_x_400mf: one 3x3 grouped conv (group width 16) per block, 22 blocks
    assert len(grouped) == 22
    assert {layer.group_width for layer, _ in grouped} == {16}
    assert grouped[0][0].module.groups == grouped[0][0].module.in_channels // 16
    for layer, out_g in grouped:
        group = sn.space.groups[out_g]
        assert group.round_to % layer.group_width == 0
        assert all(w % layer.group_width == 0 for w in group.choices)
        assert len(group.choices) > 1  # still searchable


def test_round_to_and_bins():
    sn = Supernet.from_model(_tv("resnet18"), torch.randn(1, 3, 32, 32), bins=8, round_to=8)
    for g in sn.space.searchable:
        assert all(w % 8 == 0 for w in g.choices)
        assert g.choices[-1] == g.max_channels
        # mirrored bins: complement widths are exact
        assert all(
            g.bin_to_width[k] + g.bin_to_width[g.bins - k] == g.max_channels
            for k in range(g.bins + 1)
        )


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(x)
        return x


class _LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.norm = nn.GroupNorm(2, 4)

    def forward(self, x):
        return self.norm(self.a(x))


class _ChannelsLast(nn.Module):
    """conv -> an op on its channels-last permute -> back (``op``: the op under test)."""

    def __init__(self, op, norm: nn.Module | None = None) -> None:
        super().__init__()
        self.a, self.op, self.norm = nn.Conv2d(3, 8, 3, padding=1), op, norm or nn.Identity()

    def forward(self, x):
        return self.norm(self.op(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class _FixedReshape(nn.Module):
    """A per-channel parameter reshaped to a fixed width: slicing it would break the view."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.gamma = nn.Conv2d(3, 8, 3), nn.Parameter(torch.ones(8))

    def forward(self, x):
        return self.a(x) * self.gamma.view(1, 8, 1, 1)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (_ChannelsLast(lambda x: x.permute(1, 0, 2, 3)), ["'permute'", "mixes or reorders"]),
        (_ChannelsLast(lambda x: F.max_pool2d(x, 3, 1, 1)), ["'max_pool2d'", "mixes"]),
        (_ChannelsLast(lambda x: x, nn.LayerNorm(8)), ["'norm'", "layer norm over other"]),
        (_ChannelsLast(lambda x: x * torch.arange(8.0)), ["'mul'", "no parameter or buffer"]),
        (_FixedReshape(), ["'mul'", "'view'", "nor a reshape of one with -1"]),
        (
            _ChannelsLast(lambda x: torch.cat([x, torch.ones(1, 1, 8, 8)], 1)),
            ["'cat'", "'_tensor_constant0'", "no parameter or buffer"],
        ),
        (_ConcatJoinsConv(), ["'add'", "4 + 4 and 8 channels"]),
        (_DataDependent(), ["cannot trace", "_DataDependent"]),
        (_LayerNormNet(), ["'norm'", "GroupNorm"]),
        (_Reduced(lambda x: (x * x.mean(1, keepdim=True)).mean((2, 3))), ["'mean'", "channel"]),
        (_Reduced(lambda x: (x - x.amax((1, 2, 3), keepdim=True)).mean((2, 3))), ["'amax'"]),
        (_Reduced(lambda x: x.mean((2, 3)) / x.sum()), ["'sum'", "channel dimension"]),
    ],
)
def test_unsupported_models_raise_clear_errors(model, words):
    with pytest.raises(UnsupportedModelError) as info:
        Supernet.from_model(model, torch.randn(1, 3, 8, 8))
    assert all(w in str(info.value) for w in words), str(info.value)
    assert "\n" not in str(info.value)  # one line


def test_bad_configs_name_the_group():
    sn = Supernet.from_model(_builtin("resnet20"), torch.randn(1, 1, 28, 28))
    cfg = sn.space.max()
    name = sn.space.searchable[1].name
    with pytest.raises(ValueError, match="unknown group 'nope'"):
        sn.macs({**cfg, "nope": 3})
    bad = {**cfg, name: 7}  # 7 is not a bin width of a 16-channel group with 10 bins
    with pytest.raises(ValueError, match=f"group '{name}'"):
        sn.macs(bad)
    missing = {k: v for k, v in cfg.items() if k != name}
    with pytest.raises(ValueError, match=f"missing group '{name}'"):
        sn.extract(missing)
    with pytest.raises(ValueError, match="side"), sn.active(cfg, side="middle"):  # type: ignore[arg-type]
        pass
    # fixed groups may be omitted
    searchable_only = {g.name: cfg[g.name] for g in sn.space.searchable}
    assert sn.macs(searchable_only) == sn.macs(cfg)


def test_active_restores_on_error_and_nests():
    sn = Supernet.from_model(_builtin("resnet20"), torch.randn(1, 1, 28, 28)).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        full = sn(x)
        with pytest.raises(RuntimeError), sn.active(sn.space.min()):
            sn(torch.randn(2, 3, 28, 28))  # wrong channel count fails inside a hooked conv
        assert torch.equal(sn(x), full)
        assert all(isinstance(p, nn.Parameter) for p in sn.model.parameters())
        with sn.active(sn.space.min()):
            small = sn(x)
        with sn.active(sn.space.uniform(0.5)):
            half = sn(x)
        with sn.active(sn.space.min()):
            with sn.active(sn.space.uniform(0.5)):
                assert torch.equal(sn(x), half)  # the inner config rules inside
            assert torch.equal(sn(x), small)  # the outer one is back after it
        assert torch.equal(sn(x), full)
        assert sn.macs(sn.space.min()) < sn.macs()
        assert not torch.equal(small, full) and not torch.equal(small, half)


def test_gradients_reach_only_active_channels():
    sn = Supernet.from_model(_builtin("resnet20"), torch.randn(1, 1, 28, 28)).train()
    cfg = sn.space.uniform(0.5)
    with sn.active(cfg, "right"):
        sn(torch.randn(4, 1, 28, 28)).sum().backward()
    conv = sn.model.layer1[0].conv1
    group = sn.space["layer1.0.conv1"]
    width = cfg[group.name]
    grad_norm = conv.weight.grad.abs().sum(dim=(1, 2, 3))
    assert (grad_norm[: group.max_channels - width] == 0).all()
    assert (grad_norm[group.max_channels - width :] > 0).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_depth_pruning_removes_blocks_exactly(built, side):
    name, sn, x, _ = built
    removable = [g for g in sn.space.groups if g.removable]
    if name in NO_RESIDUALS:
        assert not removable
        return
    assert removable, name
    cfg = sn.space.uniform(0.75)
    for g in removable[::2]:
        cfg[g.name] = 0
    with torch.no_grad(), sn.active(cfg, side):
        expected = sn(x)
    sub = sn.extract(cfg, side).eval()
    with torch.no_grad():
        got = sub(x)
    assert (got - expected).abs().max().item() <= 1e-5
    assert sn.macs(cfg) == _counted_macs(sub, x)
    assert sn.params(cfg) == sum(p.numel() for p in sub.parameters())
    removed = {g.block for g in removable[::2]}
    remaining = dict(sub.named_modules())
    assert all(isinstance(remaining[b], nn.Identity) for b in removed)
    # removing a block costs less than keeping it at its narrowest width
    narrow = {**cfg, **{g.name: g.choices[0] for g in removable[::2]}}
    assert sn.macs(cfg) < sn.macs(narrow)


def test_only_identity_skip_blocks_are_removable():
    sn = Supernet.from_model(_builtin("resnet20"), torch.randn(1, 1, 28, 28))
    blocks = sorted(g.block for g in sn.space.groups if g.removable)
    # the first block of stages 2 and 3 downsamples through a projection: not removable
    assert blocks == [
        f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3) if (s, b) not in ((2, 0), (3, 0))
    ]
    assert all(0 not in g.choices for g in sn.space.groups)  # samplers never draw 0
    with pytest.raises(ValueError, match=r"layer2\.0\.conv1"):
        sn.macs({**sn.space.max(), "layer2.0.conv1": 0})


def test_reordering_multihead_attention_moves_whole_heads():
    """With ``nn.MultiheadAttention`` the embedding's channels are the heads' features: its
    widths are multiples of the head size and reordering moves whole heads, so the network
    computes the same."""
    from widthsearch.supernet.warmstart import reorder_channels

    torch.manual_seed(0)
    sn = Supernet.from_model(_MhaTransformer().eval(), torch.zeros(1, 3, 16, 16)).eval()
    embedding = sn.space["embed"]
    assert embedding.choices == (4, 8, 12, 16) and sn.channel_blocks()["embed"] == 4
    reference = copy.deepcopy(sn.model)
    perms = reorder_channels(sn, "ends", batches=[(torch.randn(8, 3, 16, 16), torch.arange(8) % 5)])
    heads = perms["embed"].reshape(4, 4)
    assert (np.diff(heads, axis=1) == 1).all() and (heads[:, 0] % 4 == 0).all()  # whole heads
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(sn(x), reference(x), atol=1e-5, rtol=1e-5)
    sub = sn.extract({**sn.space.max(), "embed": 8})
    assert (sub.blocks[0].attn.embed_dim, sub.blocks[0].attn.num_heads) == (8, 2)


def test_a_reshape_to_a_constant_channel_count_keeps_them_full():
    """``x.reshape(n, 8, -1)`` would fail at any other width: the channels keep full width,
    and the message names the op and the number; ``x.reshape(n, x.shape[1], -1)`` slims."""

    class _Reshaped(nn.Module):
        def __init__(self, constant: bool) -> None:
            super().__init__()
            self.conv, self.fc, self.constant = nn.Conv2d(3, 8, 3), nn.Linear(8, 4), constant

        def forward(self, x):
            x = self.conv(x)
            x = x.reshape(x.shape[0], 8 if self.constant else x.shape[1], -1).mean(2)
            return self.fc(x)

    with pytest.raises(UnsupportedModelError, match=r"'reshape'.* asks for 8 channels by number"):
        Supernet.from_model(_Reshaped(True), torch.randn(1, 3, 8, 8))
    sn = Supernet.from_model(_Reshaped(False), torch.randn(1, 3, 8, 8))
    assert [g.name for g in sn.space.searchable] == ["conv"]
