"""The same batches and learning rates on every run: each epoch's data order and seeding,
and the warm-up + cosine schedule (the pieces of :mod:`widthsearch.supernet.loop` a resumed
run depends on).

Each epoch's data order, augmentation stream and global RNG are functions of
``(seed, epoch, rank)``, and the schedule is a function of the optimiser step, so a resumed
run (at the same or another world size) sees the same batches and learning rates as an
uninterrupted one.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .data import make_loader
from .runtime import Runtime
from .sampling import step_rng

__all__ = ["cosine_schedule", "epoch_loader", "epoch_seed", "resume_schedule"]


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


# ---- schedule ------------------------------------------------------------------------------


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
