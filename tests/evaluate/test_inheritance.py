"""Weight inheritance: sides mirror the supernet exactly, top-k picks the right channels, the
chosen candidate is the best by held-out score."""

from __future__ import annotations

import io
import math
import re
import sys

import pytest
import torch
from torch import nn
from widthsearch.evaluate import (
    INHERITANCE,
    candidate_indices,
    channel_importance,
    counted_macs,
    extract_subnet,
    group_blocks,
    inherit,
    load_subnet,
    topk_indices,
)
from widthsearch.evaluate._common import top1
from widthsearch.search import scoring_data
from widthsearch.supernet import Supernet
from widthsearch.supernet.bn import recalibrate_bn


@pytest.mark.parametrize("side", ["left", "right"])
def test_side_inheritance_equals_the_supernet_subnet(loaded, config_of, side):
    sn, _ = loaded
    cfg = config_of(sn, seed=5)
    size = sn.meta["input_size"]
    x = torch.randn(6, 1, size, size, generator=torch.Generator().manual_seed(0))
    model = inherit(sn, cfg, side).eval()
    with torch.no_grad(), sn.active(cfg, side):
        expected = sn(x)
    assert type(model) is type(sn.model)
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == sn.params(cfg)


def test_saved_side_subnet_equals_the_recalibrated_supernet_subnet(
    loaded, config_of, supernet_path, tmp_path
):
    """After BN recalibration on the same batches, the saved subnet still is the supernet's
    subnet of that side (the recalibration is the same computation)."""
    sn, payload = loaded
    cfg = config_of(sn, seed=6)
    data = scoring_data(payload, sn.meta, where="extract")
    out = tmp_path / "right.pt"
    result = extract_subnet(
        (sn, payload),
        widths=cfg,
        candidates=["right"],
        data=data,
        out=out,
        supernet_path=str(supernet_path),
    )
    assert result["inheritance"]["chosen"] == "right"
    saved = load_subnet(out)
    recalibrate_bn(sn, data.calib_batches, cfg=cfg, side="right")
    x = data.heldout_batches[0][0][:8]
    with torch.no_grad(), sn.active(cfg, "right"):
        expected = sn(x)
    assert torch.allclose(saved(x), expected, atol=1e-5)


def test_chosen_inheritance_has_the_best_recorded_and_rescored_score(loaded, config_of):
    sn, payload = loaded
    cfg = config_of(sn, seed=7)
    data = scoring_data(payload, sn.meta, where="extract")
    result = extract_subnet((sn, payload), widths=cfg, data=data)
    inh = result["inheritance"]
    assert set(inh["scores"]) == set(INHERITANCE)
    assert inh["scores"][inh["chosen"]] == max(inh["scores"].values())
    # re-score every candidate independently: same numbers, same winner
    for name, recorded in inh["scores"].items():
        model = inherit(sn, cfg, name)
        recalibrate_bn(model, data.calib_batches)
        assert top1(model, data.heldout_batches) == pytest.approx(recorded, abs=1e-12), name
    assert top1(result["module"], data.heldout_batches) == pytest.approx(
        inh["scores"][inh["chosen"]]
    )
    assert result["macs"] == sn.macs(cfg) and result["params"] == sn.params(cfg)
    # the choice means something: candidates score differently and the best beats chance
    assert len(set(inh["scores"].values())) > 1
    assert inh["scores"][inh["chosen"]] > 0.15  # chance 0.1 (sd 0.027 on 128 images)
    # top-1 by hand: the chosen module's argmax against the labels
    hits = total = 0
    with torch.no_grad():
        for images, labels in data.heldout_batches:
            hits += int((result["module"](images).argmax(1) == labels).sum())
            total += len(labels)
    assert hits / total == pytest.approx(inh["scores"][inh["chosen"]], abs=1e-12)


