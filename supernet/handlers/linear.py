"""``nn.Linear``: opens a new channel space for its outputs (its input may be a
concatenation of several).

On ``(N, features)``, after a flatten of ``(N, C, H, W)`` maps, each input channel is
``in_factor = H * W`` consecutive features, so slicing keeps whole runs of ``in_factor``
columns; attention's output projection reads ``head_dim`` features per head the same way.
On a channels-last tensor ``(N, ..., C)`` (ConvNeXt's blocks, a ViT's tokens) it is a
pointwise conv: one call per position, its output's channels on the last dimension too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .base import (
    CallWidths,
    CostTerms,
    LayerCall,
    Layout,
    SlimLayer,
    TraceStep,
    register_layer,
)
from .weighted import WeightedHandler

__all__ = ["LinearHandler"]


@register_layer(nn.Linear)
class LinearHandler(WeightedHandler):
    kind = "linear"
    label = "Linear"

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        # the channel dimension must be the last one, features = channels * in_factor
        dims = len(step.in_shape or ())
        if dims < 2 or step.in_dim != dims - 1:
            raise UnsupportedModelError(
                f"{step.where}: linear layer on a {dims}-d tensor whose last dimension is not "
                "its channels (expected (N, features) or channels-last (N, ..., C))"
            )
        if step.existing:
            return step.existing
        out = step.spaces.new(module.out_features, step.name)
        return SlimLayer(step.name, module, self, step.in_spaces, (out,), in_factor=step.in_factor)

    def call(self, step: TraceStep) -> LayerCall:
        return LayerCall(positions=math.prod(step.out_shape[:-1]) // step.batch)

    def out_dim(self, step: TraceStep) -> int:
        return len(step.out_shape) - 1

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        saved: dict[Any, Any] = {
            "in_features": module.in_features,
            "out_features": module.out_features,
        }
        out_span = at.out_span()
        weight = module._parameters["weight"][out_span][:, at.in_span(layer.in_factor)]
        self.swap_weight_and_bias(module, saved, weight, out_span)
        module.in_features, module.out_features = at.w_in * layer.in_factor, at.w_out
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        factor = layer.in_factor
        runs = torch.arange(factor, device=in_idx.device)
        features = (in_idx[:, None] * factor + runs[None, :]).reshape(-1)
        weight = module.weight.index_select(0, out_idx).index_select(1, features)
        self.replace_weight_and_bias(module, weight, out_idx)
        module.in_features, module.out_features = len(features), len(out_idx)

    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        for call in layer.calls:
            macs.add(call.positions * layer.in_factor, out_g, in_g)
        params.add(layer.in_factor, out_g, in_g)
        params.add(int(layer.module.bias is not None), out_g)
