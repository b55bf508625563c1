"""The exact MACs polynomial (expectations for relax and the prior) and relax's soft masks."""

import itertools

import numpy as np
import pytest
import torch
from widthsearch.search import SoftMasks
from widthsearch.search._macs import MacsPolynomial
from widthsearch.search._space import IndexSpace


def test_polynomial_equals_cost_model(loaded):
    sn, _ = loaded
    poly = MacsPolynomial(sn)
    rng = np.random.default_rng(1)
    widths = sn.space.encode([sn.space.sample(rng) for _ in range(50)])
    assert np.array_equal(np.rint(poly.value(widths)).astype(np.int64), sn.cost.macs(widths))


def test_expected_macs_is_exact_for_independent_widths(loaded):
    sn, _ = loaded
    poly = MacsPolynomial(sn)
    space = IndexSpace(sn)
    rng = np.random.default_rng(2)
    base = space.widths(space.min_index()).astype(np.float64)
    # two random distributions on two groups (one pair coupled by a conv), the rest fixed
    g, h = 0, 1
    pg, ph = rng.dirichlet(np.ones(space.sizes[g])), rng.dirichlet(np.ones(space.sizes[h]))
    exact = 0.0
    for (a, pa), (b, pb) in itertools.product(
        zip(space.choices[g], pg, strict=True), zip(space.choices[h], ph, strict=True)
    ):
        w = base.copy()
        w[space.positions[g]], w[space.positions[h]] = a, b
        exact += pa * pb * float(sn.cost.macs(w))
    mean, second = base.copy(), base**2
    for j, p in ((g, pg), (h, ph)):
        c = space.choices[j].astype(np.float64)
        mean[space.positions[j]], second[space.positions[j]] = p @ c, p @ c**2
    assert poly.expected(mean, second) == pytest.approx(exact, rel=1e-12)
    torch_value = poly.expected_torch(torch.as_tensor(mean), torch.as_tensor(second))
    assert float(torch_value) == pytest.approx(exact, rel=1e-12)


def _left_and_one_hot_masked(sn, space, cfg, x):
    """The left subnet of ``cfg`` on ``x``, and the full-width net under the one-hot soft
    masks (and alive gates of removable groups) that stand for ``cfg``."""
    with torch.no_grad():
        with sn.active(cfg, "left"):
            expected = sn(x)
        with SoftMasks(sn, space) as masks:
            masks.masks = [
                (torch.arange(g.max_channels) < cfg[g.name]).float() for g in sn.space.searchable
            ]
            masks.alive = [
                torch.tensor(float(cfg[n] > 0)) if c[0] == 0 else None
                for n, c in zip(space.names, space.choices, strict=True)
            ]
            got = sn(x)
    return expected, got


def test_hard_soft_masks_equal_the_left_subnet(loaded):
    """With one-hot width distributions the masked full-width net *is* the left subnet."""
    sn, _ = loaded
    space = IndexSpace(sn, removable_zero=True)
    cfg = sn.space.sample(3)
    cfg["layer2.1.conv1"] = 0  # a removed basic block (depth pruning)
    x = torch.randn(5, 1, sn.meta["input_size"], sn.meta["input_size"])
    expected, got = _left_and_one_hot_masked(sn, space, cfg, x)
    with torch.no_grad():
        plain = sn(x)  # hooks removed on exit
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, expected)


class _Bottleneck(torch.nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + x)


class _TinyBottleneckNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(_Bottleneck(8, 4), _Bottleneck(8, 4))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_removed_blocks_are_exact_in_polynomial_expectation_and_masks():
    """Bottlenecks: removing a block also drops conv3 (not a function of the removed width)."""
    from widthsearch.supernet import Supernet

    torch.manual_seed(0)
    sn = Supernet.from_model(_TinyBottleneckNet(), torch.zeros(1, 1, 6, 6), bins=4).eval()
    removable = [g.name for g in sn.space.groups if g.removable]
    assert removable, "the core should find removable bottleneck blocks"
    poly = MacsPolynomial(sn)
    assert poly.removed  # conv3 of a removed block is gated, not a product with width 0
    space = IndexSpace(sn, removable_zero=True)
    g = space.names.index(removable[0])
    assert space.choices[g][0] == 0
    rng = np.random.default_rng(4)
    probs = [rng.dirichlet(np.ones(k)) for k in space.sizes]
    # exact expectation by enumeration over all configs (the space is tiny)
    exact = 0.0
    for combo in itertools.product(*[range(k) for k in space.sizes]):
        weight = np.prod([p[i] for p, i in zip(probs, combo, strict=True)])
        exact += weight * float(space.macs(np.array(combo)))
    full = sn.widths_vector(sn.space.max()).astype(np.float64)
    mean, second, zero = full.copy(), full**2, np.zeros_like(full)
    for j, p in enumerate(probs):
        c = space.choices[j].astype(np.float64)
        pos = space.positions[j]
        mean[pos], second[pos], zero[pos] = p @ c, p @ c**2, p[0] if c[0] == 0 else 0.0
    assert poly.expected(mean, second, zero) == pytest.approx(exact, rel=1e-12)

    # one-hot masks with a removed block == the supernet with that block at width 0
    cfg = sn.space.sample(1)
    cfg[removable[0]] = 0
    expected, got = _left_and_one_hot_masked(sn, space, cfg, torch.randn(3, 1, 6, 6))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_soft_masks_on_channels_last_layers(convnext_supernet):
    """ConvNeXt's blocks mask the outputs of their LayerNorm and first Linear on the last
    dimension (channels-last): all-ones masks change nothing, and a 0/1 mask on a block's
    hidden group (or its removal) is exactly the supernet's left subnet without those
    channels (or that block)."""
    sn = convnext_supernet
    space = IndexSpace(sn, removable_zero=True)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = sn(x)
        with SoftMasks(sn, space) as masks:
            masks.masks = [torch.ones(g.max_channels) for g in sn.space.searchable]
            masks.alive = [torch.tensor(1.0) if c[0] == 0 else None for c in space.choices]
            ones = sn(x)
    torch.testing.assert_close(ones, plain, rtol=0, atol=0)

    hidden = "features.3.1.block.3"  # Linear(192, 768) on (N, H, W, C); H = W = 4 here
    removed = "features.5.2.block.3"
    assert sn.space[hidden].removable and sn.space[removed].removable
    cfg = sn.space.max()
    cfg[hidden], cfg[removed] = 288, 0
    expected, got = _left_and_one_hot_masked(sn, space, cfg, x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain, expected, rtol=1e-3, atol=1e-4)


def test_soft_masks_on_attention_heads():
    """Attention's heads are no layer's output: their masks act on the output projection's
    input, ``head_dim`` features per head. A 0/1 mask on the heads of two blocks is exactly
    the supernet's left subnet with those heads (heads are computed independently)."""
    from timm.models.vision_transformer import VisionTransformer
    from widthsearch.supernet import Supernet

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=5
    ).eval()
    sn = Supernet.from_model(model, torch.randn(1, 3, 16, 16)).eval()
    space = IndexSpace(sn)
    cfg = sn.space.max()
    cfg["blocks.0.attn:heads"], cfg["blocks.1.attn:heads"] = 1, 2
    x = torch.randn(4, 3, 16, 16)
    expected, got = _left_and_one_hot_masked(sn, space, cfg, x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(sn(x), expected, rtol=1e-3, atol=1e-4)
