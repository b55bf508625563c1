"""The supernet trainer: optimiser, cosine schedule, width sampler, one epoch, evaluation.

:class:`SupernetTrainer` runs the steps of :mod:`widthsearch.supernet.steps` epoch by epoch
(``bcnet``, ``sandwich``, or ``plain`` full-width training for pretraining); the job around
it (building, resuming, saving) is :mod:`widthsearch.supernet.train`.

Resume is exact: the samplers are functions of ``(seed, step)``, each epoch's data order,
augmentation stream and global RNG are seeded by ``(seed, epoch, rank)``, and the trainer's
state holds optimiser, scheduler, RNG and loss-scaler state. Under ``torchrun`` gradients are
averaged explicitly (see :mod:`widthsearch.supernet.runtime` for why not DDP).
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .accuracy import subnet_top1
from .checkpoint import capture_rng_state, restore_rng_state
from .data import make_loader
from .errors import WidthsearchError
from .runtime import Runtime, allreduce_grads, average_buffers
from .sampling import step_rng
from .space import WidthConfig
from .steps import LossRecords, Teacher
from .supernet import Supernet
from .trainer_kinds import StepContext, get_trainer

__all__ = [
    "SupernetTrainer",
    "TrainingDivergedError",
    "check_finite",
    "cosine_schedule",
    "epoch_loader",
    "epoch_seed",
    "resume_schedule",
]


class TrainingDivergedError(WidthsearchError):
    """A training loss became NaN or infinite; no optimiser step was taken with it."""


# ---- data order ----------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of epoch ``epoch`` on ``rank``: data order, augmentation and global RNG."""
    return int(step_rng(seed, epoch, rank, 0x5EED).integers(2**62))


def epoch_loader(
    dataset: Dataset,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    workers: int,
    runtime: Runtime,
    drop_last: bool = True,
) -> DataLoader:
    """This rank's shard of epoch ``epoch``: a ``(seed, epoch)`` permutation, split like
    ``DistributedSampler`` (every rank the same number of full batches, so ranks step
    together). ``drop_last=False`` keeps a last short batch (a split smaller than a batch
    still trains)."""
    n = len(dataset)
    perm = step_rng(seed, epoch).permutation(n)
    per_rank = n // runtime.world_size
    indices = perm[runtime.rank :: runtime.world_size][:per_rank].tolist()
    rank_seed = epoch_seed(seed, epoch, runtime.rank)
    reseed = getattr(dataset, "reseed", None)
    if workers == 0 and callable(reseed):
        reseed(rank_seed)  # the augmentation stream restarts every epoch: exact resume
    return make_loader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        seed=rank_seed,
        drop_last=drop_last,
        workers=workers,
        pin_memory=runtime.pin_memory,
        indices=indices,
    )


# ---- schedule and trainer ------------------------------------------------------------------