def test_ties_keep_the_earlier_candidate_and_the_best_is_returned(loaded, config_of, monkeypatch):
    from widthsearch.evaluate import inheritance

    sn, payload = loaded
    cfg = config_of(sn, seed=7)
    data = scoring_data(payload, sn.meta, where="extract")
    fixed = {"left": 0.5, "right": 0.5, "l1": 0.25, "bn": 0.5}
    order = iter(["right", "left", "bn", "l1"])
    monkeypatch.setattr(inheritance, "top1", lambda model, batches, **_: fixed[next(order)])
    model, info = inheritance.choose_inheritance(
        sn,
        cfg,
        calib=data.calib_batches,
        heldout=data.heldout_batches,
        candidates=["right", "left", "bn", "l1"],
    )
    assert info == {"chosen": "right", "scores": {"right": 0.5, "left": 0.5, "bn": 0.5, "l1": 0.25}}
    x = data.heldout_batches[0][0][:4]
    expected = inheritance.inherit(sn, cfg, "right")
    recalibrate_bn(expected, data.calib_batches)
    with torch.no_grad():
        assert torch.allclose(model(x), expected.eval()(x), atol=1e-5)
    assert not model.training
    with pytest.raises(ValueError) as info:
        inheritance.choose_inheritance(
            sn, cfg, calib=data.calib_batches, heldout=data.heldout_batches, candidates=[]
        )
    assert str(info.value) == "no weight-inheritance candidate given"
    with pytest.raises(ValueError, match="unknown weight inheritance 'mid'; valid: left, right"):
        inheritance.choose_inheritance(
            sn,
            cfg,
            calib=data.calib_batches,
            heldout=data.heldout_batches,
            candidates=["left", "mid"],
        )


def test_l1_and_bn_topk_keep_the_highest_importance_channels(loaded, config_of):
    sn, _ = loaded
    cfg = config_of(sn, seed=8)
    full = sn.space.validate(cfg)
    group = next(g for g in sn.space.searchable if full[g.name] < g.max_channels)
    width = full[group.name]
    # L1: by hand, summing the output-filter L1 norms of the group's convs
    gi = sn.space.index[group.name]
    l1 = sum(
        layer.module.weight.detach().abs().flatten(1).sum(1)
        for layer, _, out_gs in sn.layers
        if out_gs == (gi,) and layer.kind != "bn"
    )
    bn = sum(
        layer.module.weight.detach().abs()
        for layer, _, out_gs in sn.layers
        if out_gs == (gi,) and layer.kind == "bn"
    )
    for method, importance in (("l1", l1), ("bn", bn)):
        assert torch.allclose(channel_importance(sn, method)[group.name], importance)
        _, indices = candidate_indices(sn, cfg, method)
        kept = indices[group.name]
        assert kept.tolist() == sorted(kept.tolist()) and len(kept) == width
        dropped = sorted(set(range(group.max_channels)) - set(kept.tolist()))
        assert importance[kept].min() >= importance[dropped].max()
    # the extracted model holds exactly those channels' weights
    model = inherit(sn, cfg, "l1")
    _, indices = candidate_indices(sn, cfg, "l1")
    names = [g.name for g in sn.space.groups]
    layer, (in_g,), _ = next(t for t in sn.layers if t[2] == (gi,) and t[0].kind == "conv")
    keep_in = indices.get(names[in_g], torch.arange(sn.space.groups[in_g].max_channels))
    expected = layer.module.weight.detach()[indices[group.name]][:, keep_in]
    assert torch.equal(model.get_submodule(layer.name).weight, expected)


def test_topk_blocks_are_whole_and_ranked_by_summed_importance():
    importance = torch.tensor([5.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0])
    assert topk_indices(importance, 3).tolist() == [0, 4, 11]  # top-3 single channels
    # blocks of 4 sum to 5, 4, 3: keep the first two blocks whole
    assert topk_indices(importance, 8, block=4).tolist() == list(range(8))
    assert topk_indices(importance, 4, block=4).tolist() == [0, 1, 2, 3]
    assert topk_indices(importance, 0).tolist() == []
    assert topk_indices(importance, 12).tolist() == list(range(12))
    with pytest.raises(ValueError):
        topk_indices(importance, 6, block=4)
    # ties go to the lower index
    assert topk_indices(torch.ones(6), 2).tolist() == [0, 1]


