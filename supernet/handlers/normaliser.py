"""What the handlers of normalisers (batch norm, layer norm) share.

A normaliser reads and writes the same channels, so it passes its input's spaces through
(several when it normalises a concatenation, as in DenseNet); its optional affine weight and
bias are sliced with the channels and are its channels' evidence (``|gamma|``). At width 0
it runs on one channel and its output is discarded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .base import GAMMA, ChannelEvidence, LayerHandler, SlimLayer, replace_param, swap

if TYPE_CHECKING:  # annotations only
    from .base import CostTerms, Layout, TraceStep

__all__ = ["NormaliserHandler"]

_AFFINE = ("weight", "bias")


class NormaliserHandler(LayerHandler):
    """A :class:`LayerHandler` for a layer that rescales each of its input channels;
    subclasses check the call, resize the module and call the helpers below."""

    normaliser = True

    def same_channels(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        """The record of a call that writes the channels it reads."""
        return step.existing or SlimLayer(
            step.name, module, self, step.in_spaces, step.in_spaces, source=step.source
        )

    def run_widths(self, layer: SlimLayer, w_in: int, w_out: int) -> tuple[int, int]:
        return (1, 1) if w_out == 0 else (w_in, w_out)

    def swap_affine(
        self, module: nn.Module, saved: dict[Any, Any], kept: slice | torch.Tensor
    ) -> None:
        """For one call (:meth:`LayerHandler.view`): the weight and bias of the kept channels."""
        for name in _AFFINE:
            swap(module._parameters, saved, name, kept)

    def replace_affine(self, module: nn.Module, out_idx: torch.Tensor) -> None:
        """For good (:meth:`LayerHandler.slice`): the weight and bias of ``out_idx``."""
        for name in _AFFINE:
            if getattr(module, name, None) is not None:
                replace_param(module, name, getattr(module, name).index_select(0, out_idx))

    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        params.add(sum(getattr(layer.module, name, None) is not None for name in _AFFINE), out_g)

    def importance(self, layer: SlimLayer) -> ChannelEvidence | None:
        weight = getattr(layer.module, "weight", None)
        return None if weight is None else ChannelEvidence(GAMMA, weight.detach().abs())
