"""The supernet trainer: the width sampler, the steps of a trainer kind, the loss records and
the per-epoch evaluation of the max and min widths.

:class:`SupernetTrainer` is an :class:`~widthsearch.supernet.loop.EpochTrainer` (optimiser,
schedule, data order, gradient averaging, divergence check: the loop every stage shares)
whose step is the trainer kind's (``bcnet``, ``sandwich``, or ``plain`` full-width training
for pretraining; :mod:`widthsearch.supernet.trainer_kinds`); the job around it (building,
resuming, saving) is :mod:`widthsearch.supernet.train`.

Resume is exact: the samplers are functions of ``(seed, step)``, each epoch's data order,
augmentation stream and global RNG are seeded by ``(seed, epoch, rank)``, and the trainer's
state holds optimiser, scheduler, RNG and loss-scaler state.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .accuracy import subnet_top1
from .checkpoint import capture_rng_state, restore_rng_state
from .loop import (  # the shared loop's pieces, also importable from here
    EpochTrainer,
    TrainingDivergedError,
    check_finite,
    cosine_schedule,
    epoch_loader,
    epoch_seed,
    resume_schedule,
)
from .runtime import Runtime
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


class SupernetTrainer(EpochTrainer):
    """Trains a supernet epoch by epoch; holds sampler, loss records and the shared loop's
    optimiser and schedule.

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
        progress: tqdm bar on rank 0 (``None``: only when stderr is a terminal).
        teacher: A trained network every trained subnet distils from (BCNet and plain).
    """

    hint = "try a lower [train].lr or warmup_epochs"
    summary_fields = (("loss", "loss"), ("top1_max", "top1_max"), ("top1_min", "top1_min"))

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
        progress: bool | None = None,
        teacher: Teacher | None = None,
    ) -> None:
        kind = get_trainer(train.trainer)  # ValueError naming the registered kinds
        if train.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {train.epochs}")
        super().__init__(
            sn,
            train_set,
            epochs=train.epochs,
            seed=train.seed,
            lr=train.lr,
            momentum=float(train.momentum),
            weight_decay=train.weight_decay,
            nesterov=bool(train.nesterov),
            warmup_epochs=train.warmup_epochs,
            batch_size=batch_size,
            workers=workers,
            runtime=runtime,
            transform=transform,
            progress=progress,
        )
        self.sn = sn
        self.heldout_set = heldout_set
        self.cfg = train
        self.label = train.trainer
        self.calib_batches = calib_batches
        self.teacher = teacher
        self.criterion = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
        self.kind = kind(sn.space, train, macs=sn.macs)
        evaluated = self.kind.eval_configs() or {"top1_max": None}
        self.summary_fields = (("loss", "loss"), *((key, key) for key in evaluated))
        self.records = LossRecords(g.name for g in sn.space.searchable)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "sampler_step": self.step,  # the sampler's position is the optimiser step
            "trainer": self.cfg.trainer,
            "seed": self.cfg.seed,
            "world_size": self.runtime.world_size,
            "rng": capture_rng_state(),  # tensors and plain data: weights-only loadable
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        restore_rng_state(state.get("rng") or {})

    # -- one epoch -----------------------------------------------------------------------
    def _begin_epoch(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._macs_hist = np.zeros(10, dtype=np.int64)  # trained subnets per tenth of MACs
        self._full_macs = self.sn.macs()

    def _train_step(self, x: Tensor, y: Tensor) -> tuple[list[str], Tensor, list[WidthConfig]]:
        """Backward passes of the current step (the trainer kind's).

        Returns:
            Loss names, the losses and the subnet config of each loss (for the records).
        """
        context = StepContext(
            criterion=self.criterion,
            distill=bool(self.cfg.distill),
            teacher=self.teacher,
            runtime=self.runtime,
            scaler=self.scaler,
        )
        planned = self.kind.step(self.sn, x, y, self.step, context)
        return planned.names, planned.losses, planned.configs

    def _account(
        self, names: Sequence[str], values: list[float], losses: Tensor, info: Any, y: Tensor
    ) -> None:
        for name, cfg, value in zip(names, info, values, strict=True):
            self.records.add(cfg, value)
            self._sums[name] += value
            self._counts[name] += 1
        for cfg in {id(c): c for c in info}.values():
            fraction = self.sn.macs(cfg) / self._full_macs
            self._macs_hist[min(int(fraction * 10), 9)] += 1

    def _postfix(self) -> dict[str, str]:
        return {k: f"{self._sums[k] / self._counts[k]:.3f}" for k in self._sums}

    def _epoch_entry(self) -> dict[str, Any]:
        sums, counts = self._sums, self._counts
        entry: dict[str, Any] = {"trainer": self.cfg.trainer}
        entry["loss"] = sum(sums.values()) / max(sum(counts.values()), 1)
        entry.update({f"loss_{k}": sums[k] / counts[k] for k in sorted(sums)})
        entry["lr"] = self.optimizer.param_groups[0]["lr"]
        entry["steps"] = self.step
        entry["macs_hist"] = self._macs_hist.tolist()
        return entry

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