def test_grouped_conv_groups_keep_whole_conv_groups():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False),  # 4 channels per conv group
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    sn = Supernet.from_model(model, torch.zeros(1, 1, 8, 8), bins=4)
    group = next(g for g in sn.space.searchable)
    assert group_blocks(sn)[group.name] == 4 and group.round_to % 4 == 0
    with torch.no_grad():  # make a non-contiguous block choice the best one
        gammas = [1.0] * 4 + [0.1] * 3 + [3.0] + [0.2] * 4 + [2.0] * 4  # one strong channel
        sn.model[1].weight.copy_(torch.tensor(gammas))
    cfg = {group.name: 8}
    _, indices = candidate_indices(sn, cfg, "bn")
    # blocks sum to 4, 3.3, 0.8, 8: blocks 3 and 0, although channel 7 alone is the strongest
    assert indices[group.name].tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    sub = inherit(sn, cfg, "bn").eval()
    conv = sub[3]
    assert conv.groups == 2 and conv.in_channels == conv.out_channels == 8
    assert torch.equal(conv.weight, sn.model[3].weight.detach()[indices[group.name]])
    # the kept conv groups compute what they computed in the full network
    x = torch.randn(2, 1, 8, 8)
    sn.model.eval()
    with torch.no_grad():
        full_mid = sn.model[:4](x)[:, indices[group.name]]
        assert torch.allclose(sub[:4](x), full_mid, atol=1e-5)
    assert math.prod(sub(x).shape) == 20


def test_depth_pruned_configs_extract_with_every_candidate(loaded):
    """Width 0 on a removable group drops its residual block, whatever the inheritance."""
    sn, _ = loaded
    cfg = sn.space.uniform(0.5)
    removable = [g.name for g in sn.space.groups if g.removable]
    cfg[removable[0]] = cfg[removable[-1]] = 0
    size = sn.meta["input_size"]
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(2))
    for name in INHERITANCE:
        model = inherit(sn, cfg, name).eval()
        assert counted_macs(model, torch.zeros(1, 1, size, size)) == sn.macs(cfg), name
        assert sum(p.numel() for p in model.parameters()) == sn.params(cfg), name
        if name in ("left", "right"):
            with torch.no_grad(), sn.active(cfg, name):
                assert torch.allclose(model(x), sn(x), atol=1e-5)


