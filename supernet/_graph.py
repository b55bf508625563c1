"""Find channel groups and the per-layer table by tracing the model with torch.fx.

Every tensor in the traced graph gets a *layout* for its channel dimension: the channel
spaces (union-find ids) whose channels it concatenates, in order; one space for most
tensors, several after ``torch.cat`` along the channels (DenseNet, SqueezeNet's Fire
modules). Convolutions and linear layers create new spaces; BN, activations, pools, spatial
reductions and depthwise convs pass their input's layout through; residual adds and gating
multiplies unite spaces position by position. What is left after the walk are the groups,
and each layer's input and output layout says which group each channel belongs to. Nothing
here knows any architecture, nor any kind of slimmable layer: each one's handler
(:mod:`.handlers`) says which spaces its calls read and write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import UnsupportedModelError
from .handlers import LayerCall, Layout, SlimLayer, TraceStep, handler_for, registered_labels
from .handlers import registered_types as slimmable_types

__all__ = ["LayerCall", "SlimLayer", "TraceResult", "trace_channels"]

# Binary ops whose tensor operands with equal channel counts must share one width.
_JOINING = {
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
# Ops that act on each channel independently, keeping the channel dimension in place (the
# joining ops too).
_CHANNELWISE = _JOINING | {
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
    "contiguous",
    "clone",
    "float",
    "to",
    "type_as",
    "interpolate",
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
    "squeeze",
    "flatten",
    "view",
    "reshape",
    "pad",
}
# Reductions over the dimensions named by their ``dim`` argument: they pass channels through
# when those are spatial (global pooling written as ``x.mean((2, 3))``).
_REDUCING = {"mean", "amax", "amin", "sum", "nansum", "nanmean", "std", "var", "logsumexp"}
# Concatenations: along the channels they concatenate layouts, elsewhere they join them.
_CONCAT = {"cat", "concat", "concatenate"}
# Ops that flatten (N, C, H, W) -> (N, C*H*W).
_FLATTENING = {"flatten", "view", "reshape"}
_SPLITTING = {"split", "chunk", "unbind", "tensor_split", "split_with_sizes"}


@dataclass
class TraceResult:
    """Spaces (already united) and the layers that use them."""

    layers: list[SlimLayer]
    space_size: dict[int, int]  # root space id -> channels
    space_name: dict[int, str]  # root space id -> group name
    fixed: set[int]  # root space ids that must keep full width
    multiple: dict[int, int]  # root space id -> channel multiple required (grouped convs)
    order: list[int]  # root space ids in graph order
    other_params: int  # parameters outside conv/BN/linear layers (constant in the cost model)
    other_params_of: dict[str, int]  # module name -> its own such parameters (depth pruning)


class _Spaces:
    """Union-find over channel spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.fixed: list[bool] = []
        self.multiple: list[int] = []

    def new(self, size: int, name: str, *, fixed: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.fixed.append(fixed)
        self.multiple.append(1)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:
            raise UnsupportedModelError(
                f"{where}: joins {self.size[ra]} and {self.size[rb]} channels"
            )
        keep, drop = min(ra, rb), max(ra, rb)  # the earlier space names the group
        self.parent[drop] = keep
        self.fixed[keep] = self.fixed[keep] or self.fixed[drop]
        self.multiple[keep] = math.lcm(self.multiple[keep], self.multiple[drop])
        return keep

    def unite(self, a: Layout, b: Layout, where: str) -> Layout:
        """Unite two layouts position by position (the same channels, one width each)."""
        sizes_a = [self.size[self.find(s)] for s in a]
        sizes_b = [self.size[self.find(s)] for s in b]
        if sizes_a != sizes_b:
            raise UnsupportedModelError(
                f"{where}: joins channels laid out as {_sizes(sizes_a)} and {_sizes(sizes_b)} "
                "(a concatenation joins only one of the same parts)"
            )
        return tuple(self.union(x, y, where) for x, y in zip(a, b, strict=True))

    def require_multiple(self, space: int, multiple: int) -> None:
        """Widths of ``space`` (a root) must be multiples of ``multiple`` (grouped convs)."""
        self.multiple[space] = math.lcm(self.multiple[space], multiple)


class _Tracer(torch.fx.Tracer):
    """Keeps every slimmable layer (a module type with a handler, including subclasses such as
    timm's BatchNormAct2d) a leaf."""

    def __init__(self) -> None:
        autowrap: tuple[Any, ...] = ()
        self._notrace_modules: tuple[type, ...] = ()
        try:  # timm's registry of functions/modules that fx must not trace into
            from timm.layers import _fx as timm_fx

            autowrap = tuple(timm_fx.get_notrace_functions())
            self._notrace_modules = tuple(timm_fx.get_notrace_modules())
        except ImportError:  # pragma: no cover - timm is a dependency, but stay usable without
            pass
        super().__init__(autowrap_functions=autowrap)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (*slimmable_types(), *self._notrace_modules)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _sizes(sizes: list[int]) -> str:
    return " + ".join(map(str, sizes)) if len(sizes) > 1 else f"{sizes[0]} channels"


def _op_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


def _shape(node: Any) -> tuple[int, ...] | None:
    if not isinstance(node, torch.fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _where(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    return f"op {_op_name(node)!r} (graph node {node.name!r})"


def _flat_nodes(args: Any) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, out.append)
    return out


def trace_channels(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> TraceResult:
    """Trace ``model`` and return its channel spaces and slimmable layers.

    Raises:
        UnsupportedModelError: the model cannot be traced, or couples channels in a way the
            supernet cannot slim (split, channel shuffle, reductions over the channels,
            per-channel parameters outside conv/BN/linear layers, ...). The message names
            the module or op.
    """
    was_training = model.training
    model.eval()  # trace the inference graph: no stochastic depth/dropout branches
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        gm = torch.fx.GraphModule(tracer.root, graph)
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # fx raises many types; all mean "not traceable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx: {reason}"
        ) from exc
    finally:
        model.train(was_training)

    modules = dict(model.named_modules())
    spaces = _Spaces()
    info: dict[torch.fx.Node, tuple[Layout, int]] = {}  # node -> (layout, features per channel)
    layers: dict[str, SlimLayer] = {}
    batch = example_inputs[0].shape[0]

    for node in gm.graph.nodes:
        out_shape = _shape(node)
        if node.op == "placeholder":
            if out_shape is not None and len(out_shape) >= 2:
                info[node] = ((spaces.new(out_shape[1], "input", fixed=True),), 1)
            continue
        if node.op == "get_attr":
            continue
        if node.op == "output":
            for arg in _flat_nodes(node.args):
                for space in info.get(arg, ((), 1))[0]:
                    spaces.fixed[spaces.find(space)] = True
            continue

        tracked = [a for a in _flat_nodes((node.args, node.kwargs)) if a in info]
        if node.op == "call_module":
            module = modules[str(node.target)]
            if handler_for(module) is not None:
                info[node] = _slim_layer(node, module, tracked, info, spaces, layers, batch)
                continue
            if any(True for _ in module.parameters(recurse=True)):
                if tracked:
                    raise UnsupportedModelError(
                        f"{_where(node)} ({type(module).__name__}) has parameters on sliced "
                        f"channels; only {registered_labels()} layers can be slimmed"
                    )
                continue
            name = "flatten" if isinstance(module, nn.Flatten) else "__module__"
        else:
            name = _op_name(node)

        if out_shape is None and tracked and name in _SPLITTING:
            raise UnsupportedModelError(
                f"{_where(node)} splits channels (split/chunk are not supported)"
            )
        if not tracked or out_shape is None:
            continue  # shape arithmetic, or an op on untracked tensors
        info[node] = _propagate(node, name, tracked, info, spaces, out_shape)

    roots: list[int] = []
    for i in range(len(spaces.parent)):
        root = spaces.find(i)
        if root not in roots:
            roots.append(root)
    used = {spaces.find(s) for lay in layers.values() for s in (*lay.in_spaces, *lay.out_spaces)}
    roots = [r for r in roots if r in used]
    for layer in layers.values():
        layer.in_spaces = tuple(spaces.find(s) for s in layer.in_spaces)
        layer.out_spaces = tuple(spaces.find(s) for s in layer.out_spaces)
    slim_ids = {id(m) for lay in layers.values() for m in lay.module.modules()}
    other_params_of = {
        name: sum(p.numel() for p in m.parameters(recurse=False))
        for name, m in model.named_modules()
        if id(m) not in slim_ids
    }
    other_params_of = {name: n for name, n in other_params_of.items() if n}
    return TraceResult(
        layers=list(layers.values()),
        space_size={r: spaces.size[r] for r in roots},
        space_name={r: spaces.name[r] for r in roots},
        fixed={r for r in roots if spaces.fixed[r]},
        multiple={r: spaces.multiple[r] for r in roots},
        order=roots,
        other_params=sum(other_params_of.values()),
        other_params_of=other_params_of,
    )


def _slim_layer(
    node: torch.fx.Node,
    module: nn.Module,
    tracked: list[torch.fx.Node],
    info: dict[torch.fx.Node, tuple[Layout, int]],
    spaces: _Spaces,
    layers: dict[str, SlimLayer],
    batch: int,
) -> tuple[Layout, int]:
    """Record one call of a slimmable layer (its handler says which spaces it uses)."""
    name = str(node.target)
    if len(tracked) != 1:
        raise UnsupportedModelError(f"{_where(node)}: expected one input tensor")
    in_spaces, in_factor = info[tracked[0]]
    out_shape = _shape(node)
    assert out_shape is not None
    producer = tracked[0]
    source = str(producer.target) if producer.op == "call_module" else None
    step = TraceStep(
        name=name,
        where=_where(node),
        in_spaces=in_spaces,
        in_factor=in_factor,
        in_shape=_shape(producer),
        out_shape=out_shape,
        batch=batch,
        source=source if source in layers else None,
        existing=layers.get(name),
        spaces=spaces,
    )
    handler = handler_for(module)
    assert handler is not None
    layer = handler.trace(module, step)
    if step.existing:  # a module called more than once must see the same spaces every time
        spaces.unite(step.existing.in_spaces, in_spaces, f"{step.where} (reused)")
    layers[name] = layer
    call = handler.call(step)
    if call is not None:
        layer.calls.append(call)
    return layer.out_spaces, 1


def _propagate(
    node: torch.fx.Node,
    name: str,
    tracked: list[torch.fx.Node],
    info: dict[torch.fx.Node, tuple[Layout, int]],
    spaces: _Spaces,
    out_shape: tuple[int, ...],
) -> tuple[Layout, int]:
    """Channel layout of a non-slimmable op's output, or raise if it mixes channels."""
    first = tracked[0]
    in_shape = _shape(first)
    layout, factor = info[first]
    if name in _CONCAT:
        return _concat(node, tracked, info, spaces, out_shape)
    if name in _REDUCING and in_shape is not None and len(in_shape) >= 2:
        return _reduce(node, in_shape, out_shape, layout, factor)
    if in_shape is None or len(out_shape) < 2 or len(in_shape) < 2:
        raise UnsupportedModelError(f"{_where(node)}: cannot follow channels through it")
    channelwise = name == "__module__" or name in _CHANNELWISE

    if name in _JOINING and len(tracked) > 1:
        for other in tracked[1:]:
            other_shape = _shape(other)
            if other_shape is None or len(other_shape) < 2 or other_shape[1] == 1:
                continue  # broadcast over channels (e.g. a spatial gate)
            if info[other][1] != factor:
                raise UnsupportedModelError(f"{_where(node)}: joins tensors of different layouts")
            layout = spaces.unite(layout, info[other][0], _where(node))
        return layout, factor

    pads = node.args[1] if name == "pad" and len(node.args) > 1 else None
    if isinstance(pads, (tuple, list)) and len(pads) > 2 * (len(in_shape) - 2):
        raise UnsupportedModelError(f"{_where(node)}: pads the channel dimension")

    if channelwise and out_shape[1] == in_shape[1] and len(out_shape) <= len(in_shape):
        if len(out_shape) == 2 and len(in_shape) > 2 and math.prod(in_shape[2:]) != 1:
            if name in _FLATTENING:  # (N, C, H, W) -> (N, C*H*W) with C == C*H*W: H*W == 1
                return layout, factor
            raise UnsupportedModelError(f"{_where(node)}: cannot follow channels through it")
        return layout, factor
    if name in _FLATTENING and len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
        return layout, factor * math.prod(in_shape[2:])
    raise UnsupportedModelError(
        f"{_where(node)} mixes or reorders channels (split/shuffle are not supported); "
        "the supernet cannot slim across it"
    )


def _concat(
    node: torch.fx.Node,
    tracked: list[torch.fx.Node],
    info: dict[torch.fx.Node, tuple[Layout, int]],
    spaces: _Spaces,
    out_shape: tuple[int, ...],
) -> tuple[Layout, int]:
    """``torch.cat``: along the channels the output's layout is the inputs' layouts in order;
    along any other dimension every input holds the same channels (their layouts unite)."""
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if not isinstance(parts, (tuple, list)) or not isinstance(dim, int):
        raise UnsupportedModelError(f"{_where(node)}: cannot follow channels through it")
    if dim % len(out_shape) != 1:
        joined, factor = info[tracked[0]]
        for other in tracked[1:]:
            if info[other][1] != factor:
                raise UnsupportedModelError(f"{_where(node)}: joins tensors of different layouts")
            joined = spaces.unite(joined, info[other][0], _where(node))
        return joined, factor
    layout: Layout = ()
    for part in parts:
        if part not in info or info[part][1] != 1:
            what = "an untracked tensor" if part not in info else "flattened features"
            raise UnsupportedModelError(
                f"{_where(node)} concatenates {what} along the channels; the supernet cannot "
                "slim across it"
            )
        layout += info[part][0]
    return layout, 1


def _reduce(
    node: torch.fx.Node,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...] | None,
    layout: Layout,
    factor: int,
) -> tuple[Layout, int]:
    """A reduction passes its input's channels through unless it reduces over them."""
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if isinstance(dims, bool):  # the old ``x.var(unbiased)``: every dimension
        dims = None
    dims = (dims,) if isinstance(dims, int) else dims
    if dims is not None and not (
        isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims)
    ):
        raise UnsupportedModelError(
            f"{_where(node)}: reduces over dimensions fixed only at run time"
        )
    # no dim (or an empty one) reduces every dimension
    reduced = {d % len(in_shape) for d in dims} if dims else set(range(len(in_shape)))
    if 1 in reduced:
        raise UnsupportedModelError(
            f"{_where(node)} reduces over the channel dimension; the supernet cannot slim across it"
        )
    if out_shape is None or len(out_shape) < 2 or out_shape[1] != in_shape[1]:
        raise UnsupportedModelError(f"{_where(node)}: cannot follow channels through it")
    return layout, factor
