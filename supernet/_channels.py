"""Where a traced tensor's channels are, and how ops that are not layers move them.

Every tracked tensor has :class:`Channels`: its *layout* (the channel spaces, union-find ids,
whose channels its channel dimension concatenates, in order; several after ``torch.cat``
along the channels), the features per channel (> 1 after a flatten of H x W maps) and which
dimension holds the channels (1 for ``(N, C, H, W)``; the last one after a permute to
channels-last, as in ConvNeXt's blocks). :func:`propagate` follows them through one op, or
refuses it with a one-line reason naming the op and its graph node: an op that mixes,
reorders or splits channels cannot be slimmed across, and the tracer then freezes the
channels it touches (:data:`~._spaces.FROZEN`, :meth:`~._spaces.Spaces.freeze`). The op
types are named here, once.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
from torch import nn

from ._spaces import Channels, Spaces
from .errors import UnsupportedModelError
from .handlers import Layout

__all__ = [
    "CONCAT",
    "JOINING",
    "SPLITTING",
    "cannot_follow",
    "channel_operands",
    "check_sizes",
    "op_name",
    "propagate",
    "reshapes_per_channel",
    "shape_of",
    "where",
]

# Binary ops whose tensor operands with equal channel counts must share one width.
JOINING = {
    "add",
    "add_",
    "iadd",
    "sub",
    "sub_",
    "isub",
    "mul",
    "mul_",
    "imul",
    "truediv",
    "div",
    "div_",
    "itruediv",
}
# Ops that act on each element independently: they keep the channels wherever they are.
_POINTWISE = {
    "relu",
    "relu_",
    "relu6",
    "hardtanh",
    "hardtanh_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "silu",
    "silu_",
    "gelu",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "dropout",
    "contiguous",
    "clone",
    "float",
    "to",
    "type_as",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "neg",
    "abs",
    "exp",
    "pow",
    "softplus",
    "leaky_relu",
    "elu",
    "mish",
    "sqrt",
    "rsqrt",
    "square",
    "detach",
    "stochastic_depth",
    "drop_path",
}
# Modules without parameters that act on each element independently (others, such as
# pools, are trusted to be channelwise only while the channels are dimension 1).
_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.modules.dropout._DropoutNd,
    nn.GELU,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Softplus,
)
# Ops that act on each channel independently, keeping the channel dimension in place, when
# the channels are dimension 1 of (N, C, ...) (the joining and pointwise ops too).
_CHANNELWISE = (
    JOINING
    | _POINTWISE
    | {
        "dropout2d",
        "alpha_dropout",
        "adaptive_avg_pool1d",
        "adaptive_avg_pool2d",
        "adaptive_avg_pool3d",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "avg_pool1d",
        "avg_pool2d",
        "avg_pool3d",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "lp_pool1d",
        "lp_pool2d",
        "interpolate",
        "squeeze",
        "flatten",
        "view",
        "reshape",
        "pad",
    }
)
# Reductions over the dimensions named by their ``dim`` argument: they pass channels through
# when those are spatial (global pooling written as ``x.mean((2, 3))``).
_REDUCING = {"mean", "amax", "amin", "sum", "nansum", "nanmean", "std", "var", "logsumexp"}
# Concatenations: along the channels they concatenate layouts, elsewhere they join them.
CONCAT = {"cat", "concat", "concatenate"}
# Ops that flatten (N, C, H, W) -> (N, C*H*W).
_FLATTENING = {"flatten", "view", "reshape"}
# Ops that only add or drop dimensions of size 1 when the channels are elsewhere.
_RESHAPING = _FLATTENING | {"squeeze", "unsqueeze"}
# Ops that reorder dimensions: they move the channel dimension, keeping every channel.
_MOVING = {"permute", "transpose", "swapaxes", "swapdims"}
SPLITTING = {"split", "chunk", "unbind", "tensor_split", "split_with_sizes"}


def op_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


def shape_of(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def where(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    return f"op {op_name(node)!r} (graph node {node.name!r})"


def _refuse(node: torch.fx.Node) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{where(node)} mixes or reorders channels; the supernet cannot slim across it"
    )


def cannot_follow(node: torch.fx.Node) -> UnsupportedModelError:
    return UnsupportedModelError(f"{where(node)}: cannot follow channels through it")


def channel_operands(
    node: torch.fx.Node, out: Channels, out_shape: tuple[int, ...], tracked: set[torch.fx.Node]
) -> list[tuple[torch.fx.Node, int]]:
    """The untracked tensor operands of a joining op that hold one value per channel of its
    output (``layer_scale * x`` with a ``(C, 1, 1)`` parameter), each with the dimension of
    its own shape that lines up with the output's channels under broadcasting."""
    found = []
    for operand in node.all_input_nodes:
        shape = shape_of(operand)
        if operand in tracked or shape is None:
            continue
        axis = out.dim - (len(out_shape) - len(shape))
        if 0 <= axis < len(shape) and shape[axis] != 1:
            found.append((operand, axis))
    return found


