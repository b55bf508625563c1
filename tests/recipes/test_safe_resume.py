"""`train --resume` from a checkpoint of an older widthsearch (numpy RNG state pickled):
refused without --trust-pickle, resumed with it (one warning line), and `widthsearch
convert` makes it a weights-only file that resumes to the very same weights."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch
from widthsearch.recipes.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_legacy_training_checkpoint_resumes_with_trust_pickle_or_after_convert(
    train_tiny, tmp_path, capsys
):
    base = ["train", str(train_tiny), "--epochs", "2"]
    first = tmp_path / "first"
    assert main([*base, "--out", str(first), "--stop-after", "1"]) == 0
    payload = torch.load(first / "supernet.pt", weights_only=True)
    rng = payload["train_state"]["rng"]
    np.random.seed(7)
    random.seed(7)
    rng["numpy"], rng["python"] = np.random.get_state(), random.getstate()  # as before
    payload["version"] = 1
    legacy_dir, converted_dir = tmp_path / "legacy", tmp_path / "converted"
    legacy_dir.mkdir()
    legacy = legacy_dir / "supernet.pt"
    torch.save(payload, legacy)
    shutil.copy(first / "train.jsonl", legacy_dir / "train.jsonl")
    shutil.copytree(legacy_dir, converted_dir)
    capsys.readouterr()

    assert main([*base, "--out", str(legacy_dir), "--resume"]) == 2
    (line,) = _err_lines(capsys)
    assert line.startswith("widthsearch train: error:") and str(legacy) in line
    assert "--trust-pickle" in line and "widthsearch convert" in line

    assert main([*base, "--out", str(legacy_dir), "--resume", "--trust-pickle"]) == 0
    warnings = [line for line in _err_lines(capsys) if "warning" in line]
    assert len(warnings) == 1 and str(legacy) in warnings[0]
    resumed = torch.load(legacy, weights_only=True)  # rewritten in the safe format
    assert resumed["train_state"]["epoch"] == 2

    target = converted_dir / "supernet.pt"
    assert main(["convert", str(target), "--out", str(target), "--trust-pickle"]) == 0
    converted = torch.load(target, weights_only=True)
    assert converted["version"] == 2 and converted["train_state"]["epoch"] == 1
    capsys.readouterr()
    assert main([*base, "--out", str(converted_dir), "--resume"]) == 0
    assert not [line for line in _err_lines(capsys) if "warning" in line]
    again = torch.load(target, weights_only=True)
    for key, value in resumed["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key
