"""The training loop every stage shares (supernet/loop.py), on a stage of its own: a linear
classifier. Job options checked before any work, exact resume, the divergence message, the
log line, and the checkpoint and JSONL log written after every epoch."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from widthsearch.supernet.loop import (
    EpochTrainer,
    JobOptions,
    TrainingDivergedError,
    epoch_line,
    run_epochs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(EpochTrainer):
    """The smallest stage: cross-entropy of a linear layer; a NaN loss on demand."""

    label = "linear"
    hint = "try less"

    def __init__(self, *, epochs: int = 3, poison_epoch: int = 0) -> None:
        torch.manual_seed(0)
        data = TensorDataset(torch.randn(40, 5), torch.randint(0, 3, (40,)))
        settings = {"seed": 7, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 8}
        super().__init__(nn.Linear(5, 3), data, epochs=epochs, **settings)
        self.poison_epoch = poison_epoch

    def _begin_epoch(self) -> None:
        self.total = 0.0

    def _train_step(self, x, y):
        loss = F.cross_entropy(self.module(x), y)
        if self.epoch + 1 == self.poison_epoch:
            loss = loss * math.nan
        loss.backward()
        return ("label",), loss.detach().reshape(1), None

    def _account(self, names, values, losses, info, y) -> None:
        self.total += values[0]

    def _epoch_entry(self):
        return {"loss": self.total / self.steps_per_epoch}


def _run(trainer: Linear, folder, *, resumed=False, stop_after=None, lines=None) -> int:
    path = folder / "state.pt"

    def save() -> None:
        torch.save({"weights": trainer.module.state_dict(), **trainer.state_dict()}, path)

    return run_epochs(
        trainer,
        checkpoint=path,
        log_path=folder / "log.jsonl",
        save=save,
        resumed=resumed,
        stop_after=stop_after,
        log=None if lines is None else lines.append,
    )


def test_job_options_are_checked_when_given():
    assert JobOptions.of({"resume": True}, where="job").resume
    with pytest.raises(TypeError, match=r"job\(\) got unexpected keyword argument\(s\) resum;"):
        JobOptions.of({"resum": True}, where="job")
    with pytest.raises(ValueError, match="stop_after must be >= 0, got -1"):
        JobOptions(stop_after=-1)


def test_a_resumed_run_ends_with_the_weights_and_history_of_an_uninterrupted_one(tmp_path):
    straight, lines = Linear(), []
    (tmp_path / "a").mkdir()
    assert _run(straight, tmp_path / "a", lines=lines) == 3
    assert [entry["epoch"] for entry in straight.history] == [1, 2, 3]
    assert lines[0].startswith("linear epoch 1/3  loss ") and lines[0].endswith("s")
    logged = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["loss"] for line in logged] == [e["loss"] for e in straight.history]

    (tmp_path / "b").mkdir()
    first = Linear()
    assert _run(first, tmp_path / "b", stop_after=1) == 1
    state = torch.load(tmp_path / "b" / "state.pt")
    resumed = Linear()
    resumed.module.load_state_dict(state.pop("weights"))
    resumed.resume(state, first.history, path=tmp_path / "b" / "state.pt")
    assert (resumed.epoch, resumed.step) == (1, 5)
    assert _run(resumed, tmp_path / "b", resumed=True) == 2
    for key, value in straight.module.state_dict().items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key
    assert [e["loss"] for e in resumed.history] == [e["loss"] for e in straight.history]


def test_a_state_that_does_not_fit_is_one_line(tmp_path):
    from widthsearch.supernet.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"x.pt: cannot resume from it \("):
        Linear().resume({"epoch": 1}, [], path=tmp_path / "x.pt")


def test_divergence_names_the_loss_and_the_checkpoint_kept(tmp_path):
    with pytest.raises(TrainingDivergedError) as first:
        _run(Linear(poison_epoch=1), tmp_path)
    message = str(first.value)
    assert "label loss is nan at epoch 1, step 0 (try less)" in message
    assert "kept" not in message and not (tmp_path / "state.pt").exists()
    with pytest.raises(TrainingDivergedError) as later:
        _run(Linear(poison_epoch=2), tmp_path)
    assert str(later.value).endswith(
        f"kept the last good checkpoint {tmp_path / 'state.pt'} (epoch 1)"
    )
    assert torch.load(tmp_path / "state.pt")["epoch"] == 1


def test_epoch_line_shows_the_figures_an_entry_has():
    entry = {"epoch": 2, "loss": 0.5, "top1": None, "seconds": 1.25}
    fields = (("loss", "loss"), ("top1", "top-1"), ("other", "other"))
    assert epoch_line(entry, fields, epochs=5) == "epoch 2/5  loss 0.5000  1.2s"
    entry["top1"] = 0.75
    line = epoch_line(entry, fields, epochs=5, label="finetune")
    assert line == "finetune epoch 2/5  loss 0.5000  top-1 0.7500  1.2s"