def reshapes_per_channel(node: torch.fx.Node, name: str) -> bool:
    """Whether ``node`` reshapes a tensor with one value per channel (one dimension larger
    than 1) into another such tensor whose size there follows the tensor's own length:
    ``gamma.reshape(1, -1, 1, 1)`` does, ``gamma.view(1, 96, 1, 1)`` fixes the width; an
    ``expand`` over the batch (a ViT's class token) keeps it too."""
    source, out = shape_of(node.args[0]) if node.args else None, shape_of(node)
    if name == "expand" and source is not None and out is not None and len(out) == len(source):
        big = [i for i, s in enumerate(source) if s != 1]  # broadcast: its values stay put
        return len(big) == 1 and out[big[0]] == source[big[0]]
    if name not in _RESHAPING or source is None or out is None:
        return False
    big_in, big_out = [s for s in source if s != 1], [i for i, s in enumerate(out) if s != 1]
    if len(big_in) != 1 or len(big_out) != 1 or out[big_out[0]] != big_in[0]:
        return False
    if name not in _FLATTENING or op_name(node) == "flatten":
        return True  # (un)squeeze and flatten name no sizes
    sizes = node.args[1] if len(node.args) == 2 else node.args[1:]
    sizes = node.kwargs.get("shape", sizes)
    return isinstance(sizes, (tuple, list)) and len(sizes) == len(out) and sizes[big_out[0]] == -1


def check_sizes(node: torch.fx.Node, name: str, channels: Channels) -> None:
    """Refuse a ``view``/``reshape`` that asks for the channels by number (``x.reshape(n,
    768, -1)``): at any other width it would fail or mix channels."""
    sizes = _requested_sizes(node, name)
    size = sizes[channels.dim] if sizes is not None and channels.dim < len(sizes) else -1
    if isinstance(size, int) and size != -1:
        raise UnsupportedModelError(
            f"{where(node)} asks for {size} channels by number; the supernet cannot change a "
            "constant (a size taken from the tensor, or -1, can be slimmed)"
        )


def _requested_sizes(node: torch.fx.Node, name: str) -> tuple[Any, ...] | None:
    """The sizes a ``view``/``reshape`` asks for, as written (ints, -1 or graph nodes)."""
    if name not in ("view", "reshape") or op_name(node) == "flatten":
        return None
    sizes = node.kwargs.get("shape", node.args[1] if len(node.args) == 2 else node.args[1:])
    return tuple(sizes) if isinstance(sizes, (tuple, list)) else None


def propagate(
    node: torch.fx.Node,
    name: str,
    tracked: list[torch.fx.Node],
    info: dict[torch.fx.Node, Channels],
    spaces: Spaces,
    out_shape: tuple[int, ...],
    module: nn.Module | None = None,
) -> Channels:
    """Channels of a non-slimmable op's output (``name``: the op, or ``"__module__"`` for a
    module without parameters), or raise if it mixes channels (see also :func:`check_sizes`)."""
    first = tracked[0]
    in_shape = shape_of(first)
    channels = info[first]
    if name in CONCAT:
        return _concat(node, tracked, info, spaces, out_shape)
    if name in _REDUCING and in_shape is not None and len(in_shape) >= 2:
        return _reduce(node, in_shape, out_shape, channels)
    if name == "getitem":
        return _select(node, channels, in_shape, out_shape)
    if in_shape is None or len(out_shape) < 2 or len(in_shape) < 2:
        raise cannot_follow(node)
    if name in JOINING and len(tracked) > 1:
        return _join(node, [(info[t], shape_of(t)) for t in tracked], spaces)
    if name in _MOVING:
        return _move(node, name, channels, in_shape)
    if channels.dim != 1:
        return _off_dim_one(node, name, module, channels, in_shape, out_shape)
    layout, factor = channels.layout, channels.factor
    channelwise = name == "__module__" or name in _CHANNELWISE
    pads = node.args[1] if name == "pad" and len(node.args) > 1 else None
    if isinstance(pads, (tuple, list)) and len(pads) > 2 * (len(in_shape) - 2):
        raise UnsupportedModelError(f"{where(node)}: pads the channel dimension")

    if channelwise and out_shape[1] == in_shape[1] and len(out_shape) <= len(in_shape):
        if len(out_shape) == 2 and len(in_shape) > 2 and math.prod(in_shape[2:]) != 1:
            if name in _FLATTENING:  # (N, C, H, W) -> (N, C*H*W) with C == C*H*W: H*W == 1
                return channels
            raise cannot_follow(node)
        return channels
    if name in _FLATTENING and len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
        return Channels(layout, factor * math.prod(in_shape[2:]))
    raise _refuse(node)


