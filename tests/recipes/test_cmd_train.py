"""`widthsearch train`: the real console script end to end, overrides, resume errors, and a
run killed mid-epoch leaving a loadable checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from widthsearch.recipes.cli import main
from widthsearch.supernet import Supernet
from widthsearch.supernet.checkpoint import atomic_save, load_checkpoint, load_supernet
from widthsearch.supernet.models import create_model

SCRIPT = Path(sys.executable).parent / "widthsearch"
# one thread per process: steadier timings when the CPU is shared
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_console_script_trains_a_tiny_supernet_end_to_end(train_tiny, tmp_path):
    out = tmp_path / "tmp"
    proc = subprocess.run(
        [str(SCRIPT), "train", str(train_tiny), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in lines] == [1, 2, 3]
    for entry in lines:
        assert entry["trainer"] == "bcnet"
        for key in ("loss", "loss_left", "loss_right", "loss_full", "top1_max", "top1_min"):
            assert key in entry, key
        assert entry["seconds"] > 0 and 0.0 <= entry["top1_min"] <= 1.0
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert lines[-1]["top1_max"] > 0.2  # 10 classes: chance is 0.1 (256 images: sd 0.02)
    sn, payload = load_supernet(out / "supernet.pt")
    assert sn.meta["model"] == "resnet20" and sn.meta["input_size"] == 16
    plain = torch.load(out / "supernet.pt", weights_only=True)  # optimiser and RNG state too
    assert set(plain["train_state"]) >= {"optimizer", "scheduler", "rng"}
    assert (sn.meta["num_classes"], sn.meta["in_chans"]) == (10, 1)
    assert payload["recipe"]["name"] == "train-tiny" and payload["data"]["name"] == "synthetic"
    assert payload["history"] == lines
    records = payload["loss_records"]
    assert set(records) == {g.name for g in sn.space.searchable}
    for group in sn.space.searchable:
        assert set(records[group.name]) <= set(group.choices)
    assert "epoch 3" in proc.stdout and "supernet.pt" in proc.stdout


def test_overrides_reach_the_checkpoint(train_tiny, tmp_path):
    out = tmp_path / "o"
    argv = ["train", str(train_tiny), "--out", str(out), "--epochs", "1", "--trainer", "sandwich"]
    assert main([*argv, "--seed", "4", "--model", "resnet32"]) == 0
    payload = load_checkpoint(out / "supernet.pt", kind="widthsearch.supernet")
    assert payload["recipe"]["train"]["trainer"] == "sandwich"
    assert payload["recipe"]["train"]["seed"] == 4 and payload["recipe"]["train"]["epochs"] == 1
    assert payload["meta"]["model"] == "resnet32"
    # the overrides were trained with, not only recorded: one sandwich epoch of a resnet32
    assert payload["train_state"]["epoch"] == 1
    (entry,) = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert entry["trainer"] == "sandwich" and payload["history"] == [entry]
    sn, _ = load_supernet(out / "supernet.pt")
    assert [len(getattr(sn.model, f"layer{s}")) for s in (1, 2, 3)] == [5, 5, 5]
    untrained = Supernet.from_model(
        create_model("resnet32", num_classes=10, in_chans=1), torch.zeros(1, 1, 16, 16)
    )
    assert sn.params() == untrained.params()


def test_default_out_dir_is_runs_recipe_name(train_tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(train_tiny), "--epochs", "0"]) == 0
    assert (tmp_path / "runs" / "train-tiny" / "supernet.pt").is_file()


def test_resume_errors_are_one_clear_line(train_tiny, tmp_path, capsys):
    base = ["train", str(train_tiny), "--epochs", "0", "--resume"]
    out = tmp_path / "none"
    assert main([*base, "--out", str(out)]) == 2
    (line,) = _err_lines(capsys)
    assert "nothing to resume" in line and "supernet.pt" in line

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "supernet.pt").write_bytes(b"\x80\x04 not a checkpoint at all")
    assert main([*base, "--out", str(corrupt)]) == 2
    (line,) = _err_lines(capsys)
    assert line.startswith("widthsearch train: error:") and "not a readable checkpoint" in line

    foreign = tmp_path / "foreign"
    atomic_save({"format": "widthsearch.subnet", "version": 1}, foreign / "supernet.pt")
    assert main([*base, "--out", str(foreign)]) == 2
    (line,) = _err_lines(capsys)
    assert "expected 'widthsearch.supernet'" in line

    plain = tmp_path / "plain"
    atomic_save({"weights": torch.zeros(3)}, plain / "supernet.pt")
    assert main([*base, "--out", str(plain)]) == 2
    (line,) = _err_lines(capsys)
    assert "not a widthsearch checkpoint" in line


def test_resume_refuses_another_model_and_finished_runs_do_nothing(train_tiny, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", str(train_tiny), "--epochs", "0", "--out", out]) == 0
    capsys.readouterr()
    argv = ["train", str(train_tiny), "--epochs", "0", "--out", out, "--resume"]
    assert main([*argv, "--model", "resnet32"]) == 2
    (line,) = _err_lines(capsys)
    assert "model='resnet20'" in line and "resnet32" in line
    assert main([*argv, "--trainer", "sandwich"]) == 2
    (line,) = _err_lines(capsys)
    assert "'bcnet' trainer" in line
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_killed_mid_epoch_leaves_a_loadable_checkpoint_and_resumes(
    train_tiny, tmp_path, killed_after
):
    out = tmp_path / "k"
    # slow enough epochs that the kill lands mid-epoch: full 640 images, 6 epochs
    proc = subprocess.Popen(
        [str(SCRIPT), "train", str(train_tiny), "--out", str(out), "--epochs", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
        env=ENV,
    )
    with killed_after(proc):
        deadline = time.monotonic() + 120
        line = ""
        while "epoch 1" not in line:  # printed once the epoch-1 checkpoint is written
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "training ended early"
            assert time.monotonic() < deadline
        time.sleep(0.3)  # inside epoch 2
    sn, payload = load_supernet(out / "supernet.pt")
    assert sn.meta["model"] == "resnet20"
    epoch = payload["train_state"]["epoch"]
    assert 1 <= epoch < 6
    lines = (out / "train.jsonl").read_text().splitlines()
    assert epoch - 1 <= len(lines) <= epoch  # the log follows the checkpoint
    # and the run continues from there
    assert (
        main(["train", str(train_tiny), "--out", str(out), "--epochs", str(epoch + 1), "--resume"])
        == 0
    )
    payload = load_checkpoint(out / "supernet.pt", kind="widthsearch.supernet")
    assert payload["train_state"]["epoch"] == epoch + 1
    assert len((out / "train.jsonl").read_text().splitlines()) == epoch + 1
    assert not list(out.glob(".*.tmp"))  # temp files of the killed write are cleaned up


@pytest.mark.parametrize("command", ["train", "run"])
def test_missing_dataset_and_unknown_model_are_one_line_and_exit_2(
    train_tiny, command, run_tiny, tmp_path, capsys, monkeypatch
):
    recipe = train_tiny if command == "train" else run_tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("WIDTHSEARCH_DATA", str(empty))  # the only place looked in: no download
    out = tmp_path / "out"
    assert main([command, str(recipe), "--out", str(out), "--data", "fashion-mnist"]) == 2
    (line,) = _err_lines(capsys)
    assert line.startswith(f"widthsearch {command}: error:") and str(empty) in line, line
    assert not (out / "supernet.pt").exists()
    assert main([command, str(recipe), "--out", str(out), "--model", "resnet21"]) == 2
    (line,) = _err_lines(capsys)
    assert line.startswith(f"widthsearch {command}: error:") and "resnet21" in line, line
    assert not (out / "supernet.pt").exists()
