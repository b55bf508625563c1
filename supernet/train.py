"""Supernet training: BCNet bilateral coupling with fair sampling, or the sandwich rule.

One *BCNet step* (Su et al., BCNet, CVPR 2021) trains one width config on both sides of the
supernet: activate the left subnet (channels ``[0, c)``), back-propagate ``0.5 * loss``;
activate the right subnet (``[C - c, C)``), back-propagate ``0.5 * loss``; one optimiser
step. The widths come from :class:`~widthsearch.supernet.sampling.FairSampler` (random pair,
complement, full width), so every channel of a group gets the same number of updates. With
``distill``, subnets learn from the full width's soft predictions on the same batch
(in-place distillation, AutoSlim), at the price of one extra forward without gradient.

The *sandwich rule* (US-Nets / AutoSlim) is the baseline: max width with labels, then min
and ``sandwich_random`` random widths (left side) distilled from the max's detached
predictions, losses summed, one optimiser step. In-place distillation is part of that rule
as published, so the sandwich trainer always uses it; ``distill`` only switches it for BCNet.

Every subnet trained adds its label loss to the loss records: per (group, width) a running
sum and count, which BCNet's search turns into its prior population.

Resume is exact: the samplers are functions of ``(seed, step)``, each epoch's data order,
augmentation stream and global RNG are seeded by ``(seed, epoch, rank)``, and the checkpoint
holds weights, BN stats, optimiser and scheduler state. Under ``torchrun`` gradients are
averaged explicitly (see :mod:`widthsearch.supernet.runtime` for why not DDP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, get_worker_info
from tqdm.auto import tqdm

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_supernet
from .errors import CheckpointError, WidthsearchError
from .runtime import (
    Runtime,
    allreduce_grads,
    average_buffers,
    barrier,
    broadcast_state,
    dump_rank_state,
    init_runtime,
    shutdown_runtime,
)
from .sampling import FairSampler, SandwichSampler, step_rng
from .space import WidthConfig
from .supernet import Supernet

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PRETRAIN_NAME",
    "TRAINERS",
    "LossRecords",
    "SupernetTrainer",
    "Teacher",
    "TrainResult",
    "TrainingDivergedError",
    "bcnet_step",
    "build_training",
    "distill_loss",
    "epoch_loader",
    "epoch_seed",
    "preserved_state",
    "pretrain_network",
    "sandwich_step",
    "soft_cross_entropy",
    "subnet_top1",
    "train_supernet",
]

CHECKPOINT_NAME = "supernet.pt"
LOG_NAME = "train.jsonl"
TRAINERS = ("bcnet", "sandwich", "plain")  # plain: full width only (pretraining)


class TrainingDivergedError(WidthsearchError):
    """A training loss became NaN or infinite; no optimiser step was taken with it."""


# ---- losses and single steps -------------------------------------------------------------


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy against soft targets (same gradient as KL to them): in-place distillation."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def distill_loss(logits: Tensor, teacher_logits: Tensor, *, temperature: float = 4.0) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean (gradient scale independent of T)."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(logits / t, dim=1),
            F.log_softmax(teacher_logits.detach() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen trained network whose soft predictions every trained subnet learns from.

    The loss of a subnet is ``(1 - alpha) * CE(labels) + alpha * distill_loss(T)``.
    """

    model: nn.Module
    alpha: float = 0.7
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"teacher alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"teacher temperature must be > 0, got {self.temperature}")
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        return self.model(x)

    def loss(self, logits: Tensor, label_loss: Tensor, teacher_logits: Tensor) -> Tensor:
        kd = distill_loss(logits, teacher_logits, temperature=self.temperature)
        return (1.0 - self.alpha) * label_loss + self.alpha * kd


