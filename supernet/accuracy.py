"""Top-1 accuracy: of any model over batches, and of one subnet after BN recalibration.

:func:`top1` is the one counting loop (the evaluate stage scores extracted subnets with it);
:func:`subnet_top1` scores a width config of a supernet and leaves the supernet's training
state as it was (:func:`preserved_state`), so evaluating during training keeps resume exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .bn import recalibrate_bn
from .runtime import Runtime
from .supernet import Supernet

__all__ = ["preserved_state", "subnet_top1", "top1"]


@torch.no_grad()
def top1(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    runtime: Runtime | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``(images, labels)`` batches.

    Batches go to the model's device; the count stays there until the end (one
    synchronisation, not one per batch). ``runtime`` adds its mixed precision and layout;
    ``transform`` is applied to every input batch on the device (e.g. resizing).
    """
    model.eval()
    runtime = runtime or Runtime(device=next(model.parameters()).device)
    correct = torch.zeros((), dtype=torch.int64, device=runtime.device)
    total = 0
    for x, y in batches:
        x = runtime.batch(x)
        with runtime.autocast():
            logits = model(transform(x) if transform is not None else x)
        correct += (logits.argmax(1) == y.to(runtime.device, non_blocking=True)).sum()
        total += len(y)
    return int(correct) / total if total else 0.0


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
    transform: Callable[[Tensor], Tensor] | None = None,
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
    prep = transform or (lambda t: t)
    with preserved_state(sn):
        if calib_batches is not None:
            recalibrate_bn(sn, (prep(b[0]) for b in calib_batches), cfg=cfg, side=side)
        with sn.active(cfg, side):
            return top1(sn, eval_batches, transform=transform)
