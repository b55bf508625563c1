"""The training loop every stage shares: pretraining, supernet training and fine-tuning.

Pieces, top to bottom:

* :class:`JobOptions`: how a training job runs (resume, device, precision, bars, log), the
  same keyword arguments for every training stage.
* :mod:`widthsearch.supernet.schedule`: each epoch's data order and seeding, and the
  warm-up + cosine learning rate (its names are re-exported here).
* :class:`EpochTrainer`: SGD, schedule and loss scaler of a run, and one epoch over the
  data (step, gradient averaging, divergence check, optimiser step, bar). A stage subclasses
  it with its step and what its epoch reports (the supernet trainer of
  :mod:`widthsearch.supernet.trainer`, the fine-tuner of :mod:`widthsearch.evaluate.finetune`).
* :func:`run_epochs`: epochs until done (or ``stop_after``), each followed by evaluation on
  rank 0, the atomic checkpoint, the JSONL log and one summary line.

Under ``torchrun`` gradients are averaged explicitly (see :mod:`widthsearch.supernet.runtime`
for why not DDP); rank 0 evaluates and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, write_jsonl_atomic
from .errors import CheckpointError, WidthsearchError
from .runtime import (
    Runtime,
    allreduce_grads,
    average_buffers,
    barrier,
    init_runtime,
    local_runtime,
    shutdown_runtime,
)
from .schedule import cosine_schedule, epoch_loader, epoch_seed, resume_schedule

__all__ = [
    "EpochTrainer",
    "JobOptions",
    "TrainingDivergedError",
    "check_finite",
    "cosine_schedule",
    "epoch_line",
    "epoch_loader",
    "epoch_seed",
    "resume_payload",
    "resume_schedule",
    "run_epochs",
]


class TrainingDivergedError(WidthsearchError):
    """A training loss became NaN or infinite; no optimiser step was taken with it."""


# ---- how a job runs ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """How a training job runs, whatever it trains: the keyword arguments every training
    stage (:func:`~widthsearch.supernet.train.train_supernet`,
    :func:`~widthsearch.supernet.train.pretrain_network`,
    :func:`~widthsearch.evaluate.finetune_subnet`) takes besides its own settings."""

    resume: bool = False  # continue from the job's checkpoint, exactly
    stop_after: int | None = None  # train at most this many epochs now (the schedule spans all)
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"
    amp: str = "off"  # mixed precision of the forward passes: "off", "bf16" or "fp16"
    channels_last: bool = False  # channels-last memory format for weights and batches
    data_parallel: bool = True  # join the torchrun job in the environment (False: alone)
    progress: bool | None = None  # tqdm bars on rank 0 (None: only on a terminal)
    log: Callable[[str], Any] | None = print  # called with one line per epoch (rank 0)
    trust_pickle: bool = False  # accept files only unpickling reads (older files)

    def __post_init__(self) -> None:
        if self.stop_after is not None and self.stop_after < 0:
            raise ValueError(f"stop_after must be >= 0, got {self.stop_after}")

    @classmethod
    def of(cls, options: Mapping[str, Any], *, where: str) -> JobOptions:
        """The options given to ``where`` as keyword arguments; a ``TypeError`` names any
        that is not one (a typo fails before any work, as in a plain signature)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}; "
                f"the job options are {', '.join(sorted(known))}"
            )
        return cls(**options)

    @contextlib.contextmanager
    def runtime(self) -> Iterator[Runtime]:
        """This process's runtime for the job (in the torchrun job unless ``data_parallel``
        is off), left again on exit."""
        where = {"amp": self.amp, "channels_last": self.channels_last}
        if self.data_parallel:
            runtime = init_runtime(self.device, **where)
        else:
            runtime = local_runtime(self.device, **where)
        try:
            yield runtime
        finally:
            shutdown_runtime(runtime)


def resume_payload(path: Path, *, kind: str, trust_pickle: bool) -> dict[str, Any]:
    """The checkpoint to resume from (before any expensive work), or a one-line error."""
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    return load_checkpoint(path, kind=kind, trust_pickle=trust_pickle)


# ---- divergence ----------------------------------------------------------------------------


def check_finite(values: Sequence[float], names: Sequence[str], *, where: str, hint: str) -> None:
    """Stop before an optimiser step with a NaN or infinite loss (``where``: epoch and step
    for the message; ``hint``: what to change)."""
    for name, value in zip(names, values, strict=True):
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"training diverged: {name} loss is {value} at {where} ({hint})"
            )


# ---- one epoch -----------------------------------------------------------------------------


