"""``nn.Conv2d``: dense, grouped and depthwise convolutions.

A dense conv opens a new channel space for its output (its input may be a concatenation of
several). A depthwise conv, or a grouped one with equal input and output widths, passes its
input's spaces through (channel block ``j`` in maps to block ``j`` out) and needs whole conv
groups: the group's widths become multiples of its conv-group width, and extraction keeps
``groups = width / group width``.
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

__all__ = ["ConvHandler"]


@register_layer(nn.Conv2d)
class ConvHandler(WeightedHandler):
    kind = "conv"
    label = "Conv2d"

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        if step.in_factor != 1 or step.in_dim != 1:
            what = "flattened features" if step.in_factor != 1 else "channels-last tensor"
            raise UnsupportedModelError(f"{step.where}: conv on a {what}")
        cin, cout, groups = module.in_channels, module.out_channels, module.groups
        if groups == 1:
            return step.existing or SlimLayer(
                step.name, module, self, step.in_spaces, (step.spaces.new(cout, step.name),)
            )
        if cin != cout:
            raise UnsupportedModelError(
                f"{step.where}: grouped conv with {cin} -> {cout} channels in {groups} groups "
                "(only depthwise or equal in/out grouped convs can be slimmed)"
            )
        group_width = cin // groups
        if group_width > 1 and len(step.in_spaces) > 1:
            raise UnsupportedModelError(
                f"{step.where}: grouped conv over a concatenation (only depthwise convs can "
                "read one)"
            )
        # depthwise (group width 1) or grouped with equal in/out widths
        layer = step.existing or SlimLayer(
            step.name, module, self, step.in_spaces, step.in_spaces, group_width=group_width
        )
        for root in step.spaces.unite(layer.out_spaces, step.in_spaces, step.where):
            step.spaces.require_multiple(root, group_width)
        return layer

    def call(self, step: TraceStep) -> LayerCall:
        return LayerCall(positions=step.out_shape[2] * step.out_shape[3])

    def run_widths(self, layer: SlimLayer, w_in: int, w_out: int) -> tuple[int, int]:
        if layer.group_width and w_out == 0:  # the narrowest grouped conv: one conv group
            return layer.group_width, layer.group_width
        return w_in or 1, w_out or 1

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        saved: dict[Any, Any] = {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "groups": module.groups,
        }
        out_span = at.out_span()
        weight = module._parameters["weight"][out_span]
        if layer.group_width:
            module.groups = at.w_out // layer.group_width
        else:
            weight = weight[:, at.in_span()]
        module.in_channels, module.out_channels = at.w_in, at.w_out
        self.swap_weight_and_bias(module, saved, weight, out_span)
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        weight = module.weight.index_select(0, out_idx)
        if layer.group_width:
            module.groups = len(out_idx) // layer.group_width
            module.in_channels = len(out_idx)
        else:
            weight = weight.index_select(1, in_idx)
            module.in_channels = len(in_idx)
        module.out_channels = len(out_idx)
        self.replace_weight_and_bias(module, weight, out_idx)

    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        module = layer.module
        kernel = math.prod(module.kernel_size)
        if layer.group_width:  # grouped/depthwise: in-channels per group are fixed
            for call in layer.calls:
                macs.add(kernel * call.positions * layer.group_width, out_g)
            params.add(kernel * layer.group_width, out_g)
        else:
            for call in layer.calls:
                macs.add(kernel * call.positions, out_g, in_g)
            params.add(kernel, out_g, in_g)
        params.add(int(module.bias is not None), out_g)
