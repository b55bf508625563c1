"""Supernet training: BCNet step gradients, BN recalibration, loss records, exact resume,
divergence, and a 2-process torchrun run whose replicas stay identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import Supernet, WidthsearchError
from widthsearch.supernet.bn import recalibrate_bn
from widthsearch.supernet.checkpoint import load_checkpoint, load_supernet
from widthsearch.supernet.models import create_model
from widthsearch.supernet.runtime import RANK_STATE_ENV
from widthsearch.supernet.sampling import FairSampler
from widthsearch.supernet.train import (
    LossRecords,
    bcnet_step,
    preserved_state,
    sandwich_step,
    subnet_top1,
    train_supernet,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _tiny_supernet(dtype=torch.float64, size=8) -> Supernet:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1).to(dtype)
    return Supernet.from_model(model, torch.zeros(1, 1, size, size, dtype=dtype), bins=4)


def _batch(dtype=torch.float64, n=8, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=g).to(dtype), torch.randint(
        10, (n,), generator=g
    )


def _grads(sn: Supernet) -> list[torch.Tensor]:
    return [p.grad.clone() for p in sn.parameters()]


def _cfg(sn: Supernet, seed: int = 0) -> dict[str, int]:
    cfg = sn.space.sample(seed)
    assert cfg != sn.space.max()
    return cfg


@pytest.mark.parametrize("distill", [False, True])
def test_bcnet_step_gradient_is_mean_of_left_and_right(distill):
    sn = _tiny_supernet()
    x, y = _batch()
    cfg = _cfg(sn)
    criterion = nn.CrossEntropyLoss()
    sn.train()
    with preserved_state(sn):  # every pass sees the same BN state
        teacher = None
        if distill:
            with torch.no_grad(), sn.active(None):
                teacher = torch.softmax(sn(x), dim=1)
        one_side = []
        for side in ("left", "right"):
            sn.zero_grad(set_to_none=False)
            with sn.active(cfg, side):
                logits = sn(x)
                loss = (
                    criterion(logits, y)
                    if teacher is None
                    else -(teacher * torch.log_softmax(logits, 1)).sum(1).mean()
                )
                loss.backward()
            one_side.append(_grads(sn))
    sn.zero_grad(set_to_none=False)
    losses = bcnet_step(sn, x, y, cfg, criterion=criterion, distill=distill)
    assert set(losses) == {"left", "right"}
    both = _grads(sn)
    differs = 0
    for g, gl, gr in zip(both, *one_side, strict=True):
        torch.testing.assert_close(g, 0.5 * (gl + gr), rtol=1e-12, atol=1e-14)
        differs += not torch.equal(gl, gr)
    assert differs > 10  # the two sides really are different subnets
    assert sn._widths is None  # full width afterwards


def test_full_step_is_one_full_width_pass():
    sn = _tiny_supernet()
    x, y = _batch()
    criterion = nn.CrossEntropyLoss()
    with preserved_state(sn):
        sn.zero_grad(set_to_none=False)
        criterion(sn(x), y).backward()
        expected = _grads(sn)
    sn.zero_grad(set_to_none=False)
    assert set(bcnet_step(sn, x, y, None, criterion=criterion)) == {"full"}
    for g, e in zip(_grads(sn), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


def test_sandwich_step_sums_max_label_and_distilled_subnets():
    sn = _tiny_supernet()
    x, y = _batch()
    criterion = nn.CrossEntropyLoss()
    cfgs = [sn.space.max(), sn.space.min(), _cfg(sn, 3)]
    expected = None
    with preserved_state(sn):
        sn.zero_grad(set_to_none=False)
        teacher = torch.softmax(sn(x), 1).detach()
        total = criterion(sn(x), y)
        for cfg in cfgs[1:]:
            with sn.active(cfg, "left"):
                total = total - (teacher * torch.log_softmax(sn(x), 1)).sum(1).mean()
        total.backward()
        expected = _grads(sn)
    sn.zero_grad(set_to_none=False)
    losses = sandwich_step(sn, x, y, cfgs, criterion=criterion)
    assert len(losses) == 3
    for g, e in zip(_grads(sn), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_bn_recalibration_gives_the_calibration_batch_statistics():
    sn = _tiny_supernet(torch.float32, size=8)
    sn.train()
    x, _ = _batch(torch.float32, n=16)
    for _ in range(3):  # non-trivial running stats to start from
        with sn.active(_cfg(sn, 5), "left"):
            sn(x * 2 + 1)
    before = {k: v.clone() for k, v in sn.model.state_dict().items()}
    cfg = _cfg(sn, 0)
    bn = sn.model.layer2[1].bn1  # a BN of a sliced group
    group = next(sn.space.groups[o].name for layer, _, (o,) in sn.layers if layer.module is bn)
    width, full = cfg[group], sn.space[group].max_channels
    assert width < full
    seen = []
    handle = bn.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        with preserved_state(sn):
            recalibrate_bn(sn, [x], cfg=cfg, side="right")
            (inp,) = seen
            assert inp.shape[1] == width
            span = slice(full - width, full)
            torch.testing.assert_close(bn.running_mean[span], inp.mean((0, 2, 3)))
            torch.testing.assert_close(bn.running_var[span], inp.var((0, 2, 3), unbiased=True))
            # channels outside the subnet keep their stats
            torch.testing.assert_close(
                bn.running_mean[: full - width], before["layer2.1.bn1.running_mean"][: full - width]
            )
    finally:
        handle.remove()
    # the block restored every buffer exactly: training state untouched
    after = sn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sn.training


def test_subnet_top1_recalibrates_and_leaves_state_untouched():
    sn = _tiny_supernet(torch.float32)
    sn.train()
    x, y = _batch(torch.float32, n=32)
    before = {k: v.clone() for k, v in sn.model.state_dict().items()}
    cfg = sn.space.min()
    top1 = subnet_top1(sn, cfg, [(x, y)], [(x, y)])
    after = sn.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert sn.training
    # the same figure by hand
    recalibrate_bn(sn, [x], cfg=cfg)
    with torch.no_grad(), sn.active(cfg):
        expected = (sn(x).argmax(1) == y).float().mean().item()
    assert top1 == pytest.approx(expected)


def test_loss_records_credit_every_group_and_round_trip():
    sn = _tiny_supernet()
    records = LossRecords(g.name for g in sn.space.searchable)
    sampler = FairSampler(sn.space, seed=0)
    a, b = sampler.plan(0).cfg, sampler.plan(1).cfg
    records.add(a, 1.0)
    records.add(a, 3.0)
    records.add(b, 5.0)
    data = records.to_dict()
    assert set(data) == {g.name for g in sn.space.searchable}
    for g in sn.space.searchable:
        if a[g.name] == b[g.name]:
            assert data[g.name][a[g.name]] == [9.0, 3]
        else:
            assert data[g.name][a[g.name]] == [4.0, 2]
            assert data[g.name][b[g.name]] == [5.0, 1]
    assert LossRecords.from_dict(data).to_dict() == data


def _recipe(tiny: Path, train_limit: int = 320, **train):
    recipe = load_recipe(str(tiny))
    recipe.data.train_limit = train_limit  # 10 steps per epoch
    for key, value in train.items():
        setattr(recipe.train, key, value)
    return recipe


@pytest.mark.parametrize("trainer", ["bcnet", "sandwich"])
def test_resume_is_exact(train_tiny, tmp_path, trainer):
    straight, split = tmp_path / "straight", tmp_path / "split"
    kw = {"progress": False, "log": lambda line: None}
    train_supernet(_recipe(train_tiny, trainer=trainer, epochs=2), out_dir=straight, **kw)
    train_supernet(
        _recipe(train_tiny, trainer=trainer, epochs=2), out_dir=split, stop_after=1, **kw
    )
    first = load_checkpoint(split / "supernet.pt", kind="widthsearch.supernet")
    assert first["train_state"]["epoch"] == 1
    result = train_supernet(
        _recipe(train_tiny, trainer=trainer, epochs=2), out_dir=split, resume=True, **kw
    )
    assert result.epochs_run == 1
    a = load_checkpoint(straight / "supernet.pt", kind="widthsearch.supernet")
    b = load_checkpoint(split / "supernet.pt", kind="widthsearch.supernet")
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    opt_a, opt_b = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)
    assert a["train_state"]["step"] == b["train_state"]["step"] == 2 * 10
    assert a["loss_records"] == b["loss_records"]
    # which images were held out is recorded (search and extract check it)
    assert a["data"]["heldout_digest"] == b["data"]["heldout_digest"]
    assert len(a["data"]["heldout_digest"]) == 64
    drop = ("seconds", "eval_seconds")
    assert [{k: v for k, v in e.items() if k not in drop} for e in a["history"]] == [
        {k: v for k, v in e.items() if k not in drop} for e in b["history"]
    ]
    # records count every subnet trained: BCNet 2 per sampled step, 1 per full step
    counts = sum(c for _, c in a["loss_records"]["conv1"].values())
    assert counts == (2 * 14 + 6 if trainer == "bcnet" else 4 * 20)


def test_divergence_stops_with_clear_error_and_keeps_last_good_checkpoint(train_tiny, tmp_path):
    pattern = r"diverged: .* loss is (nan|inf) .* checkpoint .*supernet.pt \(epoch 0\)"
    with pytest.raises(WidthsearchError, match=pattern):
        train_supernet(
            _recipe(train_tiny, lr=1e30, epochs=2),
            out_dir=tmp_path,
            progress=False,
            log=lambda s: None,
        )
    _, payload = load_supernet(tmp_path / "supernet.pt")
    assert payload["train_state"]["epoch"] == 0
    assert all(
        torch.isfinite(t).all() for t in payload["state_dict"].values() if t.is_floating_point()
    )


def test_torchrun_two_gloo_processes_keep_identical_replicas(train_tiny, tmp_path):
    env = {**os.environ, RANK_STATE_ENV: str(tmp_path / "ranks"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "widthsearch.recipes.cli", "train", str(train_tiny),
        "--epochs", "1", "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "ranks" / "rank0.pt")
    rank1 = torch.load(tmp_path / "ranks" / "rank1.pt")
    payload = load_checkpoint(tmp_path / "run" / "supernet.pt", kind="widthsearch.supernet")
    assert rank0.keys() == rank1.keys() == payload["state_dict"].keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], payload["state_dict"][key]), key
    state = payload["train_state"]
    # each rank trained its half of the 960 images: 15 batches of 32
    assert state["world_size"] == 2 and state["step"] == 15
