"""What the handlers of weighted layers (conv, linear) share.

Such a layer has a ``weight`` with its output channels first and an optional ``bias`` with
one entry per output channel: however a kind slices its weight's input side, the bias
follows the output channels, and the weight's rows are its channels' L1 evidence.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import L1, ChannelEvidence, LayerHandler, SlimLayer, replace_param, swap

__all__ = ["WeightedHandler"]


class WeightedHandler(LayerHandler):
    """A :class:`LayerHandler` for a layer with ``weight`` (output channels first) and an
    optional ``bias``; subclasses slice the weight and call the helpers below."""

    def swap_weight_and_bias(
        self,
        module: nn.Module,
        saved: dict[Any, Any],
        weight: torch.Tensor,
        out_span: slice | torch.Tensor,
    ) -> None:
        """For one call (:meth:`LayerHandler.view`): the sliced ``weight``, and the bias of
        the output channels ``out_span`` keeps."""
        swap(module._parameters, saved, "weight", weight)
        swap(module._parameters, saved, "bias", out_span)

    def replace_weight_and_bias(
        self, module: nn.Module, weight: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        """For good (:meth:`LayerHandler.slice`): the sliced ``weight``, and the bias of the
        output channels ``out_idx``."""
        replace_param(module, "weight", weight)
        if module.bias is not None:
            replace_param(module, "bias", module.bias.index_select(0, out_idx))

    def importance(self, layer: SlimLayer) -> ChannelEvidence:
        return ChannelEvidence(L1, layer.module.weight.detach().abs())