def bcnet_step(
    sn: Supernet,
    x: Tensor,
    y: Tensor,
    cfg: Mapping[str, int] | None,
    *,
    criterion: nn.Module,
    distill: bool = False,
    teacher: Teacher | None = None,
    runtime: Runtime | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Tensor]:
    """The backward passes of one BCNet step (gradients accumulate; no optimiser step).

    Args:
        sn: The supernet, in train mode.
        x: Input batch.
        y: Labels.
        cfg: Width config trained on both sides; ``None`` trains the full width once (its
            left and right subnets are the same network, so one pass with weight 1 gives the
            same gradient as two with weight 0.5).
        criterion: Label loss.
        distill: Train the subnets on the full width's detached soft predictions instead of
            the labels (in-place distillation; ignored with a ``teacher``).
        teacher: A trained network every subnet (and the full width) learns from.
        runtime: Mixed precision of the forward passes (default: none).
        scaler: fp16 loss scaler (see :meth:`Runtime.grad_scaler`; default: none).

    Returns:
        Detached label losses: ``{"left", "right"}`` or ``{"full"}``; ``sn`` is back at
        full width afterwards.
    """
    autocast, backward = _precision(runtime, scaler)
    with autocast():
        teacher_logits = teacher.logits(x) if teacher is not None else None

    def loss_of(logits: Tensor, label_loss: Tensor, soft: Tensor | None) -> Tensor:
        if teacher is not None:
            return teacher.loss(logits, label_loss, teacher_logits)
        return label_loss if soft is None else soft_cross_entropy(logits, soft)

    if cfg is None:
        sn.set_active(None)
        with autocast():
            logits = sn(x)
            label_loss = criterion(logits, y)
            loss = loss_of(logits, label_loss, None)
        backward(loss)
        return {"full": _upcast(label_loss.detach())}
    soft = None
    if distill and teacher is None:
        sn.set_active(None)
        with torch.no_grad(), autocast():
            soft = F.softmax(_upcast(sn(x)), dim=1)
    out = {}
    try:
        for side in ("left", "right"):
            sn.set_active(cfg, side)
            with autocast():
                logits = sn(x)
                label_loss = criterion(logits, y)
                loss = 0.5 * loss_of(logits, label_loss, soft)
            backward(loss)
            out[side] = _upcast(label_loss.detach())
    finally:
        sn.set_active(None)
    return out


