"""Layer norm over the channels (every ``nn.LayerNorm``, torchvision's and timm's
``LayerNorm2d`` included): a normaliser.

It reads and writes the same channels, wherever they lie: on the last dimension of a
channels-last tensor (ConvNeXt's blocks) or on dimension 1 for a ``LayerNorm2d``, which
permutes inside its own forward. Which dimension a module normalises is not assumed from its
class but checked once when tracing, on the example's shape: its output must equal
``layer_norm`` over the channel dimension alone. A width config then normalises over the
active channels with their slices of weight and bias, which is exactly what the extracted
smaller layer norm (``normalized_shape`` set to the width) computes. It costs no MACs
(``FlopCounterMode`` counts none for it) and two parameters per channel when affine.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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

__all__ = ["LayerNormHandler"]

_AFFINE = ("weight", "bias")


def _normalises_channels(module: nn.Module, shape: tuple[int, ...], dim: int) -> bool:
    """Whether ``module`` computes layer norm over dimension ``dim`` alone of an input of
    ``shape`` (a random one, so no other dimension's statistics can pass for it)."""
    like = next(module.parameters(), torch.empty(0))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)
    try:
        with torch.no_grad():
            got = module(x)
            expected = F.layer_norm(
                x.movedim(dim, -1), (shape[dim],), module.weight, module.bias, module.eps
            ).movedim(-1, dim)
    except (RuntimeError, ValueError, TypeError):
        return False
    return got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)


@register_layer(nn.LayerNorm)
class LayerNormHandler(LayerHandler):
    kind = "ln"
    label = "LayerNorm"
    normaliser = True

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        if step.existing:
            return step.existing
        shape, dim = step.in_shape, step.in_dim
        if (
            step.in_factor != 1
            or shape is None
            or tuple(module.normalized_shape) != (shape[dim],)
            or not _normalises_channels(module, shape, dim)
        ):
            raise UnsupportedModelError(
                f"{step.where}: layer norm over other dimensions than the channels alone"
            )
        return SlimLayer(
            step.name, module, self, step.in_spaces, step.in_spaces, source=step.source
        )

    def run_widths(self, layer: SlimLayer, w_in: int, w_out: int) -> tuple[int, int]:
        return (1, 1) if w_out == 0 else (w_in, w_out)

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        saved: dict[Any, Any] = {"normalized_shape": module.normalized_shape}
        module.normalized_shape = (at.w_out,)
        kept = at.out_span()
        for name in _AFFINE:
            swap(module._parameters, saved, name, kept)
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        module.normalized_shape = (len(out_idx),)
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
