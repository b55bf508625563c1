"""Multi-head self-attention: timm's ``Attention`` (ViT, DeiT and their relatives), whose
heads are a channel space of their own, and torch's ``nn.MultiheadAttention`` (transformers
built from torch's modules), whose heads follow its embedding width.

**timm's Attention.**
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

**nn.MultiheadAttention** computes with as many features as its query has channels
(``embed_dim``), so its heads cannot be removed alone: ``embed_dim`` features of each of q, k
and v are the input's channels, and a width of ``w`` input channels keeps ``w / head_dim``
whole heads (the width is a multiple of ``head_dim``, and reordering moves whole heads).
The extracted module has ``embed_dim = w`` and ``w / head_dim`` heads; ``out_proj`` is sliced
inside it (torch calls its weights, not the module). Only self-attention on a single input
(``mha(x, x, x)``) with packed projections, without ``bias_k``/``bias_v`` or a zero attention
is sliced. Its output is the first element of the tuple it returns.
"""

from __future__ import annotations

import math
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
    register_layer,
    replace_param,
    span,
    swap,
)

__all__ = ["AttentionHandler", "MultiheadAttentionHandler"]

try:
    from timm.models.vision_transformer import Attention as _TimmAttention
except ImportError:  # pragma: no cover - timm is a dependency; stay importable without it
    _TimmAttention = None


def _qkv_rows(kept: torch.Tensor, full: int, features: int = 1) -> torch.Tensor:
    """The rows of a packed q/k/v projection (``3 x full x features``) that hold the units
    ``kept`` (heads, or channels with ``features = 1``) in each of q, k and v, in order."""
    sections = torch.arange(3, device=kept.device)[:, None] * full + kept[None, :]
    runs = torch.arange(features, device=kept.device)
    return (sections.reshape(-1, 1) * features + runs).reshape(-1)


def _kept(full: int, width: int, side: str, device: torch.device) -> torch.Tensor:
    """BCNet's units of a width on ``side``, as an index tensor."""
    kept = span(full, width, side)
    return torch.arange(kept.start, kept.stop, device=device)


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
        kept = _kept(at.out_full, heads, at.side, module.qkv.weight.device)
        rows = _qkv_rows(kept, at.out_full, head_dim)
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


@register_layer(nn.MultiheadAttention)
class MultiheadAttentionHandler(LayerHandler):
    kind = "mha"
    label = "MultiheadAttention"

    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        shape = step.in_shape or ()
        problem = (
            "separate q, k and v projections"
            if not module._qkv_same_embed_dim
            else "bias_k, bias_v or add_zero_attn"
            if module.bias_k is not None or module.add_zero_attn
            else "an input of several channel groups or not (N, tokens, channels)"
            if len(shape) != 3
            or step.in_dim != 2
            or step.in_factor != 1
            or len(step.in_spaces) != 1
            else ""
        )
        if problem:
            raise UnsupportedModelError(f"{step.where}: multi-head attention with {problem}")
        layer = step.existing or SlimLayer(
            step.name, module, self, step.in_spaces, (step.spaces.new(module.embed_dim, step.name),)
        )
        # whole heads: the query's channels are the heads' features
        (root,) = step.spaces.unite(layer.in_spaces, step.in_spaces, step.where)
        step.spaces.require_multiple(root, module.head_dim)
        return layer

    def call(self, step: TraceStep) -> LayerCall:
        return LayerCall(positions=math.prod((step.in_shape or (0, 0))[:-1]) // step.batch)

    def out_dim(self, step: TraceStep) -> int:
        return 2

    def run_widths(self, layer: SlimLayer, w_in: int, w_out: int) -> tuple[int, int]:
        return w_in or layer.module.head_dim, w_out or 1

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        width, in_span, out_span = at.w_in, at.in_span(), at.out_span()
        device = module._parameters["in_proj_weight"].device
        rows = _qkv_rows(_kept(at.in_full, width, at.side, device), at.in_full)
        saved: dict[Any, Any] = {
            name: getattr(module, name) for name in ("embed_dim", "num_heads", "kdim", "vdim")
        }
        params, out_proj = module._parameters, module.out_proj._parameters
        swap(params, saved, "in_proj_weight", params["in_proj_weight"][rows][:, in_span])
        if params.get("in_proj_bias") is not None:
            swap(params, saved, "in_proj_bias", params["in_proj_bias"][rows])
        swap(out_proj, saved, "weight", out_proj["weight"][out_span][:, in_span])
        swap(out_proj, saved, "bias", out_span)
        module.embed_dim = module.kdim = module.vdim = width
        module.num_heads = width // module.head_dim
        return saved

    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        rows = _qkv_rows(in_idx, module.embed_dim)
        weight = module.in_proj_weight.index_select(0, rows).index_select(1, in_idx)
        replace_param(module, "in_proj_weight", weight)
        if module.in_proj_bias is not None:
            replace_param(module, "in_proj_bias", module.in_proj_bias.index_select(0, rows))
        out_proj = module.out_proj
        replace_param(out_proj, "weight", out_proj.weight.index_select(0, out_idx)[:, in_idx])
        if out_proj.bias is not None:
            replace_param(out_proj, "bias", out_proj.bias.index_select(0, out_idx))
        out_proj.in_features, out_proj.out_features = len(in_idx), len(out_idx)
        module.embed_dim = module.kdim = module.vdim = len(in_idx)
        module.num_heads = len(in_idx) // module.head_dim

    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        module = layer.module
        for call in layer.calls:
            macs.add(3 * call.positions, in_g, in_g)  # q, k and v of every token
            macs.add(2 * call.positions**2, in_g)  # q k^T and attn v: tokens^2 per feature
            macs.add(call.positions, out_g, in_g)  # out_proj
        params.add(3, in_g, in_g)
        params.add(3 * int(module.in_proj_bias is not None), in_g)
        params.add(1, out_g, in_g)
        params.add(int(module.out_proj.bias is not None), out_g)

    def importance(self, layer: SlimLayer) -> ChannelEvidence:
        return ChannelEvidence(L1, layer.module.out_proj.weight.detach().abs())