class EpochTrainer:
    """SGD (Nesterov when there is momentum), cosine schedule, loss scaler and data order of
    one training run; :meth:`train_epoch` trains one epoch.

    A stage subclasses it and gives :meth:`_train_step` (the backward passes of one batch)
    and :meth:`_epoch_entry` (what the epoch reports); :meth:`_begin_epoch`,
    :meth:`_account`, :meth:`_postfix` and :meth:`evaluate` keep running figures and score.

    Args:
        module: The network trained (on its device); its trainable parameters are optimised.
        train_set: Training split.
        epochs: Epochs of the whole run (the schedule spans them).
        seed: Seeds each epoch's data order, augmentation and global RNG.
        lr, momentum, weight_decay: SGD settings.
        nesterov: Nesterov momentum (when ``momentum > 0``).
        warmup_epochs: Linear warm-up before the cosine decay (may be a fraction).
        batch_size: Per-process batch size.
        workers: DataLoader workers.
        runtime: Device, precision and place in a torchrun job (default: one CPU process).
        transform: Optional function applied to every input batch on the device (resizing).
        progress: tqdm bar on rank 0 (``None``: only on a terminal).
        short_split: A split smaller than a batch trains as one short batch per epoch
            (else it is an error).
    """

    label: str = ""  # names the run in bars and log lines ("<label> epoch 2/5")
    hint: ClassVar[str] = "try a lower learning rate"  # what to change when a loss diverges
    summary_fields: ClassVar[tuple[tuple[str, str], ...]] = (("loss", "loss"),)  # (key, label)

    def __init__(
        self,
        module: nn.Module,
        train_set: Dataset,
        *,
        epochs: int,
        seed: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        nesterov: bool = True,
        warmup_epochs: float = 0.0,
        batch_size: int,
        workers: int = 0,
        runtime: Runtime | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        progress: bool | None = None,
        short_split: bool = False,
    ) -> None:
        self.module = module
        self.train_set = train_set
        self.epochs = epochs
        self.seed = seed
        self.batch_size = batch_size
        self.workers = workers
        self.runtime = runtime or Runtime()
        self.transform = transform
        self.progress = progress
        per_rank = len(train_set) // self.runtime.world_size
        self.drop_last = not short_split or per_rank > batch_size
        self.steps_per_epoch = per_rank // batch_size if self.drop_last else 1
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split ({len(train_set)} images over {self.runtime.world_size} "
                f"process(es)) is smaller than one batch of {batch_size}"
            )
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            self.params,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov and momentum > 0,
        )
        self.scheduler = cosine_schedule(
            self.optimizer,
            total_steps=max(epochs, 1) * self.steps_per_epoch,
            warmup_steps=round(warmup_epochs * self.steps_per_epoch),
        )
        self.scaler = self.runtime.grad_scaler()  # passes values through unless fp16
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken
        self.history: list[dict[str, Any]] = []  # one entry per epoch (kept by run_epochs)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters, optimiser, schedule and loss scaler (the weights are the caller's)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        per_epoch = int(state.get("steps_per_epoch", self.steps_per_epoch))
        self.step = int(state.get("step", self.epoch * per_epoch))  # older files: no "step"
        self.optimizer.load_state_dict(state["optimizer"])
        resume_schedule(
            self.scheduler, state, epochs_done=self.epoch, steps_per_epoch=self.steps_per_epoch
        )
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])

    def resume(
        self, state: Mapping[str, Any], history: Sequence[Mapping[str, Any]], *, path: Path
    ) -> None:
        """Continue where the run of checkpoint ``path`` stopped: its training ``state`` (a
        one-line :class:`CheckpointError` when it does not fit this run) and ``history``."""
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot resume from it ({exc})") from None
        self.history = [dict(entry) for entry in history]

    # -- what a stage gives --------------------------------------------------------------
    def _train_step(self, x: Tensor, y: Tensor) -> tuple[Sequence[str], Tensor, Any]:
        """Backward passes of one batch (gradients zeroed before, averaged after).

        Returns:
            Loss names, the detached losses (one value per name, averaged over ranks by
            the caller) and anything :meth:`_account` needs.
        """
        raise NotImplementedError

    def _begin_epoch(self) -> None:
        """Reset the running figures of an epoch."""

    def _account(
        self, names: Sequence[str], values: list[float], losses: Tensor, info: Any, y: Tensor
    ) -> None:
        """Add one step's averaged losses (``values`` as floats) to the running figures."""

    def _postfix(self) -> dict[str, str]:
        """Running figures for the bar (computed only while a bar is shown)."""
        return {}

    def _epoch_entry(self) -> dict[str, Any]:
        """The log entry of the epoch just trained (``epoch`` and ``seconds`` are added)."""
        return {}

    def _where(self, epoch: int) -> str:
        """Where a diverged loss happened, for the message."""
        return f"epoch {epoch}, step {self.step}"

    def evaluate(self) -> dict[str, Any]:
        """Held-out figures after an epoch (rank 0 only); none by default."""
        return {}

    def summary(self, entry: Mapping[str, Any]) -> str:
        """The epoch's log line: see :func:`epoch_line`."""
        return epoch_line(entry, self.summary_fields, epochs=self.epochs, label=self.label)

    # -- one epoch -----------------------------------------------------------------------
    def _prep(self, x: Tensor) -> Tensor:
        x = self.runtime.batch(x)
        return self.transform(x) if self.transform is not None else x

    def train_epoch(self) -> dict[str, Any]:
        """Train epoch ``self.epoch + 1``; returns its log entry (with ``seconds``)."""
        epoch = self.epoch + 1
        torch.manual_seed(epoch_seed(self.seed, epoch, self.runtime.rank))
        loader = epoch_loader(
            self.train_set,
            epoch=epoch,
            seed=self.seed,
            batch_size=self.batch_size,
            workers=self.workers,
            runtime=self.runtime,
            drop_last=self.drop_last,
        )
        self.module.train()
        self._begin_epoch()
        start = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"{self.label} epoch {epoch}/{self.epochs}".strip(),
            unit="batch",
            leave=False,
            dynamic_ncols=True,
            disable=True if not self.runtime.is_main else _quiet(self.progress),
        )
        for x, y in bar:
            x, y = self._prep(x), y.to(self.runtime.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            names, losses, info = self._train_step(x, y)
            losses = allreduce_grads(self.params, losses, self.runtime)
            values = losses.tolist()
            check_finite(values, names, where=self._where(epoch), hint=self.hint)
            self.scaler.step(self.optimizer)  # skipped on inf/NaN fp16 gradients
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            self._account(names, values, losses, info, y)
            if not bar.disable:
                bar.set_postfix(self._postfix(), refresh=False)
        bar.close()
        average_buffers(self.module, self.runtime)
        self.epoch = epoch
        entry: dict[str, Any] = {"epoch": epoch, **self._epoch_entry()}
        entry["seconds"] = time.perf_counter() - start
        return entry


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: ``None`` hides the bar when stderr is not a terminal."""
    return None if progress is None else not progress


def epoch_line(
    entry: Mapping[str, Any], fields: Sequence[tuple[str, str]], *, epochs: int, label: str = ""
) -> str:
    """``"<label> epoch 2/5  loss 0.4321  top1_max 0.8123  12.3s"``: the figures of
    ``fields`` (``(entry key, label)`` pairs) the entry has."""
    parts = [f"{label} epoch {entry['epoch']}/{epochs}".strip()]
    parts += [f"{name} {entry[key]:.4f}" for key, name in fields if entry.get(key) is not None]
    parts.append(f"{entry['seconds']:.1f}s")
    return "  ".join(parts)


# ---- the epochs of a job -------------------------------------------------------------------


def run_epochs(
    trainer: EpochTrainer,
    *,
    checkpoint: Path,
    log_path: Path,
    save: Callable[[], None],
    resumed: bool,
    save_first: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], Any] | None = None,
) -> int:
    """Train ``trainer`` to its last epoch (or ``stop_after`` more), writing after each one.

    After every epoch rank 0 adds :meth:`EpochTrainer.evaluate`'s figures to the entry,
    appends it to ``trainer.history``, calls ``save()`` (the stage's atomic checkpoint at
    ``checkpoint``, holding the history), rewrites the JSONL log ``log_path`` from the
    history and logs one line. A run killed at any moment leaves a checkpoint and a log that
    agree; a resumed run (``resumed``) first rewrites the log from the checkpoint's history.

    Args:
        save_first: Also save before the first epoch of a fresh run (a loadable checkpoint
            from the start).

    Returns:
        Epochs trained in this call.

    Raises:
        TrainingDivergedError: A loss became NaN/inf; the last good checkpoint is kept.
    """
    runtime = trainer.runtime
    if runtime.is_main:
        for path in (checkpoint, log_path):  # temp files of writes killed half-way
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        if resumed:
            write_jsonl_atomic(trainer.history, log_path)  # drop epochs the checkpoint lacks
        elif save_first:
            save()
            write_jsonl_atomic(trainer.history, log_path)
    start = trainer.epoch
    last = trainer.epochs if stop_after is None else min(trainer.epochs, start + stop_after)
    while trainer.epoch < last:
        try:
            entry = trainer.train_epoch()
        except TrainingDivergedError as exc:
            done = trainer.epoch  # epochs in the checkpoint on disk
            if done == 0 and not save_first:
                raise
            raise TrainingDivergedError(
                f"{exc}; kept the last good checkpoint {checkpoint} (epoch {done})"
            ) from None
        if runtime.is_main:
            started = time.perf_counter()
            entry.update(trainer.evaluate())
            entry["eval_seconds"] = time.perf_counter() - started
        trainer.history.append(entry)
        if runtime.is_main:
            save()
            write_jsonl_atomic(trainer.history, log_path)
            if log is not None:
                log(trainer.summary(entry))
    barrier(runtime)
    return trainer.epoch - start
