"""A parameter or buffer that a module's forward uses directly on the channels (ConvNeXt's
``layer_scale * x`` with a ``(C, 1, 1)`` parameter; an input's per-channel constants).

Tracing finds it as a ``get_attr`` operand of an add or a multiply whose size along the
other operand's channels (under broadcasting) is the channel count; it is not a module, so
no ``register_layer`` finds it: tracing asks this handler for it directly. Its record's
``module`` is the owner, ``attribute`` the tensor's name there and ``in_dim`` the tensor's
dimension that holds the channels. While a width config is active the owner's forward reads
the tensor's slice along that dimension (the owner's output itself is left alone), and
extraction keeps the same slice. A parameter adds its entries per channel to the parameter
count; it costs no MACs (``FlopCounterMode`` counts none for elementwise ops).
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
    replace_param,
    swap,
)

__all__ = ["ATTRIBUTE", "AttributeHandler"]


def _store(module: nn.Module, name: str) -> dict[str, Any]:
    return module._parameters if name in module._parameters else module._buffers


class AttributeHandler(LayerHandler):
    kind = "attribute"
    label = "per-channel parameter"
    owns_output = False

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        name = step.name.rpartition(".")[2]
        where = f"{step.where}: its operand {step.name!r}"
        if name not in module._parameters and name not in module._buffers:
            raise UnsupportedModelError(
                f"{where} is a value per channel but no parameter or buffer of the model; "
                "the supernet cannot slice it"
            )
        if step.in_factor != 1:
            raise UnsupportedModelError(f"{where} scales flattened features")
        return step.existing or SlimLayer(
            step.name,
            module,
            self,
            step.in_spaces,
            step.in_spaces,
            in_dim=step.in_dim,
            out_dim=step.in_dim,
            attribute=name,
        )

    def run_widths(self, layer: SlimLayer, w_in: int, w_out: int) -> tuple[int, int]:
        return w_in, w_out  # a tensor may keep zero channels

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        store = _store(module, layer.attribute)
        tensor, kept = store[layer.attribute], at.out_span()
        if isinstance(kept, slice):
            value = tensor.narrow(layer.in_dim, kept.start, kept.stop - kept.start)
        else:
            value = tensor.index_select(layer.in_dim, kept.to(tensor.device))
        saved: dict[Any, Any] = {}
        swap(store, saved, layer.attribute, value)
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        name = layer.attribute
        kept = getattr(module, name).index_select(layer.in_dim, out_idx)
        if name in module._parameters:
            replace_param(module, name, kept)
        else:
            module._buffers[name] = kept.clone()

    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        if layer.attribute in layer.module._parameters:
            tensor = layer.module._parameters[layer.attribute]
            params.add(tensor.numel() // tensor.shape[layer.in_dim], out_g)

    def importance(self, layer: SlimLayer) -> ChannelEvidence | None:
        tensor = layer.module._parameters.get(layer.attribute)
        if tensor is None:
            return None
        return ChannelEvidence(GAMMA, tensor.detach().abs().movedim(layer.in_dim, 0))


ATTRIBUTE = AttributeHandler()
