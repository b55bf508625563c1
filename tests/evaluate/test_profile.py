"""The latency table's whole-subnet fit (``evaluate/profile.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from scipy import optimize
from torch import nn
from widthsearch.evaluate import profile as profile_module
from widthsearch.evaluate.profile import (
    _layer_shapes,
    _output_elements,
    fit_latency,
    interpolate_grid,
    profile_latency,
    sample_indices,
)
from widthsearch.search.latency import LayerLatency, layer_groups
from widthsearch.supernet import Supernet


def test_fit_recovers_overhead_scale_and_activation_cost():
    rng = np.random.default_rng(0)
    sums = rng.uniform(1, 10, size=12)
    mega = rng.uniform(0, 5, size=12)
    measured = 0.7 + 1.3 * sums + 0.4 * mega
    overhead, scale, activation = fit_latency(list(sums), list(mega), list(measured))
    assert (overhead, scale, activation) == pytest.approx((0.7, 1.3, 0.4), abs=1e-9)


def test_fit_minimises_the_relative_error_so_narrow_subnets_count():
    """Where no coefficients fit every subnet, the fit trades milliseconds of the wide ones
    for a small relative error on the narrow ones (what a relative budget needs)."""
    sums = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    mega = np.array([0.5, 0.2, 1.0, 0.3, 2.0])
    measured = np.array([0.5, 2.4, 5.1, 9.5, 21.0])  # not linear in the two terms

    def relative_sse(coef) -> float:
        predicted = coef[0] + coef[1] * sums + coef[2] * mega
        return float(np.sum(((predicted - measured) / measured) ** 2))

    fitted = fit_latency(list(sums), list(mega), list(measured))
    design = np.stack([np.ones_like(sums), sums, mega], axis=1)
    absolute, _ = optimize.nnls(design, measured)  # what a fit in milliseconds would give
    assert relative_sse(fitted) < relative_sse(absolute)
    first = fitted[0] + fitted[1] * sums[0] + fitted[2] * mega[0]
    assert abs(first - 0.5) / 0.5 < abs(design[0] @ absolute - 0.5) / 0.5


def test_fit_keeps_every_term_non_negative():
    sums = [1.0, 2.0, 3.0, 4.0, 5.0]
    mega = [1.0, 3.0, 2.0, 5.0, 4.0]
    # measured falls with the elements: their coefficient is clipped to 0, not negative
    measured = [2 + s - 0.3 * e for s, e in zip(sums, mega, strict=True)]
    overhead, scale, activation = fit_latency(sums, mega, measured)
    assert min(overhead, scale, activation) >= 0
    assert activation == 0.0


def test_fit_with_too_little_to_fit_keeps_the_layers_and_a_constant():
    assert fit_latency([2.0, 2.0], [1.0, 3.0], [3.0, 3.5]) == (1.25, 1.0, 0.0)
    assert fit_latency([1.0, 2.0], [1.0, 2.0], [0.5, 0.5]) == (0.0, 1.0, 0.0)


def test_output_elements_follow_the_output_width_axis():
    choices = {"a": [2, 4], "b": [1, 3, 5]}
    two = _output_elements(LayerLatency("conv", ["a", "b"], []), choices, per_channel=1_000_000)
    assert np.array_equal(two, [[1, 3, 5], [1, 3, 5]])
    one = _output_elements(LayerLatency("bn", ["a"], []), choices, per_channel=500_000)
    assert np.array_equal(one, [1.0, 2.0])


class _ChannelsLastBlock(nn.Module):
    """ConvNeXt's block in miniature: LayerNorm and Linear on (N, H, W, C), a layer scale
    that the block's forward multiplies directly, a LayerNorm2d head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 1)
        self.norm, self.up, self.down = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8)
        self.layer_scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.head, self.fc = torchvision.models.convnext.LayerNorm2d(8), nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(x.permute(0, 2, 3, 1))
        y = self.down(nn.functional.gelu(self.up(y))).permute(0, 3, 1, 2)
        return self.fc(self.head(x + self.layer_scale * y).mean((2, 3)))


def test_profile_times_channels_last_layers_on_their_channel_dimension():
    """LayerNorm and Linear on the last dimension are timed with their channels cut there
    (H = 6, W = 5, C = 8: no other dimension fits); the layer scale, no module of its own,
    gets zeros."""
    torch.manual_seed(0)
    sn = Supernet.from_model(_ChannelsLastBlock().eval(), torch.zeros(1, 2, 6, 5), bins=2)
    sn.meta.update(input_size=6, in_chans=2)
    shapes, per_channel = _layer_shapes(sn.eval(), torch.zeros(1, 2, 6, 5))
    assert shapes["norm"] == [(1, 6, 5, 8)] and shapes["down"] == [(1, 6, 5, 16)]
    assert shapes["head"] == [(1, 8, 6, 5)] and "layer_scale" not in shapes
    assert {n: per_channel[n] for n in ("stem", "norm", "up", "down", "head", "fc")} == {
        "stem": 30,
        "norm": 30,
        "up": 30,
        "down": 30,
        "head": 30,
        "fc": 1,
    }
    table = profile_latency(sn, seconds=1e-4, calibration=0, progress=False)
    assert [t.name for t in table.layers] == [name for name, _, _ in layer_groups(sn)]
    entries = {t.name: np.asarray(t.ms) for t in table.layers}
    assert not entries.pop("layer_scale").any()
    assert all((ms > 0).all() for ms in entries.values()), entries