def _cosine(step: int, *, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` optimiser steps, then cosine decay to zero at
    ``total_steps`` (stepped once per optimiser step)."""
    total = max(total_steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _cosine(step, total=total, warmup=warmup_steps)
    )


def check_finite(values: Sequence[float], names: Sequence[str], *, where: str, hint: str) -> None:
    """Stop before an optimiser step with a NaN or infinite loss (``where``: epoch and step
    for the message; ``hint``: what to change)."""
    for name, value in zip(names, values, strict=True):
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"training diverged: {name} loss is {value} at {where} ({hint})"
            )


def resume_schedule(
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: Mapping[str, Any],
    *,
    epochs_done: int,
    steps_per_epoch: int,
) -> None:
    """Put ``scheduler`` where a resumed run stands: its saved state when the run had as many
    steps per epoch, else (another world size) ``epochs_done`` epochs of this run's steps."""
    if state.get("steps_per_epoch", steps_per_epoch) == steps_per_epoch:
        scheduler.load_state_dict(state["scheduler"])
        return
    with warnings.catch_warnings():  # stepping before any optimiser step is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs_done * steps_per_epoch):
            scheduler.step()


class SupernetTrainer:
    """Trains a supernet epoch by epoch; holds optimiser, scheduler, sampler and records.

    Args:
        sn: The supernet (on its device).
        train_set: Training split.
        heldout_set: Held-out split for the per-epoch top-1 (``None``: no evaluation).
        train: The recipe's ``[train]`` section (or any object with the same attributes).
        batch_size: Per-process batch size.
        workers: DataLoader workers.
        calib_batches: Training batches for BN recalibration before each evaluation.
        runtime: Device, precision and place in a torchrun job (default: one CPU process).
        transform: Optional function applied to every input batch (resizing).
        progress: Show tqdm bars (on rank 0, when stderr is a terminal).
        teacher: A trained network every trained subnet distils from (BCNet and plain).
    """

    def __init__(
        self,
        sn: Supernet,
        train_set: Dataset,
        heldout_set: Dataset | None,
        train: Any,
        *,
        batch_size: int,
        workers: int = 0,
        calib_batches: int = 4,
        runtime: Runtime | None = None,
        transform: Any = None,
        progress: bool = True,
        teacher: Teacher | None = None,
    ) -> None:
        kind = get_trainer(train.trainer)  # ValueError naming the registered kinds
        if train.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {train.epochs}")
        self.sn = sn
        self.train_set = train_set
        self.heldout_set = heldout_set
        self.cfg = train
        self.batch_size = batch_size
        self.workers = workers
        self.calib_batches = calib_batches
        self.runtime = runtime or Runtime()
        self.transform = transform
        self.progress = progress
        self.teacher = teacher
        self.steps_per_epoch = (len(train_set) // self.runtime.world_size) // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split ({len(train_set)} images over {self.runtime.world_size} "
                f"process(es)) is smaller than one batch of {batch_size}"
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
        self.params = [p for p in sn.parameters() if p.requires_grad]
        momentum = float(train.momentum)
        self.optimizer = torch.optim.SGD(
            self.params,
            lr=train.lr,
            momentum=momentum,
            weight_decay=train.weight_decay,
            nesterov=bool(train.nesterov) and momentum > 0,
        )
        self.scheduler = cosine_schedule(
            self.optimizer,
            total_steps=max(train.epochs, 1) * self.steps_per_epoch,
            warmup_steps=round(train.warmup_epochs * self.steps_per_epoch),
        )
        self.kind = kind(sn.space, train)
        self.scaler = self.runtime.grad_scaler()  # passes values through unless fp16
        self.records = LossRecords(g.name for g in sn.space.searchable)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps taken (= sampler position)
        self.history: list[dict[str, Any]] = []

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "sampler_step": self.step,
            "trainer": self.cfg.trainer,
            "seed": self.cfg.seed,
            "world_size": self.runtime.world_size,
            "steps_per_epoch": self.steps_per_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),  # tensors and plain data: weights-only loadable
            "grad_scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        resume_schedule(
            self.scheduler, state, epochs_done=self.epoch, steps_per_epoch=self.steps_per_epoch
        )
        restore_rng_state(state.get("rng") or {})
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])

    # -- one epoch -----------------------------------------------------------------------
    def _prep(self, x: Tensor) -> Tensor:
        x = self.runtime.batch(x)
        return self.transform(x) if self.transform is not None else x

    def train_epoch(self) -> dict[str, Any]:
        """Train epoch ``self.epoch + 1``; returns its log entry (mean label losses, seconds)."""
        epoch = self.epoch + 1
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.runtime.rank))
        loader = epoch_loader(
            self.train_set,
            epoch=epoch,
            seed=self.cfg.seed,
            batch_size=self.batch_size,
            workers=self.workers,
            runtime=self.runtime,
        )
        self.sn.train()
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        macs_hist = np.zeros(10, dtype=np.int64)  # trained subnets per tenth of full MACs
        full_macs = self.sn.macs()
        start = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch}/{self.cfg.epochs} [{self.cfg.trainer}]",
            leave=False,
            disable=None if (self.progress and self.runtime.is_main) else True,
            dynamic_ncols=True,
        )
        for x, y in bar:
            x, y = self._prep(x), y.to(self.runtime.device, non_blocking=True)
            names, cfgs, losses = self._train_step(x, y)
            values = losses.tolist()
            check_finite(
                values,
                names,
                where=f"epoch {epoch}, step {self.step}",
                hint="try a lower [train].lr or warmup_epochs",
            )
            self.scaler.step(self.optimizer)  # skipped on inf/NaN fp16 gradients
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            for name, cfg, value in zip(names, cfgs, values, strict=True):
                self.records.add(cfg, value)
                sums[name] += value
                counts[name] += 1
            for cfg in {id(c): c for c in cfgs}.values():
                fraction = self.sn.macs(cfg) / full_macs
                macs_hist[min(int(fraction * 10), 9)] += 1
            bar.set_postfix({k: f"{sums[k] / counts[k]:.3f}" for k in sums}, refresh=False)
        bar.close()
        average_buffers(self.sn, self.runtime)
        self.epoch = epoch
        entry: dict[str, Any] = {"epoch": epoch, "trainer": self.cfg.trainer}
        entry["loss"] = sum(sums.values()) / max(sum(counts.values()), 1)
        entry.update({f"loss_{k}": sums[k] / counts[k] for k in sorted(sums)})
        entry["lr"] = self.optimizer.param_groups[0]["lr"]
        entry["steps"] = self.step
        entry["macs_hist"] = macs_hist.tolist()
        entry["seconds"] = time.perf_counter() - start
        return entry

    def _train_step(self, x: Tensor, y: Tensor) -> tuple[list[str], list[WidthConfig], Tensor]:
        """Backward passes of the current step, gradients averaged over ranks.

        Returns:
            Loss names, the subnet config of each loss (for the records) and the losses.
        """
        self.optimizer.zero_grad(set_to_none=True)
        context = StepContext(
            criterion=self.criterion,
            distill=bool(self.cfg.distill),
            teacher=self.teacher,
            runtime=self.runtime,
            scaler=self.scaler,
        )
        planned = self.kind.step(self.sn, x, y, self.step, context)
        names, cfgs = planned.names, planned.configs
        losses = allreduce_grads(self.params, planned.losses, self.runtime)
        return names, cfgs, losses

    def evaluate(self) -> dict[str, float]:
        """Held-out top-1 of the max and min widths (left), each after BN recalibration."""
        if self.heldout_set is None or self.cfg.eval_batches <= 0:
            return {}
        calib = epoch_loader(
            self.train_set,
            epoch=0,
            seed=self.cfg.seed + 1,
            batch_size=self.batch_size,
            workers=0,
            runtime=self.runtime.local(),
        )
        calib_list = [b for _, b in zip(range(self.calib_batches), calib, strict=False)]
        heldout = DataLoader(self.heldout_set, batch_size=self.batch_size, shuffle=False)
        eval_list = [b for _, b in zip(range(self.cfg.eval_batches), heldout, strict=False)]
        configs = self.kind.eval_configs()
        if not configs:  # plain training: the network's own running stats
            top1 = subnet_top1(self.sn, None, None, eval_list, transform=self.transform)
            return {"top1_max": top1}
        return {
            key: subnet_top1(self.sn, cfg, calib_list, eval_list, transform=self.transform)
            for key, cfg in configs.items()
        }
