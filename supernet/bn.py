"""BN recalibration: the running statistics a subnet needs at inference.

Slimmed channels see different input statistics than in the full network, so a subnet's
score is only meaningful after recalibration (AutoSlim, BCNet): reset running stats, use a
cumulative average (``momentum=None``), forward calibration batches in train mode without
gradients, then return to eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["bn_layers", "recalibrate_bn"]

_BN = nn.modules.batchnorm._BatchNorm


def bn_layers(model: nn.Module) -> list[_BN]:
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]],
    *,
    cfg: Mapping[str, int] | None = None,
    side: str = "left",
    num_batches: int | None = None,
) -> nn.Module:
    """Recompute BN running stats of ``model`` (a Supernet with ``cfg`` active, or any model).

    Only the active channels' statistics change (the supernet slices running stats as views),
    so recalibrating one subnet leaves the other channels' stats as they were.

    Args:
        model: A :class:`Supernet` or a plain model.
        batches: An iterable of inputs, or of ``(inputs, targets)`` pairs (a DataLoader).
        cfg: Width config to activate on a Supernet (``None``: as currently set).
        side: Which side of ``cfg``.
        num_batches: Stop after this many batches.

    Returns:
        ``model``, in eval mode.
    """
    from .supernet import Supernet  # local: bn.py must stay importable on its own

    layers = bn_layers(model)
    saved_momentum = [m.momentum for m in layers]
    device = next(model.parameters()).device
    ctx = model.active(cfg, side) if isinstance(model, Supernet) and cfg is not None else None
    try:
        if ctx is not None:
            ctx.__enter__()
        for m in layers:
            m.momentum = None
        model.train()
        # reset inside the active subnet: only its channels' stats are zeroed
        if isinstance(model, Supernet):
            _reset_active_stats(model, layers)
        else:
            for m in layers:
                m.reset_running_stats()
        for i, batch in enumerate(batches):
            if num_batches is not None and i >= num_batches:
                break
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(inputs.to(device))
    finally:
        for m, momentum in zip(layers, saved_momentum, strict=True):
            m.momentum = momentum
        model.eval()
        if ctx is not None:
            ctx.__exit__(None, None, None)
    return model


def _reset_active_stats(supernet: nn.Module, layers: list[_BN]) -> None:
    """Zero mean / unit var on the active slice of every BN, and the batch counters."""
    spans = supernet.active_spans()
    for m in layers:
        span = spans.get(id(m), slice(None))
        m.running_mean[span] = 0.0
        m.running_var[span] = 1.0
        m.num_batches_tracked.zero_()
