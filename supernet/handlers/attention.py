"""timm's multi-head self-attention (``timm.models.vision_transformer.Attention``, used by
ViT, DeiT and their relatives): its heads are a channel space of their own.

One head is ``head_dim`` consecutive features of each of q, k and v (the rows of ``qkv``,
laid out as ``3 x num_heads x head_dim``) and the same ``head_dim`` input columns of
``proj``. A width of ``h`` heads keeps whole heads: ``qkv`` keeps their rows in each of its
three sections, the module computes ``h`` heads (``num_heads`` and ``attn_dim`` follow the
width, ``head_dim`` and the softmax scale do not change), and ``proj`` keeps their columns.
That is exactly what the extracted module, the same class with ``num_heads = h``, computes.

The module is one traced layer whose *output* channels are the heads (the tensor before
``proj``); ``proj`` is a linear layer of its own that reads them with ``head_dim`` features
per head (:meth:`AttentionHandler.output_layer`) and writes the module's output. The layer
costs the ``qkv`` projection and attention's two matmuls (``q k^T`` and ``attn v``:
``tokens^2 x head_dim`` each per head), which is what ``FlopCounterMode`` counts.

Variants this cannot slice exactly (a gate, a norm over the attention output, a subclass with
its own ``forward``) are refused when tracing: their channels then keep full width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .base import (
    L1,
    CallWidths,
    ChannelEvidence,
    CostTerms,
    LayerCall,
    LayerHandler,
    Layout,
    SlimLayer,
    TraceStep,
    positions,
    register_layer,
    replace_param,
    swap,
)

__all__ = ["AttentionHandler"]

try:
    from timm.models.vision_transformer import Attention as _TimmAttention
except ImportError:  # pragma: no cover - timm is a dependency; stay importable without it
    _TimmAttention = None


def _qkv_rows(heads: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """The rows of ``qkv`` (``3 x num_heads x head_dim``) that hold ``heads``, in order."""
    sections = torch.arange(3, device=heads.device)[:, None] * num_heads + heads[None, :]
    features = torch.arange(head_dim, device=heads.device)
    return (sections.reshape(-1, 1) * head_dim + features).reshape(-1)


def _extra_params(module: nn.Module) -> int:
    """Parameters of the module outside ``qkv`` and ``proj`` (q/k norms over ``head_dim``):
    the same at every number of heads."""
    sliced = {id(p) for child in (module.qkv, module.proj) for p in child.parameters()}
    return sum(p.numel() for p in module.parameters() if id(p) not in sliced)


class AttentionHandler(LayerHandler):
    kind = "attention"
    label = "multi-head attention"
    owns_output = False  # the module's output is ``proj``'s, a layer of its own

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        shape = step.in_shape or ()
        problem = (
            "its class has a forward of its own"
            if _TimmAttention is None or type(module).forward is not _TimmAttention.forward
            else "a gate on its output"
            if getattr(module, "gate", None) is not None
            else "a norm over its output"
            if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity)
            else "its input is not (N, tokens, channels) with the channels last"
            if len(shape) != 3 or step.in_dim != 2 or step.in_factor != 1
            else ""
        )
        if problem:
            raise UnsupportedModelError(f"{step.where}: attention with {problem}")
        if step.existing:
            return step.existing
        heads = step.spaces.new(module.num_heads, f"{step.name}:heads", units=True)
        return SlimLayer(step.name, module, self, step.in_spaces, (heads,))

    def call(self, step: TraceStep) -> LayerCall:
        return LayerCall(positions=(step.in_shape or (0, 0))[1])  # tokens per sample

    def out_dim(self, step: TraceStep) -> int:
        return 2

    def output_layer(self, layer: SlimLayer) -> tuple[str, int]:
        return "proj", layer.module.head_dim

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        heads, head_dim = at.w_out, module.head_dim
        # the kept heads' rows in each of q, k and v: an index tensor
        rows = positions(((at.out_full, heads),) * 3, at.side, head_dim)
        rows = torch.as_tensor(rows).to(module.qkv.weight.device)
        saved: dict[Any, Any] = {"num_heads": module.num_heads, "attn_dim": module.attn_dim}
        qkv = module.qkv._parameters
        swap(qkv, saved, "weight", qkv["weight"][rows][:, at.in_span()])
        if qkv.get("bias") is not None:
            swap(qkv, saved, "bias", qkv["bias"][rows])
        module.num_heads, module.attn_dim = heads, heads * head_dim
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        qkv = module.qkv
        rows = _qkv_rows(out_idx, module.num_heads, module.head_dim)
        replace_param(qkv, "weight", qkv.weight.index_select(0, rows).index_select(1, in_idx))
        if qkv.bias is not None:
            replace_param(qkv, "bias", qkv.bias.index_select(0, rows))
        qkv.in_features, qkv.out_features = len(in_idx), len(rows)
        module.num_heads, module.attn_dim = len(out_idx), len(out_idx) * module.head_dim

    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        module, head_dim = layer.module, layer.module.head_dim
        for call in layer.calls:
            macs.add(call.positions * 3 * head_dim, out_g, in_g)  # the qkv projection
            macs.add(2 * call.positions**2 * head_dim, out_g)  # q k^T and attn v, per head
        params.add(3 * head_dim, out_g, in_g)
        params.add(3 * head_dim * int(module.qkv.bias is not None), out_g)
        params.add(_extra_params(module), -1)

    def importance(self, layer: SlimLayer) -> ChannelEvidence:
        module = layer.module
        weight = module.qkv.weight.detach().abs()
        per_head = weight.reshape(3, module.num_heads, module.head_dim, -1).transpose(0, 1)
        return ChannelEvidence(L1, per_head)


if _TimmAttention is not None:
    register_layer(_TimmAttention)(AttentionHandler)