def _join(
    node: torch.fx.Node, operands: list[tuple[Channels, tuple[int, ...] | None]], spaces: Spaces
) -> Channels:
    """A residual add or gating multiply: the operands with channels (each with its shape)
    share them, position by position (their channel dimensions must line up under
    broadcasting) with the first."""
    (layout, factor, dim), in_shape = operands[0]
    assert in_shape is not None
    for theirs, other_shape in operands[1:]:
        if other_shape is None or len(other_shape) < 2 or other_shape[theirs.dim] == 1:
            continue  # broadcast over channels (e.g. a spatial gate)
        aligned = theirs.dim - len(other_shape) == dim - len(in_shape)
        if theirs.factor != factor or not aligned:
            raise UnsupportedModelError(f"{where(node)}: joins tensors of different layouts")
        layout = spaces.unite(layout, theirs.layout, where(node))
    out_shape = shape_of(node) or in_shape
    return Channels(layout, factor, dim + len(out_shape) - len(in_shape))


def _move(
    node: torch.fx.Node, name: str, channels: Channels, in_shape: tuple[int, ...]
) -> Channels:
    """``permute``/``transpose``: the channels move to another dimension, each kept whole;
    the batch must stay first and the channels must not be flattened features."""
    rank = len(in_shape)
    args = list(node.args[1:])
    if name == "permute":
        dims = node.kwargs.get("dims", args[0] if len(args) == 1 else args)
        order = list(dims) if isinstance(dims, (tuple, list)) else None
    else:
        pair = [node.kwargs.get(k, a) for k, a in zip(("dim0", "dim1"), args, strict=False)]
        order = list(range(rank))
        if len(pair) == 2 and all(isinstance(d, int) for d in pair):
            a, b = (d % rank for d in pair)
            order[a], order[b] = order[b], order[a]
        else:
            order = None
    if order is None or not all(isinstance(d, int) for d in order) or len(order) != rank:
        raise _refuse(node)
    order = [d % rank for d in order]
    if order[0] != 0 or (channels.factor != 1 and order != list(range(rank))):
        raise _refuse(node)
    return Channels(channels.layout, channels.factor, order.index(channels.dim))


def _whole(item: Any, size: int) -> bool:
    """Whether an index item keeps a whole dimension of ``size``, at that size and any
    smaller one: ``:``, or ``:n`` with ``n >= size`` (GhostNet's ``out[:, :self.out_chs]``
    where its two halves make exactly ``out_chs``)."""
    if not isinstance(item, slice) or item.start not in (None, 0) or item.step not in (None, 1):
        return False
    return item.stop is None or (isinstance(item.stop, int) and item.stop >= size)


def _select(
    node: torch.fx.Node,
    channels: Channels,
    in_shape: tuple[int, ...] | None,
    out_shape: tuple[int, ...],
) -> Channels:
    """Indexing with integers and slices (``x[:, 0]``, a ViT's class token; ``x[:, 1:]``):
    the channels pass through when the batch and the channel dimension are taken whole (see
    :func:`_whole`); an integer index removes its dimension. A layer that returns a tuple
    (``nn.MultiheadAttention``: output and weights) has its channels in the first element."""
    index = node.args[1] if len(node.args) > 1 else None
    if in_shape is None:
        if index != 0 or node.args[0].op != "call_module":
            raise cannot_follow(node)
        return channels
    index = index if isinstance(index, tuple) else (index,)
    items_ok = all(isinstance(i, (int, slice)) for i in index) and len(index) <= len(in_shape)
    if not items_ok or channels.factor != 1 or not _whole(index[0], in_shape[0]):
        raise _refuse(node)
    if channels.dim < len(index) and not _whole(index[channels.dim], in_shape[channels.dim]):
        raise _refuse(node)
    dim = channels.dim - sum(isinstance(i, int) for i in index[: channels.dim])
    if len(out_shape) < 2 or out_shape[dim] != in_shape[channels.dim]:
        raise cannot_follow(node)
    return Channels(channels.layout, 1, dim)


