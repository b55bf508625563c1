"""`widthsearch finetune` on the runtime: data-parallel under a 2-process gloo torchrun
(bit-identical replicas, rank 0 writes), resumed at another world size either way, bf16 on
the CPU, and output files that hold only CPU tensors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from widthsearch.evaluate import finetune_paths, read_subnet
from widthsearch.recipes.cli import main
from widthsearch.supernet.checkpoint import load_checkpoint
from widthsearch.supernet.runtime import RANK_STATE_ENV

# 256 training images in batches of 32: 8 steps per epoch alone, 4 per rank with two
OPTS = ["--train-limit", "256", "--batch-size", "32", "--lr", "0.02", "--device", "cpu"]
CUDA = pytest.param(
    "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
)


def _torchrun(args: list[str], ranks: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, RANK_STATE_ENV: str(ranks), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "widthsearch.recipes.cli", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _rank_states(folder: Path) -> tuple[dict, dict]:
    rank0 = torch.load(folder / "rank0.pt", weights_only=True)
    rank1 = torch.load(folder / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    return rank0, rank1


def _assert_same(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for key in state:
        assert torch.equal(state[key], reference[key]), key


def _finite(state: dict) -> None:
    for key, value in state.items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key


def test_torchrun_finetune_stopped_early_then_finished_by_one_process(subnet_path, tmp_path):
    out = tmp_path / "ft.pt"
    _, ckpt, log = finetune_paths(out)
    argv = ["finetune", str(subnet_path), "--out", str(out), "--epochs", "2", *OPTS]
    proc = _torchrun([*argv, "--stop-after", "1"], tmp_path / "ranks")
    assert "stopped after epoch 1" in proc.stdout
    assert not out.exists() and ckpt.is_file()
    rank0, _ = _rank_states(tmp_path / "ranks")
    state = load_checkpoint(ckpt, kind="widthsearch.finetune-state")
    _assert_same(state["state_dict"], rank0)  # rank 0 wrote what every rank holds
    assert state["epoch"] == 1 and state["steps_per_epoch"] == 4
    (first,) = state["history"]
    assert first["images"] == 256  # both ranks' shards counted

    # one process continues the 2-process state and finishes
    assert main([*argv, "--resume"]) == 0
    assert out.is_file() and not ckpt.exists()
    result = read_subnet(out)
    history = result["finetune"]["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    assert history[0] == first  # epoch 1 kept as the 2-process run logged it
    assert history[1]["images"] == 256
    assert all(math.isfinite(e["loss"]) and math.isfinite(e["ce"]) for e in history)
    # the schedule is placed by epochs, not steps: it ends at 0 at another world size too
    assert history[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert len(log.read_text().splitlines()) == 2
    _finite(result["state_dict"])
    changed = [k for k, v in result["state_dict"].items() if not torch.equal(v, rank0[k])]
    assert changed  # epoch 2 did train


def test_one_process_state_finished_by_torchrun_writes_the_replicas_weights(subnet_path, tmp_path):
    out = tmp_path / "ft.pt"
    _, ckpt, _ = finetune_paths(out)
    argv = ["finetune", str(subnet_path), "--out", str(out), "--epochs", "2", *OPTS]
    assert main([*argv, "--stop-after", "1"]) == 0
    assert load_checkpoint(ckpt, kind="widthsearch.finetune-state")["steps_per_epoch"] == 8
    _torchrun([*argv, "--resume"], tmp_path / "ranks")
    rank0, _ = _rank_states(tmp_path / "ranks")
    assert not ckpt.exists()
    payload = torch.load(out, weights_only=True)
    _assert_same(payload["state_dict"], rank0)  # the written file is every rank's weights
    _finite(payload["state_dict"])
    history = payload["finetune"]["history"]
    assert [e["epoch"] for e in history] == [1, 2]
    assert history[1]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_bf16_finetune_on_the_cpu_gives_finite_losses(subnet_path, tmp_path, capsys):
    argv = ["finetune", str(subnet_path), "--epochs", "1", *OPTS]
    assert main([*argv, "--amp", "bf16", "--out", str(tmp_path / "bf16.pt")]) == 0
    assert main([*argv, "--amp", "off", "--out", str(tmp_path / "fp32.pt")]) == 0
    capsys.readouterr()
    bf16, fp32 = read_subnet(tmp_path / "bf16.pt"), read_subnet(tmp_path / "fp32.pt")
    (entry,) = bf16["finetune"]["history"]
    (plain,) = fp32["finetune"]["history"]
    assert math.isfinite(entry["loss"]) and 0 < entry["loss"] < 10
    assert math.isfinite(entry["ce"]) and 0 <= entry["train_top1"] <= 1
    assert entry["loss"] != plain["loss"]  # the forward passes really ran in bf16
    for key, value in bf16["state_dict"].items():
        if value.is_floating_point():  # weights stay fp32
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
    # the file's module (rebuilt in fp32) runs
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.isfinite(bf16["module"](x)).all()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_finetuned_subnet_file_holds_only_cpu_tensors(subnet_path, tmp_path, device, channels_last):
    out = tmp_path / "ft.pt"
    argv = ["finetune", str(subnet_path), "--out", str(out), "--epochs", "1", *OPTS]
    argv[argv.index("--device") + 1] = device
    layout = "--channels-last" if channels_last else "--no-channels-last"
    assert main([*argv, layout]) == 0
    payload = torch.load(out, weights_only=True)
    tensors = dict(payload["state_dict"])
    assert len(tensors) > 20
    assert {k: str(v.device) for k, v in tensors.items() if v.device.type != "cpu"} == {}
    # stored contiguous: a plain CPU module takes them as they are
    assert all(v.is_contiguous() for v in tensors.values())
    assert read_subnet(out)["module"] is not None
