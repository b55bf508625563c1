"""Warm start: `widthsearch pretrain`, `train --init` from every kind of file, the
function-preserving channel order, distillation from the trained network, and
`widthsearch run` with ``init = "pretrain"``."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from widthsearch.evaluate.finetune import load_teacher
from widthsearch.recipes.cli import main
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet import CheckpointError, Supernet, create_model, trained_network
from widthsearch.supernet.checkpoint import load_checkpoint, load_supernet
from widthsearch.supernet.train import Teacher, bcnet_step, distill_loss
from widthsearch.supernet.warmstart import arrange, channel_importance, reorder_channels

RUN_WARM = Path(__file__).with_name("run_tiny_warm.toml")


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def trained(train_tiny, tmp_path_factory) -> Path:
    """A `widthsearch pretrain` output folder (2 epochs on the tiny synthetic recipe)."""
    out = tmp_path_factory.mktemp("pretrain")
    assert main(["pretrain", str(train_tiny), "--epochs", "2", "--out", str(out)]) == 0
    return out


def _model(state: dict) -> torch.nn.Module:
    model = create_model("resnet20", num_classes=10, in_chans=1)
    model.load_state_dict(state)
    return model.eval()


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---- channel order -------------------------------------------------------------------------


def _randomised(name: str, in_chans: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=in_chans)
    for m in model.modules():  # distinct BN scales and stats, so importance has an order
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 2.0)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.data.normal_(0, 0.5)
            m.running_var.data.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("order", ["ends", "front", "none"])
@pytest.mark.parametrize(("name", "in_chans"), [("resnet20", 1), ("tv:mobilenet_v2", 3)])
def test_channel_order_preserves_the_network_function(name, in_chans, order):
    model = _randomised(name, in_chans)
    reference = copy.deepcopy(model)
    x = torch.randn(4, in_chans, 32, 32)
    sn = Supernet.from_model(model, torch.zeros(1, in_chans, 32, 32), bins=8).eval()
    perms = reorder_channels(sn, order)
    with torch.no_grad():
        expected, got = reference(x), sn(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), (got - expected).abs().max()
    moved = [not np.array_equal(p, np.arange(len(p))) for p in perms.values()]
    assert any(moved) == (order != "none")


def test_ends_puts_the_most_important_channels_at_both_ends():
    importance = np.array([0.1, 5.0, 0.3, 4.0, 0.2, 3.0, 0.5, 2.0])
    front = arrange(importance, "front")
    ends = arrange(importance, "ends")
    assert front.tolist() == [1, 3, 5, 7, 6, 2, 4, 0]
    # ranks 1st, 3rd, 5th, ... from the left; 2nd, 4th, ... from the right
    assert ends.tolist() == [1, 5, 6, 4, 0, 2, 7, 3]
    # both BCNet sides of half the width hold the same total importance share
    left, right = importance[ends[:4]].sum(), importance[ends[4:]].sum()
    assert abs(left - right) / importance.sum() < 0.2
    assert importance[front[:4]].sum() > 3 * importance[front[4:]].sum()
    # grouped convs: whole runs of `block` channels move together
    blocks = arrange(np.array([1, 1, 9, 9, 5, 5.0]), "front", block=2)
    assert blocks.tolist() == [2, 3, 4, 5, 0, 1]


def test_importance_reads_bn_gammas_after_reordering_front():
    sn = Supernet.from_model(_randomised("resnet20", 1), torch.zeros(1, 1, 16, 16), bins=8).eval()
    reorder_channels(sn, "front")
    for name, values in channel_importance(sn).items():
        assert np.all(np.diff(values) <= 1e-12), name  # sorted, most important first


# ---- pretrain and --init ---------------------------------------------------------------------


def test_pretrain_writes_a_weights_only_full_network(trained):
    payload = torch.load(trained / "full.pt", weights_only=True)
    assert payload["format"] == "widthsearch.full"
    assert payload["train_state"]["epoch"] == 2 and payload["train_state"]["trainer"] == "plain"
    history = payload["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["top1_max"] > 0.2
    assert (trained / "pretrain.jsonl").read_text().count("\n") == 2


def _init_files(trained: Path, tmp: Path) -> dict[str, Path]:
    state = torch.load(trained / "full.pt", weights_only=True)["state_dict"]
    files = {"full.pt": trained / "full.pt"}
    files["state_dict"] = tmp / "weights.pth"
    torch.save({"state_dict": state}, files["state_dict"])
    from safetensors.torch import save_file

    files["safetensors"] = tmp / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, files["safetensors"])
    files["module"] = tmp / "module.pt"
    torch.save(_model(state), files["module"])
    return files


@pytest.mark.parametrize("kind", ["full.pt", "state_dict", "safetensors", "module"])
def test_init_from_each_file_kind_reproduces_the_trained_network(
    train_tiny, trained, tmp_path, kind, capsys
):
    files = _init_files(trained, tmp_path)
    out = tmp_path / "sn"
    args = [
        "train",
        str(train_tiny),
        "--init",
        str(files[kind]),
        "--epochs",
        "0",
        "--out",
        str(out),
    ]
    if kind == "module":
        assert main(args) == 2  # a pickle is refused unless the user trusts it
        err = _err_lines(capsys)
        assert len(err) == 1 and "--trust-pickle" in err[0] and not out.exists()
        args.append("--trust-pickle")
    assert main(args) == 0
    if kind == "module":
        assert "warning" in capsys.readouterr().err
    trained_net = _model(torch.load(trained / "full.pt", weights_only=True)["state_dict"])
    sn, payload = load_supernet(out / "supernet.pt")
    expected = {"from": str(files[kind]), "channel_order": "ends", "importance": "gamma"}
    assert payload["init"] == expected
    x = torch.randn(8, 1, 16, 16)
    with torch.no_grad():
        expected, got = trained_net(x), sn(x)
    # before its first step the warm supernet's full width is the trained network
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    # ... with its channels reordered (both ends hold the important ones)
    conv = dict(sn.model.named_modules())["conv1"].weight
    assert not torch.equal(conv, trained_net.conv1.weight)


def _bad_files(trained: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    state = torch.load(trained / "full.pt", weights_only=True)["state_dict"]
    missing, extra, shape = dict(state), dict(state), dict(state)
    missing.pop("fc.bias")
    extra["head.weight"] = torch.zeros(3)
    shape["fc.weight"] = torch.zeros(7, 64)
    out = {}
    for name, doc, expect in (
        ("missing", missing, "missing key 'fc.bias'"),
        ("extra", extra, "unexpected key 'head.weight'"),
        ("shape", shape, "'fc.weight' has shape (7, 64)"),
        ("no-tensors", {"epoch": 3}, "holds no state_dict"),
    ):
        path = tmp / f"{name}.pt"
        torch.save(doc, path)
        out[name] = (path, expect)
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    out["junk"] = (junk, "cannot be read as weights only")
    return out


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "no-tensors", "junk"])
def test_bad_init_file_is_one_line_exit_2_and_nothing_written(
    train_tiny, trained, tmp_path, case, capsys
):
    path, expect = _bad_files(trained, tmp_path)[case]
    out = tmp_path / "sn"
    assert main(["train", str(train_tiny), "--init", str(path), "--out", str(out)]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and expect in err[0], err
    assert not (out / "supernet.pt").exists()


def test_init_pretrain_without_full_pt_says_what_to_run(train_tiny, tmp_path, capsys):
    assert main(["train", str(train_tiny), "--init", "pretrain", "--out", str(tmp_path)]) == 2
    err = _err_lines(capsys)
    assert len(err) == 1 and "widthsearch pretrain" in err[0]


def test_pickled_init_never_runs_without_trust(train_tiny, tmp_path, capsys):
    sentinel = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (sentinel,))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}))
    assert main(["train", str(train_tiny), "--init", str(evil), "--out", str(tmp_path / "o")]) == 2
    assert not sentinel.exists()
    assert len(_err_lines(capsys)) == 1


# ---- distillation from the trained network ---------------------------------------------------


def test_bcnet_step_distils_every_subnet_from_the_teacher():
    torch.manual_seed(0)
    student = create_model("resnet20", num_classes=10, in_chans=1)
    sn = Supernet.from_model(student, torch.zeros(1, 1, 16, 16), bins=4)
    teacher = Teacher(create_model("resnet20", num_classes=10, in_chans=1), alpha=0.7)
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 10, (6,))
    cfg = sn.space.uniform(0.5)
    criterion = torch.nn.CrossEntropyLoss()
    sn.train()
    bcnet_step(sn, x, y, cfg, criterion=criterion, teacher=teacher)
    got = {n: p.grad.clone() for n, p in sn.named_parameters() if p.grad is not None}
    sn.zero_grad()
    t_logits = teacher.model(x).detach()
    total = 0.0
    for side in ("left", "right"):
        with sn.active(cfg, side):
            logits = sn(x)
        kd = distill_loss(logits, t_logits, temperature=4.0)
        total = total + 0.5 * (0.3 * F.cross_entropy(logits, y) + 0.7 * kd)
    total.backward()
    for name, p in sn.named_parameters():
        if p.grad is not None:
            assert torch.allclose(got[name], p.grad, atol=1e-6), name
    assert all(not p.requires_grad for p in teacher.model.parameters())


def test_trained_network_rebuilds_a_frozen_model_from_meta_and_weights():
    reference = _randomised("resnet20", 1)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    meta = {"model": "resnet20", "num_classes": 10, "in_chans": 1, "input_size": 16}
    model = trained_network(meta, state, where="the teacher")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    del state["fc.bias"]
    with pytest.raises(CheckpointError, match=r"^the teacher: does not fit the model: missing"):
        trained_network(meta, state, where="the teacher")


# ---- fine-tuning's teacher and the whole job -------------------------------------------------


def test_finetune_teacher_is_the_trained_network_of_a_warm_supernet(train_tiny, trained, tmp_path):
    out = tmp_path / "sn"
    init = str(trained / "full.pt")
    assert main(["train", str(train_tiny), "--init", init, "--epochs", "1", "--out", str(out)]) == 0
    meta = load_checkpoint(out / "supernet.pt", kind="widthsearch.supernet")["meta"]
    reference = _model(torch.load(trained / "full.pt", weights_only=True)["state_dict"])
    x = torch.randn(4, 1, 16, 16)
    for path in (trained / "full.pt", out / "supernet.pt"):
        model, recalibrate = load_teacher(path, meta)
        assert not recalibrate
        with torch.no_grad():
            assert torch.allclose(model(x), reference(x), atol=1e-6)


def test_recipe_rejects_bad_warm_start_settings(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nchannel_order = "middle"\n')
    with pytest.raises(ValueError, match="channel_order"):
        load_recipe(str(bad))


def test_run_with_init_pretrain_end_to_end_and_reuses_full_pt(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", str(RUN_WARM), "--out", str(out), "--no-latency"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "pretraining" in first and (out / "full.pt").is_file()
    _, payload = load_supernet(out / "supernet.pt")
    assert payload["init"]["from"] == str(out / "full.pt")
    assert "teacher_state_dict" in payload
    report = (out / "report.md").read_text()
    assert "bisection" in report
    stamp = (out / "full.pt").stat().st_mtime_ns
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "trained network: reusing" in second and "supernet: reusing" in second
    assert (out / "full.pt").stat().st_mtime_ns == stamp