def _off_dim_one(
    node: torch.fx.Node,
    name: str,
    module: nn.Module | None,
    channels: Channels,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
) -> Channels:
    """An op on a tensor whose channels are not dimension 1 (channels-last): only pointwise
    ops, and reshapes that add or drop dimensions of size 1, keep them apart."""
    pointwise = name in _POINTWISE or name in JOINING
    if name == "__module__":
        pointwise = isinstance(module, _POINTWISE_MODULES)
    if pointwise and out_shape == in_shape:
        return channels
    if name in _RESHAPING and channels.factor == 1 and out_shape[0] == in_shape[0]:
        size = in_shape[channels.dim]
        rest_in = [s for i, s in enumerate(in_shape[1:], 1) if i != channels.dim]
        at = [i for i, s in enumerate(out_shape[1:], 1) if s != 1]
        if all(s == 1 for s in rest_in) and len(at) == 1 and out_shape[at[0]] == size:
            return Channels(channels.layout, 1, at[0])
    raise _refuse(node)


def _concat(
    node: torch.fx.Node,
    tracked: list[torch.fx.Node],
    info: dict[torch.fx.Node, Channels],
    spaces: Spaces,
    out_shape: tuple[int, ...],
) -> Channels:
    """``torch.cat``: along the channels the output's layout is the inputs' layouts in order;
    along any other dimension every input holds the same channels (their layouts unite)."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if not isinstance(parts, (tuple, list)) or not isinstance(dim, int):
        raise cannot_follow(node)
    joined, factor, channel_dim = info[tracked[0]]
    if dim % len(out_shape) != channel_dim:
        for part in parts:  # a class token: one value per channel, sliced with them
            shape = shape_of(part)
            untracked = shape is not None and part not in info
            if untracked and shape[channel_dim] != out_shape[channel_dim]:
                raise cannot_follow(node)
        for other in tracked[1:]:
            if info[other].factor != factor or info[other].dim != channel_dim:
                raise UnsupportedModelError(f"{where(node)}: joins tensors of different layouts")
            joined = spaces.unite(joined, info[other].layout, where(node))
        return Channels(joined, factor, channel_dim)
    layout: Layout = ()
    for part in parts:
        if part not in info or info[part].factor != 1 or info[part].dim != channel_dim:
            what = "an untracked tensor" if part not in info else "flattened features"
            raise UnsupportedModelError(
                f"{where(node)} concatenates {what} along the channels; the supernet cannot "
                "slim across it"
            )
        layout += info[part].layout
    return Channels(layout, 1, channel_dim)


def _reduce(
    node: torch.fx.Node,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...] | None,
    channels: Channels,
) -> Channels:
    """A reduction passes its input's channels through unless it reduces over them."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dims, bool):  # the old ``x.var(unbiased)``: every dimension
        dims = None
    dims = (dims,) if isinstance(dims, int) else dims
    if dims is not None and not (
        isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims)
    ):
        raise UnsupportedModelError(
            f"{where(node)}: reduces over dimensions fixed only at run time"
        )
    # no dim (or an empty one) reduces every dimension
    reduced = {d % len(in_shape) for d in dims} if dims else set(range(len(in_shape)))
    if channels.dim in reduced:
        raise UnsupportedModelError(
            f"{where(node)} reduces over the channel dimension; the supernet cannot slim across it"
        )
    kept = len(out_shape or ()) == len(in_shape)  # keepdim
    dim = channels.dim if kept else channels.dim - sum(d < channels.dim for d in reduced)
    if 0 in reduced or out_shape is None or len(out_shape) < 2:
        raise cannot_follow(node)
    if out_shape[dim] != in_shape[channels.dim]:
        raise cannot_follow(node)
    return Channels(channels.layout, channels.factor, dim)