def test_profile_times_attention_per_heads_without_its_output_projection():
    """timm's attention is timed alone at every (embedding width, heads) cell, its output
    projection (a layer of its own) left out; the class token and position embedding, no
    modules of their own, get zeros."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=16, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3
    )
    sn = Supernet.from_model(model.eval(), torch.zeros(1, 3, 16, 16), bins=2)
    sn.meta.update(input_size=16, in_chans=3)
    shapes, per_channel = _layer_shapes(sn.eval(), torch.zeros(1, 3, 16, 16))
    assert shapes["blocks.0.attn"] == [(1, 5, 16)] and "blocks.0.attn" not in per_channel
    assert shapes["blocks.0.attn.proj"] == [(1, 5, 16)]
    table = profile_latency(sn, seconds=1e-4, calibration=0, progress=False)
    entries = {t.name: np.asarray(t.ms) for t in table.layers}
    attention = entries.pop("blocks.0.attn")
    assert attention.shape == (2, 2) and (attention > 0).all()  # embedding x heads choices
    assert not entries.pop("cls_token").any() and not entries.pop("pos_embed").any()
    assert all((ms > 0).all() for ms in entries.values()), entries


def test_sampled_widths_keep_both_ends_and_space_evenly():
    assert (
        sample_indices(8, None) == sample_indices(8, 8) == sample_indices(8, 12) == list(range(8))
    )
    assert sample_indices(8, 2) == [0, 7]
    assert sample_indices(8, 4) == [0, 2, 5, 7]
    assert sample_indices(1, 3) == [0]


def test_interpolation_keeps_timed_entries_and_is_exact_for_bilinear_costs():
    """A dense layer's time grows like a + b*w_in + c*w_out + d*w_in*w_out: the separable
    linear fill between timed widths reproduces it exactly, on uneven widths too."""
    w_in, w_out = [4, 8, 12, 16, 24, 32], [2, 5, 6, 9, 11]
    x, y = np.meshgrid(w_in, w_out, indexing="ij")
    truth = 0.3 + 0.02 * x + 0.05 * y + 0.004 * x * y
    grid = [sample_indices(6, 3), sample_indices(5, 3)]
    timed = np.zeros_like(truth)
    timed[np.ix_(*grid)] = truth[np.ix_(*grid)]  # the rest is what was never timed
    filled = interpolate_grid(timed, [w_in, w_out], grid)
    assert np.allclose(filled, truth, atol=1e-12)
    one_axis = interpolate_grid(np.array([1.0, 0, 0, 4.0]), [[1, 2, 3, 4]], [[0, 3]])
    assert np.allclose(one_axis, [1, 2, 3, 4])


def test_profile_times_only_the_sampled_grid(monkeypatch):
    """With ``sample_widths=2`` each layer is timed at its groups' narrowest and widest choices
    only (2 or 4 entries, not bins or bins squared); the table keeps every choice, and where
    the timing is linear in the widths (this fake: the input's size) the untimed entries are
    filled with what timing them gives."""
    from widthsearch.supernet.models import create_model

    calls = []

    def fake_timing(module, example, **_):
        calls.append(module)
        return 1.0 + example.numel() / 1e3

    monkeypatch.setattr(profile_module, "measure_latency", fake_timing)
    meta = {"model": "resnet20", "num_classes": 10, "in_chans": 1, "input_size": 8}
    sn = Supernet.from_model(
        create_model("resnet20", num_classes=10, in_chans=1),
        torch.zeros(1, 1, 8, 8),
        bins=4,
        meta=meta,
    )
    plan = layer_groups(sn)
    counts = {g.name: len(g.choices) for g in sn.space.groups}
    full = profile_latency(sn, seconds=1e-4, calibration=0, progress=False)
    every = len(calls)
    calls.clear()
    sampled = profile_latency(sn, seconds=1e-4, calibration=0, sample_widths=2, progress=False)
    whole_subnets = len(full.calibration)
    assert every - whole_subnets == sum(np.prod([counts[g] for g in gs]) for _, gs, _ in plan)
    assert len(calls) - whole_subnets == sum(
        np.prod([min(2, counts[g]) for g in gs]) for _, gs, _ in plan
    )
    assert (sampled.sample_widths, full.sample_widths) == (2, 0)
    every_choice = profile_latency(sn, seconds=1e-4, calibration=0, sample_widths=9, progress=False)
    assert every_choice.sample_widths == 0  # no group has more than 9 choices: nothing sampled
    assert [np.shape(t.ms) for t in sampled.layers] == [np.shape(t.ms) for t in full.layers]
    for cut, every_entry in zip(sampled.layers, full.layers, strict=True):
        assert np.allclose(cut.ms, every_entry.ms, rtol=1e-5), cut.name