def sandwich_step(
    sn: Supernet,
    x: Tensor,
    y: Tensor,
    cfgs: list[WidthConfig],
    *,
    criterion: nn.Module,
    distill: bool = True,
    runtime: Runtime | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> list[Tensor]:
    """The backward passes of one sandwich-rule step: ``cfgs[0]`` (the max) with labels, the
    rest (left side) distilled from its detached predictions; losses are summed (US-Nets).

    ``runtime`` and ``scaler`` set the mixed precision, as in :func:`bcnet_step`.

    Returns:
        Detached label losses, one per config.
    """
    autocast, backward = _precision(runtime, scaler)
    losses = []
    teacher = None
    try:
        for i, cfg in enumerate(cfgs):
            sn.set_active(cfg, "left")
            with autocast():
                logits = sn(x)
                label_loss = criterion(logits, y)
                distilled = i > 0 and teacher is not None
                loss = soft_cross_entropy(logits, teacher) if distilled else label_loss
            if i == 0 and distill:
                teacher = F.softmax(_upcast(logits.detach()), dim=1)
            backward(loss)
            losses.append(_upcast(label_loss.detach()))
    finally:
        sn.set_active(None)
    return losses


def _upcast(t: Tensor) -> Tensor:
    """Half-precision values (from autocast) as float32; other dtypes unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _precision(runtime: Runtime | None, scaler: torch.amp.GradScaler | None) -> tuple[Any, Any]:
    """``(autocast context factory, backward function)`` for one step's passes."""
    autocast = runtime.autocast if runtime is not None else contextlib.nullcontext

    def backward(loss: Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    return autocast, backward


# ---- loss records --------------------------------------------------------------------------


class LossRecords:
    """Running sum and count of training losses per (group, width).

    ``add(cfg, loss)`` credits the loss of the subnet ``cfg`` to every searchable group at
    the width it had there. ``to_dict()`` is the checkpoint form
    ``{group: {width: [loss_sum, count]}}``.
    """

    def __init__(self, groups: Iterable[str]) -> None:
        self._groups = list(groups)
        self._data: dict[str, dict[int, list[float]]] = {g: {} for g in self._groups}

    def add(self, cfg: Mapping[str, int], loss: float) -> None:
        for g in self._groups:
            entry = self._data[g].setdefault(int(cfg[g]), [0.0, 0])
            entry[0] += float(loss)
            entry[1] += 1

    def mean(self, group: str, width: int) -> float:
        total, count = self._data[group].get(int(width), (0.0, 0))
        return total / count if count else math.nan

    def to_dict(self) -> dict[str, dict[int, list[float]]]:
        return {g: {w: [s, c] for w, (s, c) in sorted(d.items())} for g, d in self._data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[int, list[float]]]) -> LossRecords:
        records = cls(data)
        for g, widths in data.items():
            records._data[g] = {int(w): [float(s), int(c)] for w, (s, c) in widths.items()}
        return records


# ---- evaluation ----------------------------------------------------------------------------


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every buffer (BN running stats, counters) and the train/eval mode on exit.

    BN recalibration overwrites running stats; evaluating inside this block leaves the
    training state (and so an exact resume) untouched, without copying the whole model.
    """
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])
        for name, m in model.named_modules():
            m.training = modes[name]


@torch.no_grad()
def subnet_top1(
    sn: Supernet,
    cfg: Mapping[str, int] | None,
    calib_batches: Iterable[Any] | None,
    eval_batches: Iterable[Any],
    *,
    side: str = "left",
    transform: Any = None,
) -> float:
    """Top-1 of one subnet after BN recalibration, leaving the supernet's state as it was.

    Args:
        sn: The supernet.
        cfg: Width config (``None``: full width).
        calib_batches: ``(x, y)`` batches whose statistics replace the BN running stats
            (``None``: keep the running stats, e.g. of a plainly trained network).
        eval_batches: ``(x, y)`` batches scored.
        side: Which side of ``cfg``.
        transform: Optional function applied to every input batch (e.g. resizing).
    """
    from .bn import recalibrate_bn

    device = next(sn.parameters()).device
    prep = transform or (lambda t: t)
    with preserved_state(sn):
        if calib_batches is not None:
            recalibrate_bn(sn, (prep(b[0]) for b in calib_batches), cfg=cfg, side=side)
        sn.eval()
        correct = total = 0
        with sn.active(cfg, side):
            for x, y in eval_batches:
                logits = sn(prep(x.to(device)))
                correct += int((logits.argmax(1) == y.to(device)).sum())
                total += len(y)
    return correct / max(total, 1)


# ---- data order ----------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of epoch ``epoch`` on ``rank``: data order, augmentation and global RNG."""
    return int(step_rng(seed, epoch, rank, 0x5EED).integers(2**62))


def _reseed_worker(worker_id: int) -> None:
    info = get_worker_info()
    reseed = getattr(info.dataset, "reseed", None) if info is not None else None
    if callable(reseed):
        reseed(info.seed % 2**63)


def epoch_loader(
    dataset: Dataset,
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    workers: int,
    runtime: Runtime,
) -> DataLoader:
    """This rank's shard of epoch ``epoch``: a ``(seed, epoch)`` permutation, split like
    ``DistributedSampler`` (every rank the same number of full batches, so ranks step
    together)."""
    n = len(dataset)
    perm = step_rng(seed, epoch).permutation(n)
    per_rank = n // runtime.world_size
    indices = perm[runtime.rank :: runtime.world_size][:per_rank].tolist()
    rank_seed = epoch_seed(seed, epoch, runtime.rank)
    reseed = getattr(dataset, "reseed", None)
    if workers == 0 and callable(reseed):
        reseed(rank_seed)  # the augmentation stream restarts every epoch: exact resume
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=indices,
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(rank_seed),
        worker_init_fn=_reseed_worker if workers > 0 else None,
        pin_memory=runtime.pin_memory,
    )


# ---- the trainer ---------------------------------------------------------------------------


