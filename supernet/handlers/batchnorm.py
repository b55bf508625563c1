"""Batch norm (every ``_BatchNorm``, timm's ``BatchNormAct2d`` included): a normaliser.

Besides the affine weight and bias (:class:`~.normaliser.NormaliserHandler`), its running
statistics are sliced with the channels. At width 0 it runs on one channel in eval mode (no
statistics from the stand-in input) and its output is discarded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .base import CallWidths, SlimLayer, TraceStep, register_layer, swap
from .normaliser import NormaliserHandler

__all__ = ["BatchNormHandler"]

_STATS = ("running_mean", "running_var")


@register_layer(nn.modules.batchnorm._BatchNorm)
class BatchNormHandler(NormaliserHandler):
    kind = "bn"
    label = "BatchNorm"

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        if step.in_factor != 1 or step.in_dim != 1:
            what = "flattened features" if step.in_factor != 1 else "a channels-last tensor"
            raise UnsupportedModelError(f"{step.where}: batch norm on {what}")
        return self.same_channels(module, step)

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        saved: dict[Any, Any] = {"num_features": module.num_features, "training": module.training}
        module.num_features = at.w_out
        module.training = module.training and not at.empty  # no stats from fake inputs
        out_span = at.out_span()
        self.swap_affine(module, saved, out_span)
        for name in _STATS:
            swap(module._buffers, saved, name, out_span)
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        module.num_features = len(out_idx)
        self.replace_affine(module, out_idx)
        for name in _STATS:
            if getattr(module, name, None) is not None:
                setattr(module, name, getattr(module, name).index_select(0, out_idx).clone())