def _bn_and_plain_conv_supernet(dtype=torch.float32):
    """conv + BN, then a conv whose BN has no scale: its group has only L1 evidence."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.BatchNorm2d(6, affine=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).to(dtype)
    model.eval()  # tracing: keep the running statistics as they are
    with torch.no_grad():
        model[1].weight.uniform_(-2, 2)  # signed gammas: importance is |gamma|
    return Supernet.from_model(model, torch.zeros(1, 1, 8, 8, dtype=dtype), bins=2)


def test_importance_of_every_group_by_hand_and_bn_falls_back_to_l1():
    sn = _bn_and_plain_conv_supernet()
    conv1, bn, conv2 = sn.model[0], sn.model[1], sn.model[3]
    first = conv1.weight.detach().abs().sum((1, 2, 3))
    second = conv2.weight.detach().abs().sum((1, 2, 3))
    by_width = {8: (first, bn.weight.detach().abs()), 6: (second, second)}
    assert sorted(g.max_channels for g in sn.space.searchable) == [6, 8]
    for method, column in (("l1", 0), ("bn", 1)):
        importance = channel_importance(sn, method)
        assert set(importance) == {g.name for g in sn.space.searchable}
        for group in sn.space.searchable:
            expected = by_width[group.max_channels][column]
            assert torch.allclose(importance[group.name], expected)
            assert importance[group.name].dtype == torch.float32


def test_importance_is_float32_whatever_the_weights_dtype():
    sn = _bn_and_plain_conv_supernet(torch.float64)
    for method in ("l1", "bn"):
        assert {v.dtype for v in channel_importance(sn, method).values()} == {torch.float32}


def test_importance_and_topk_messages_in_full():
    sn = _bn_and_plain_conv_supernet()
    with pytest.raises(ValueError) as info:
        channel_importance(sn, "taylor")
    assert str(info.value) == "importance method must be 'l1' or 'bn', got 'taylor'"
    importance = torch.arange(8.0)
    with pytest.raises(ValueError) as info:
        topk_indices(importance, 9)
    assert str(info.value) == "cannot keep 9 of 8 channels"
    with pytest.raises(ValueError) as info:
        topk_indices(importance, -1)
    assert str(info.value) == "cannot keep -1 of 8 channels"
    for k, block in ((4, 0), (4, 3), (3, 2)):
        with pytest.raises(ValueError) as info:
            topk_indices(importance, k, block=block)
        assert str(info.value) == f"{k} of 8 channels cannot be kept in whole blocks of {block}"


def test_topk_ties_go_to_the_lower_index_on_long_rows():
    # torch's default sort is not stable on rows this long: ties must still keep the first
    assert topk_indices(torch.ones(5000), 10).tolist() == list(range(10))
    assert topk_indices(torch.ones(5000), 8, block=4).tolist() == list(range(8))
    assert topk_indices(torch.ones(6), 3).dtype == torch.int64


def test_inheritance_logs_each_score_and_shows_a_bar_only_when_asked(loaded, config_of, capsys):
    from widthsearch.evaluate import inheritance

    sn, payload = loaded
    cfg = config_of(sn, seed=7)
    data = scoring_data(payload, sn.meta, where="extract")
    lines: list[str] = []
    capsys.readouterr()
    _, info = inheritance.choose_inheritance(
        sn,
        cfg,
        calib=data.calib_batches,
        heldout=data.heldout_batches,
        candidates=["left", "l1"],
        progress=True,
        log=lines.append,
    )
    assert lines == [
        f"inheritance {name}: held-out top-1 {info['scores'][name]:.4f}" for name in ("left", "l1")
    ]
    bar = capsys.readouterr().err
    assert "inheritance: 100%" in bar and "2/2" in bar
    assert re.search(r"[\d.]+cand/s|s/cand\]", bar), bar  # the unit, either way round
    for progress in (False, None):  # None: only on a terminal, and pytest's stderr is none
        inheritance.choose_inheritance(
            sn,
            cfg,
            calib=data.calib_batches,
            heldout=data.heldout_batches,
            candidates=["left"],
            progress=progress,
        )
        assert capsys.readouterr().err == ""


def test_given_importance_decides_the_channels_and_full_groups_keep_all(loaded):
    sn, _ = loaded
    searchable = sn.space.searchable
    # the first searchable group at full width, every other one at its narrowest choice
    cfg = {g.name: (g.max_channels if i == 0 else g.choices[0]) for i, g in enumerate(searchable)}
    reverse = {g.name: torch.arange(g.max_channels, dtype=torch.float32) for g in searchable}
    side, indices = candidate_indices(sn, cfg, "l1", importance=reverse)
    assert side == "left" and set(indices) == {g.name for g in searchable[1:]}
    for group in searchable[1:]:  # the highest indices are the most important here
        width = cfg[group.name]
        assert indices[group.name].tolist() == list(
            range(group.max_channels - width, group.max_channels)
        )
    model = inherit(sn, cfg, "l1", importance=reverse)
    names = [g.name for g in sn.space.groups]
    layer, (in_g,), (out_g,) = next(
        t for t in sn.layers if t[0].kind == "conv" and names[t[2][0]] in indices
    )
    keep_out = indices[names[out_g]]
    keep_in = indices.get(names[in_g], torch.arange(sn.space.groups[in_g].max_channels))
    expected = layer.module.weight.detach()[keep_out][:, keep_in]
    assert torch.equal(model.get_submodule(layer.name).weight, expected)
    with pytest.raises(ValueError) as info:
        candidate_indices(sn, cfg, "mid")
    assert str(info.value) == "unknown weight inheritance 'mid'; valid: " + ", ".join(INHERITANCE)


def test_inheritance_bar_by_default_only_on_a_terminal(loaded, config_of, monkeypatch):
    from widthsearch.evaluate import inheritance

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    sn, payload = loaded
    data = scoring_data(payload, sn.meta, where="extract")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    inheritance.choose_inheritance(
        sn,
        config_of(sn, seed=7),
        calib=data.calib_batches,
        heldout=data.heldout_batches,
        candidates=["left"],
    )
    assert "inheritance: 100%" in terminal.getvalue()


def test_inheritance_scores_on_the_given_runtime(loaded, config_of, monkeypatch):
    from widthsearch.evaluate import inheritance
    from widthsearch.supernet.runtime import Runtime

    sn, payload = loaded
    data = scoring_data(payload, sn.meta, where="extract")
    seen = []
    monkeypatch.setattr(
        inheritance, "top1", lambda model, batches, runtime=None: seen.append(runtime) or 0.5
    )
    runtime = Runtime()
    inheritance.choose_inheritance(
        sn,
        config_of(sn, seed=7),
        calib=data.calib_batches,
        heldout=data.heldout_batches,
        candidates=["left", "right"],
        runtime=runtime,
    )
    assert seen == [runtime, runtime] and all(r is runtime for r in seen)