def _cosine(step: int, *, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_supernet` did."""

    checkpoint: Path
    log: Path
    history: list[dict[str, Any]]
    epochs_run: int
    is_main: bool = True  # rank 0 (the one that wrote the files)


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
        if train.trainer not in TRAINERS:
            raise ValueError(f"trainer must be one of {', '.join(TRAINERS)}, got {train.trainer!r}")
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
        total = max(train.epochs, 1) * self.steps_per_epoch
        warmup = round(train.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: _cosine(s, total=total, warmup=warmup)
        )
        self.sampler: FairSampler | SandwichSampler | None = None
        if train.trainer == "bcnet":
            self.sampler = FairSampler(
                sn.space,
                seed=train.seed,
                full_every=train.full_every,
                coverage=getattr(train, "coverage", "levels"),
                spread=getattr(train, "level_spread", 1),
            )
        elif train.trainer == "sandwich":
            self.sampler = SandwichSampler(
                sn.space, seed=train.seed, n_random=train.sandwich_random
            )
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
        self.scheduler.load_state_dict(state["scheduler"])
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
            if not all(math.isfinite(v) for v in values):
                bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
                raise TrainingDivergedError(
                    f"training diverged: {names[bad]} loss is {values[bad]} at epoch {epoch}, "
                    f"step {self.step} (try a lower [train].lr or warmup_epochs)"
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
        space = self.sn.space
        if self.sampler is None or isinstance(self.sampler, FairSampler):
            cfg = None if self.sampler is None else self.sampler.plan(self.step).cfg
            out = bcnet_step(
                self.sn,
                x,
                y,
                cfg,
                criterion=self.criterion,
                distill=self.cfg.distill,
                teacher=self.teacher,
                runtime=self.runtime,
                scaler=self.scaler,
            )
            names = list(out)
            cfgs = [cfg if cfg is not None else space.max()] * len(names)
            losses = torch.stack(list(out.values()))
        else:
            cfgs = self.sampler.plan(self.step)
            step_losses = sandwich_step(
                self.sn,
                x,
                y,
                cfgs,
                criterion=self.criterion,
                runtime=self.runtime,
                scaler=self.scaler,
            )
            losses = torch.stack(step_losses)
            names = ["max", "min"] + ["random"] * (len(cfgs) - 2)
        losses = allreduce_grads(self.params, losses, self.runtime)
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
        space = self.sn.space
        if self.sampler is None:  # plain training: the network's own running stats
            top1 = subnet_top1(self.sn, None, None, eval_list, transform=self.transform)
            return {"top1_max": top1}
        out = {}
        for key, cfg in (("top1_max", space.max()), ("top1_min", space.min())):
            out[key] = subnet_top1(self.sn, cfg, calib_list, eval_list, transform=self.transform)
        return out


# ---- the whole job -------------------------------------------------------------------------


def _seconds_line(entry: Mapping[str, Any]) -> str:
    parts = [f"epoch {entry['epoch']}", f"loss {entry['loss']:.4f}"]
    for key in ("top1_max", "top1_min"):
        if key in entry:
            parts.append(f"{key} {entry[key]:.4f}")
    parts.append(f"{entry['seconds']:.1f}s")
    return "  ".join(parts)


def _write_jsonl(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole log from the history, atomically: it always matches the checkpoint."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            for entry in history:
                f.write(json.dumps(entry) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a log is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_training(recipe: Any, *, runtime: Runtime | None = None, download: bool = True):
    """Data splits, supernet and input transform for ``recipe``, seeded by ``[train].seed``.

    Args:
        recipe: A :class:`widthsearch.recipes.recipe.Recipe` (or anything with its sections).
        runtime: Where the supernet goes (device, memory format).

    Returns:
        ``(splits, supernet, transform)``; ``transform`` resizes batches when
        ``[model].input_size`` differs from the dataset's size (else ``None``).
    """
    from .data import get_data
    from .models import create_model

    runtime = runtime or Runtime()
    d, m = recipe.data, recipe.model
    splits = get_data(
        d.name,
        root=d.root or None,
        heldout_size=d.heldout_size,
        seed=d.seed,
        train_limit=d.train_limit or None,
        test_limit=d.test_limit or None,
        download=download,
        synthetic_input_size=m.input_size if m.input_size > 0 else 28,
    )
    spec = splits.spec
    size = m.input_size if m.input_size > 0 else spec.input_size
    transform = None
    if size != spec.input_size:

        def transform(x: Tensor) -> Tensor:
            return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    torch.manual_seed(recipe.train.seed)  # same initial weights on every rank and run
    model = create_model(m.name, num_classes=spec.num_classes, in_chans=spec.in_chans)
    meta = {
        "model": m.name,
        "num_classes": spec.num_classes,
        "in_chans": spec.in_chans,
        "input_size": size,
    }
    sn = Supernet.from_model(
        model,
        torch.zeros(1, spec.in_chans, size, size),
        bins=recipe.space.bins,
        min_bins=recipe.space.min_bins,
        round_to=recipe.space.round_to,
        meta=meta,
    )
    runtime.module(sn)
    return splits, sn, transform


def _check_resumable(payload: Mapping[str, Any], sn: Supernet, trainer: str, path: Path) -> None:
    """Refuse checkpoints of another model, width space or trainer (one clear line)."""
    state = payload.get("train_state")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: has no training state to resume from")
    theirs = payload.get("meta", {})
    for key, ours in sn.meta.items():
        if theirs.get(key) != ours:
            raise CheckpointError(
                f"{path}: was trained with {key}={theirs.get(key)!r}, but the recipe gives "
                f"{ours!r}; use another --out or the same recipe"
            )
    if state.get("trainer") != trainer:
        raise CheckpointError(
            f"{path}: was trained by the {state.get('trainer')!r} trainer, not {trainer!r}"
        )


PRETRAIN_NAME = "full.pt"
PRETRAIN_LOG_NAME = "pretrain.jsonl"


def train_supernet(
    recipe: Any,
    *,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
    progress: bool = True,
    log: Any = print,
    stop_after: int | None = None,
    init: str | None = None,
    trust_pickle: bool = False,
) -> TrainResult:
    """Train the supernet of ``recipe``, writing ``out_dir/supernet.pt`` and ``train.jsonl``.

    Runs single-process, or data-parallel when started by ``torchrun`` (``WORLD_SIZE > 1``):
    every rank trains its shard with the same widths, only rank 0 writes.

    With a trained network to start from (``init``, else ``[train].init``): its weights are
    loaded, every group's channels are reordered by importance (``[train].channel_order``,
    function-preserving) and the frozen network becomes the teacher every trained subnet
    distils from (``[train].teacher_alpha``, ``teacher_temperature``). Its weights are kept
    in the checkpoint, so resuming and fine-tuning need no other file.

    The checkpoint is written (atomically) before the first epoch and after every epoch, so
    a run killed at any moment leaves a loadable one; ``resume=True`` continues from it
    exactly (same weights as an uninterrupted run).

    Args:
        recipe: A :class:`widthsearch.recipes.recipe.Recipe`.
        out_dir: Output folder.
        resume: Continue from ``out_dir/supernet.pt``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: Mixed precision of the forward passes: ``"off"``, ``"bf16"`` or ``"fp16"``
            (with a gradient scaler).
        channels_last: Channels-last memory format for weights and batches.
        progress: tqdm bars on rank 0.
        log: Called with one summary line per epoch (rank 0).
        stop_after: Train at most this many epochs in this call (time-limited jobs); the
            schedule still spans ``[train].epochs``, and ``resume=True`` picks up from there.
        init: ``"scratch"``, ``"pretrain"`` (``out_dir/full.pt`` from :func:`pretrain_network`)
            or the path of a trained network (see
            :func:`widthsearch.supernet.warmstart.read_state_dict`); ``None``: the recipe's.
        trust_pickle: Accept files that only unpickling reads (runs their code): an ``init``
            file, or an older checkpoint to resume from; refused otherwise (see
            :func:`~widthsearch.supernet.checkpoint.load_checkpoint`).

    Raises:
        CheckpointError: Nothing to resume, a corrupt, foreign or mismatched checkpoint, or
            an init file that does not fit the model.
        TrainingDivergedError: The loss became NaN/inf (the last good checkpoint is kept).
        ValueError: Bad recipe values.
    """
    out = Path(out_dir)
    init = init if init is not None else getattr(recipe.train, "init", "scratch")
    init_path = None
    if init == "pretrain":
        init_path = out / PRETRAIN_NAME
        if not resume and not init_path.is_file():
            raise CheckpointError(
                f"{init_path} does not exist: run `widthsearch pretrain --out {out}` first, "
                "or pass --init FILE"
            )
    elif init and init != "scratch":
        init_path = Path(init)

    def setup(sn: Supernet, payload: Mapping[str, Any] | None) -> dict[str, Any]:
        """Warm start (fresh run) or the stored teacher (resume); the checkpoint's extras."""
        if payload is not None:
            stored = payload.get("teacher_state_dict")
            extras = {k: payload[k] for k in ("init", "teacher_state_dict") if k in payload}
            where = str(out / CHECKPOINT_NAME)
            teacher = _teacher(recipe, sn.meta, stored, where) if stored else None
            return {"teacher": teacher, **extras}
        if init_path is None:
            return {"teacher": None, "init": {"from": "scratch"}}
        from .warmstart import load_weights, read_state_dict, reorder_channels

        state = read_state_dict(init_path, trust_pickle=trust_pickle)
        load_weights(sn.model, state, where=str(init_path))
        order = getattr(recipe.train, "channel_order", "ends")
        reorder_channels(sn, order)
        teacher_state = {k: v.detach().clone() for k, v in state.items()}
        return {
            "teacher": _teacher(recipe, sn.meta, teacher_state, str(init_path)),
            "init": {"from": str(init_path), "channel_order": order},
            "teacher_state_dict": teacher_state,
        }

    return _run_training(
        recipe,
        recipe.train,
        path=out / CHECKPOINT_NAME,
        log_path=out / LOG_NAME,
        file_format="widthsearch.supernet",
        resume=resume,
        device=device,
        amp=amp,
        channels_last=channels_last,
        progress=progress,
        log=log,
        stop_after=stop_after,
        setup=setup,
        trust_pickle=trust_pickle,
    )


def pretrain_network(
    recipe: Any,
    *,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
    progress: bool = True,
    log: Any = print,
    stop_after: int | None = None,
    trust_pickle: bool = False,
) -> TrainResult:
    """Train the recipe's model plainly (full width, ``[pretrain]`` settings) into
    ``out_dir/full.pt``: the start and the teacher of a warm-started supernet.

    Same loop, schedule, checkpointing, exact resume and torchrun support as
    :func:`train_supernet`; ``full.pt`` holds the model's plain ``state_dict``.
    ``trust_pickle`` lets it resume from an older, pickled checkpoint.
    """
    section = SimpleNamespace(
        **{
            **dataclasses.asdict(recipe.train),
            **dataclasses.asdict(recipe.pretrain),
            "trainer": "plain",
            "distill": False,
        }
    )
    out = Path(out_dir)
    return _run_training(
        recipe,
        section,
        path=out / PRETRAIN_NAME,
        log_path=out / PRETRAIN_LOG_NAME,
        file_format="widthsearch.full",
        resume=resume,
        device=device,
        amp=amp,
        channels_last=channels_last,
        progress=progress,
        log=log,
        stop_after=stop_after,
        setup=lambda sn, payload: {"teacher": None},
        trust_pickle=trust_pickle,
    )


def _teacher(
    recipe: Any, meta: Mapping[str, Any], state: Mapping[str, Tensor], where: str
) -> Teacher:
    """The frozen trained network, rebuilt from its weights (``meta``: the model's arguments)."""
    from .models import create_model
    from .warmstart import load_weights

    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    load_weights(model, state, where=where)
    return Teacher(
        model,
        alpha=getattr(recipe.train, "teacher_alpha", 0.7),
        temperature=getattr(recipe.train, "teacher_temperature", 4.0),
    )


def _run_training(
    recipe: Any,
    section: Any,
    *,
    path: Path,
    log_path: Path,
    file_format: str,
    resume: bool,
    device: str,
    amp: str,
    channels_last: bool,
    progress: bool,
    log: Any,
    stop_after: int | None,
    setup: Any,
    trust_pickle: bool = False,
) -> TrainResult:
    """The loop every training stage shares: build, (resume), train epochs, save atomically.

    ``setup(sn, payload)`` returns ``{"teacher": Teacher | None, **checkpoint extras}``;
    ``payload`` is the checkpoint being resumed, or ``None`` on a fresh run.
    """
    out = path.parent
    runtime = init_runtime(device, amp=amp, channels_last=channels_last)
    if runtime.is_main and log is not None:
        log(runtime.describe())
    try:
        payload = None
        if resume:  # fail before any expensive work
            if not path.is_file():
                raise CheckpointError(f"nothing to resume: {path} does not exist")
            payload = load_checkpoint(path, kind=file_format, trust_pickle=trust_pickle)
        splits, sn, transform = build_training(recipe, runtime=runtime)
        if payload is not None:
            _check_resumable(payload, sn, section.trainer, path)
            try:
                sn.model.load_state_dict(payload["state_dict"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{path}: cannot resume from it ({exc})") from None
        extras = setup(sn, payload)
        teacher = extras.pop("teacher")
        if teacher is not None:
            teacher = dataclasses.replace(teacher, model=runtime.module(teacher.model))
        trainer = SupernetTrainer(
            sn,
            splits.train,
            splits.heldout if len(splits.heldout) else None,
            section,
            batch_size=recipe.data.batch_size,
            workers=recipe.data.workers,
            calib_batches=getattr(getattr(recipe, "search", None), "calib_batches", 4),
            runtime=runtime,
            transform=transform,
            progress=progress,
            teacher=teacher,
        )
        if payload is not None:
            try:
                trainer.load_state_dict(payload["train_state"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{path}: cannot resume from it ({exc})") from None
            trainer.records = LossRecords.from_dict(payload.get("loss_records", {}))
            trainer.history = list(payload.get("history", []))
        else:
            broadcast_state(sn, runtime)
        spec = dataclasses.asdict(splits.spec)

        def save() -> None:
            if runtime.is_main:
                save_supernet(
                    path,
                    sn,
                    file_format=file_format,
                    recipe=recipe.to_dict(),
                    loss_records=trainer.records.to_dict(),
                    train_state=trainer.state_dict(),
                    data=spec,
                    history=trainer.history,
                    **extras,
                )
                _write_jsonl(log_path, trainer.history)

        if runtime.is_main:  # temp files of writes killed half-way
            for name in (path.name, log_path.name):
                for stale in out.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
        if payload is None:
            save()  # epoch 0: a loadable checkpoint from the start
        elif runtime.is_main:
            _write_jsonl(log_path, trainer.history)  # drop lines of epochs the checkpoint lacks
        start_epoch = trainer.epoch
        if stop_after is not None and stop_after < 0:
            raise ValueError(f"stop_after must be >= 0, got {stop_after}")
        last = section.epochs if stop_after is None else start_epoch + stop_after
        while trainer.epoch < min(last, section.epochs):
            try:
                entry = trainer.train_epoch()
            except TrainingDivergedError as exc:
                done = trainer.epoch  # epochs in the checkpoint on disk
                raise TrainingDivergedError(
                    f"{exc}; kept the last good checkpoint {path} (epoch {done})"
                ) from None
            if runtime.is_main:
                start = time.perf_counter()
                entry.update(trainer.evaluate())
                entry["eval_seconds"] = time.perf_counter() - start
                trainer.history.append(entry)
            save()
            if runtime.is_main:
                log(_seconds_line(entry))
        barrier(runtime)
        dump_rank_state(sn.model, runtime)
        return TrainResult(
            path, log_path, trainer.history, trainer.epoch - start_epoch, runtime.is_main
        )
    finally:
        shutdown_runtime(runtime)
