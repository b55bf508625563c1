"""One training step of a supernet: the losses, the teacher, the BCNet and sandwich steps,
and the loss records they feed.

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

The *budgets* step trains one subnet near each requested budget (left side), each on the
trained network's soft predictions when there is a teacher (else on the labels), losses
summed as in the sandwich rule: slimmable training of the widths that will be delivered.
With ``distill`` it also trains the full width and the subnets learn from its live
predictions (in-place distillation) instead of the frozen teacher's.

Every subnet trained adds its label loss to the loss records: per (group, width) a running
sum and count, which BCNet's search turns into its prior population.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .runtime import Runtime
from .space import WidthConfig
from .supernet import Supernet

__all__ = [
    "LossRecords",
    "Teacher",
    "bcnet_step",
    "budgets_step",
    "distill_loss",
    "sandwich_step",
    "soft_cross_entropy",
]


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
        return self.mix(label_loss, kd)

    def mix(self, label_loss: Tensor, kd: Tensor) -> Tensor:
        """``(1 - alpha) * label_loss + alpha * kd``: a distilled network's loss, given its
        :func:`distill_loss` (for callers that log the two terms apart)."""
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


def budgets_step(
    sn: Supernet,
    x: Tensor,
    y: Tensor,
    cfgs: list[WidthConfig],
    *,
    criterion: nn.Module,
    teacher: Teacher | None = None,
    inplace: bool = False,
    runtime: Runtime | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> list[Tensor]:
    """The backward passes of one budgets step: every config of ``cfgs`` on the left side,
    distilled from ``teacher`` (labels only without one), losses summed.

    With ``inplace`` the full width trains first, on the teacher's loss (labels without
    one), and the configs of ``cfgs`` distil from its detached predictions instead of the
    frozen teacher's (with the teacher's ``alpha`` and temperature): the teacher keeps
    learning with the subnets it teaches.

    Returns:
        Detached label losses: the full width's first with ``inplace``, then one per config.
    """
    autocast, backward = _precision(runtime, scaler)
    with autocast():
        teacher_logits = teacher.logits(x) if teacher is not None else None
    losses = []

    def train(cfg: WidthConfig | None, target: Tensor | None) -> Tensor:
        sn.set_active(cfg, "left")
        with autocast():
            logits = sn(x)
            label_loss = criterion(logits, y)
            if target is None:
                loss = label_loss
            elif teacher is None:
                loss = soft_cross_entropy(logits, F.softmax(_upcast(target), dim=1))
            else:
                loss = teacher.loss(logits, label_loss, target)
        backward(loss)
        losses.append(_upcast(label_loss.detach()))
        return logits.detach()

    try:
        if inplace:
            teacher_logits = train(None, teacher_logits)
        for cfg in cfgs:
            train(cfg, teacher_logits)
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
