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
from .base import CallWidths, SlimLayer, TraceStep, register_layer
from .normaliser import NormaliserHandler

__all__ = ["LayerNormHandler"]


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
class LayerNormHandler(NormaliserHandler):
    kind = "ln"
    label = "LayerNorm"

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        shape, dim = step.in_shape, step.in_dim
        if not step.existing and (
            step.in_factor != 1
            or shape is None
            or tuple(module.normalized_shape) != (shape[dim],)
            or not _normalises_channels(module, shape, dim)
        ):
            raise UnsupportedModelError(
                f"{step.where}: layer norm over other dimensions than the channels alone"
            )
        return self.same_channels(module, step)

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        saved: dict[Any, Any] = {"normalized_shape": module.normalized_shape}
        module.normalized_shape = (at.w_out,)
        self.swap_affine(module, saved, at.out_span())
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        module.normalized_shape = (len(out_idx),)
        self.replace_affine(module, out_idx)
