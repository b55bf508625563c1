"""Batch norm (every ``_BatchNorm``, timm's ``BatchNormAct2d`` included): a normaliser.

It reads and writes the same channels, so it passes its input's spaces through (several
when it normalises a concatenation, as in DenseNet); its weight, bias and running statistics
are sliced with the channels. At width 0 it runs on one channel
in eval mode (no statistics from the stand-in input) and its output is discarded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .base import (
    GAMMA,
    CallWidths,
    ChannelEvidence,
    CostTerms,
    LayerHandler,
    Layout,
    SlimLayer,
    TraceStep,
    register_layer,
    replace_param,
    swap,
)

__all__ = ["BatchNormHandler"]

_PARAMS = ("weight", "bias")
_STATS = ("running_mean", "running_var")


@register_layer(nn.modules.batchnorm._BatchNorm)
class BatchNormHandler(LayerHandler):
    kind = "bn"
    label = "BatchNorm"
    normaliser = True

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        if step.in_factor != 1 or step.in_dim != 1:
            what = "flattened features" if step.in_factor != 1 else "a channels-last tensor"
            raise UnsupportedModelError(f"{step.where}: batch norm on {what}")
        return step.existing or SlimLayer(
            step.name, module, self, step.in_spaces, step.in_spaces, source=step.source
        )

    def run_widths(self, layer: SlimLayer, w_in: int, w_out: int) -> tuple[int, int]:
        return (1, 1) if w_out == 0 else (w_in, w_out)

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        saved: dict[Any, Any] = {"num_features": module.num_features, "training": module.training}
        module.num_features = at.w_out
        module.training = module.training and not at.empty  # no stats from fake inputs
        out_span = at.out_span()
        for name in _PARAMS:
            swap(module._parameters, saved, name, out_span)
        for name in _STATS:
            swap(module._buffers, saved, name, out_span)
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        module.num_features = len(out_idx)
        for name in _PARAMS:
            if getattr(module, name, None) is not None:
                replace_param(module, name, getattr(module, name).index_select(0, out_idx))
        for name in _STATS:
            if getattr(module, name, None) is not None:
                setattr(module, name, getattr(module, name).index_select(0, out_idx).clone())

    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        params.add(2 * int(layer.module.affine), out_g)  # weight and bias when affine

    def importance(self, layer: SlimLayer) -> ChannelEvidence | None:
        weight = getattr(layer.module, "weight", None)
        return None if weight is None else ChannelEvidence(GAMMA, weight.detach().abs())
