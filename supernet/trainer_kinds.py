"""Trainer kinds: which widths one training step trains, and how (``bcnet``, ``sandwich``,
``budgets``, ``plain``).

A kind is one class registered by name with :func:`register_trainer`, as search strategies
are: it builds its width sampler from the recipe's ``[train]`` section, runs the backward
passes of a step (:mod:`widthsearch.supernet.steps`) and says which widths the per-epoch
evaluation reports and which BCNet sides its subnets live on (search scores only those).
:class:`~widthsearch.supernet.trainer.SupernetTrainer` owns everything around the step
(optimiser, schedule, data order, gradient averaging, records).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .runtime import Runtime
from .sampling import BudgetSampler, FairSampler, SandwichSampler
from .space import WidthConfig, WidthSpace
from .steps import Teacher, bcnet_step, budgets_step, sandwich_step
from .supernet import SIDES, Supernet

__all__ = [
    "BCNet",
    "Budgets",
    "Plain",
    "Sandwich",
    "StepContext",
    "StepLosses",
    "TrainerKind",
    "get_trainer",
    "list_trainers",
    "register_trainer",
]


@dataclass(frozen=True)
class StepContext:
    """What every step needs besides the batch: the loss, the teacher and the precision."""

    criterion: nn.Module
    distill: bool = False
    teacher: Teacher | None = None
    runtime: Runtime | None = None
    scaler: torch.amp.GradScaler | None = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments every step function takes: label loss and precision."""
        return {"criterion": self.criterion, "runtime": self.runtime, "scaler": self.scaler}


@dataclass(frozen=True)
class StepLosses:
    """One step's losses: a name and the trained config for each (for logs and records)."""

    names: list[str]
    configs: list[WidthConfig]
    losses: Tensor  # one value per name, detached


class TrainerKind:
    """Base class of trainer kinds: plans and runs the backward passes of one step.

    Args:
        space: The supernet's width space.
        train: The recipe's ``[train]`` section (or an object with its attributes).
        macs: MACs of a width config (the supernet's cost model), for kinds that need it.
    """

    name: ClassVar[str] = ""
    sides: ClassVar[tuple[str, ...]] = SIDES  # the BCNet sides its subnets are trained on

    def __init__(
        self, space: WidthSpace, train: Any, *, macs: Callable[[WidthConfig], float] | None = None
    ) -> None:
        self.space = space
        self.train = train
        self.macs = macs

    def step(self, sn: Supernet, x: Tensor, y: Tensor, index: int, ctx: StepContext) -> StepLosses:
        """Backward passes of optimiser step ``index`` (gradients accumulate, no update)."""
        raise NotImplementedError

    def eval_configs(self) -> dict[str, WidthConfig]:
        """Widths the per-epoch held-out evaluation reports (after BN recalibration)."""
        return {"top1_max": self.space.max(), "top1_min": self.space.min()}


_KINDS: dict[str, type[TrainerKind]] = {}


def register_trainer(name: str) -> Callable[[type[TrainerKind]], type[TrainerKind]]:
    """Class decorator: make a :class:`TrainerKind` available as ``[train].trainer = name``."""

    def wrap(cls: type[TrainerKind]) -> type[TrainerKind]:
        if name in _KINDS:
            raise ValueError(f"trainer {name!r} is already registered")
        cls.name = name
        _KINDS[name] = cls
        return cls

    return wrap


def list_trainers() -> tuple[str, ...]:
    return tuple(_KINDS)


def get_trainer(name: str) -> type[TrainerKind]:
    """The registered trainer kind ``name``, or a ``ValueError`` listing the valid ones."""
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"trainer must be one of {', '.join(_KINDS)}, got {name!r}") from None


def _bcnet_losses(
    sn: Supernet, x: Tensor, y: Tensor, cfg: WidthConfig | None, ctx: StepContext
) -> StepLosses:
    out = bcnet_step(sn, x, y, cfg, distill=ctx.distill, teacher=ctx.teacher, **ctx.options())
    trained = cfg if cfg is not None else sn.space.max()
    return StepLosses(list(out), [trained] * len(out), torch.stack(list(out.values())))


@register_trainer("bcnet")
class BCNet(TrainerKind):
    """Bilateral coupling: each step trains a config on both sides (first and last channels);
    complementary configs and periodic full-width steps make every channel equally trained."""

    def __init__(self, space: WidthSpace, train: Any, **kwargs: Any) -> None:
        super().__init__(space, train, **kwargs)
        self.sampler = FairSampler(
            space,
            seed=train.seed,
            full_every=train.full_every,
            coverage=getattr(train, "coverage", "levels"),
            spread=getattr(train, "level_spread", 1),
        )

    def step(self, sn: Supernet, x: Tensor, y: Tensor, index: int, ctx: StepContext) -> StepLosses:
        return _bcnet_losses(sn, x, y, self.sampler.plan(index).cfg, ctx)


@register_trainer("sandwich")
class Sandwich(TrainerKind):
    """The sandwich rule: max width with labels, min and random widths (left-aligned)
    distilled from it."""

    sides = ("left",)

    def __init__(self, space: WidthSpace, train: Any, **kwargs: Any) -> None:
        super().__init__(space, train, **kwargs)
        self.sampler = SandwichSampler(space, seed=train.seed, n_random=train.sandwich_random)

    def step(self, sn: Supernet, x: Tensor, y: Tensor, index: int, ctx: StepContext) -> StepLosses:
        cfgs = self.sampler.plan(index)
        losses = sandwich_step(sn, x, y, cfgs, **ctx.options())
        names = ["max", "min"] + ["random"] * (len(cfgs) - 2)
        return StepLosses(names, list(cfgs), torch.stack(losses))


@register_trainer("budgets")
class Budgets(TrainerKind):
    """Slimmable training of the requested budgets: every step trains one subnet near each
    ``[train].budgets`` MACs fraction (left side), distilled from the trained network, or
    with ``[train].distill`` from the full width trained alongside (in-place distillation)."""

    sides = ("left",)

    def __init__(self, space: WidthSpace, train: Any, **kwargs: Any) -> None:
        super().__init__(space, train, **kwargs)
        if self.macs is None:
            raise ValueError("the budgets trainer needs the supernet's MACs")
        self.sampler = BudgetSampler(
            space,
            macs=self.macs,
            budgets=list(getattr(train, "budgets", [])),
            seed=train.seed,
            spread=getattr(train, "level_spread", 1),
            window=getattr(train, "budget_window", 0.9),
        )
        self.names = [f"b{round(100 * f)}" for f in self.sampler.fractions]  # loss/eval keys

    def step(self, sn: Supernet, x: Tensor, y: Tensor, index: int, ctx: StepContext) -> StepLosses:
        cfgs = list(self.sampler.plan(index))
        losses = budgets_step(
            sn, x, y, cfgs, teacher=ctx.teacher, inplace=ctx.distill, **ctx.options()
        )
        if ctx.distill:  # the full width trained first
            return StepLosses(["max", *self.names], [self.space.max(), *cfgs], torch.stack(losses))
        return StepLosses(self.names, cfgs, torch.stack(losses))

    def eval_configs(self) -> dict[str, WidthConfig]:
        levels = {
            f"top1_{name}": level
            for name, level in zip(self.names, self.sampler.levels, strict=True)
        }
        return (
            {**levels, "top1_max": self.space.max()}
            if getattr(self.train, "distill", False)
            else levels
        )


@register_trainer("plain")
class Plain(TrainerKind):
    """Full width only: pretraining the network a supernet starts from."""

    sides = ("left",)

    def step(self, sn: Supernet, x: Tensor, y: Tensor, index: int, ctx: StepContext) -> StepLosses:
        return _bcnet_losses(sn, x, y, None, ctx)

    def eval_configs(self) -> dict[str, WidthConfig]:
        return {}  # the network's own running statistics: see SupernetTrainer.evaluate
