"""Find channel groups and the per-layer table by tracing the model with torch.fx.

Every tensor in the traced graph gets its :class:`~._spaces.Channels`: a *layout* (the
channel spaces, union-find ids, whose channels its channel dimension concatenates, in order;
one space for most tensors, several after ``torch.cat`` along the channels, as in DenseNet
and SqueezeNet's Fire modules) and the dimension that holds the channels (a permute to
channels-last moves it, as in ConvNeXt). Convolutions and linear layers create new spaces;
BN, layer norm, activations, pools, spatial reductions and depthwise convs pass their
input's layout through; residual adds and gating multiplies unite spaces position by
position, and a parameter they read directly (``layer_scale * x``, a ViT's class token
joined to the patch embeddings, its position embedding) is sliced with the channels it
scales. A layer whose channels stay inside its module (timm's attention: its heads) names the
child layer that reads them (the output projection), recorded as a layer of its own. What is
left after the walk are the groups, and each layer's input and output layout says which
group each channel belongs to. Nothing here knows any
architecture, nor any kind of slimmable layer: each one's handler (:mod:`.handlers`) says
which spaces its calls read and write, and :mod:`._channels` how other ops move channels.

An op the walk cannot follow (a channel shuffle, a split, a reshape to a constant number of
channels, a module with parameters and no handler) does not stop it: the channels it reads
are frozen at full width, with the reason, and its output carries no group
(:data:`~._spaces.FROZEN`), so the op always sees the tensors it was written for. Its
multiply-accumulates are then the same for every width config: ``FlopCounterMode`` counts
them once, at tracing, as a constant of the cost model. Only a model that cannot be traced,
or whose every group ends up frozen, is refused.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ._channels import (
    CONCAT,
    JOINING,
    SPLITTING,
    cannot_follow,
    channel_operands,
    check_sizes,
    op_name,
    propagate,
    reshapes_per_channel,
    shape_of,
    where,
)
from ._counting import counted_flops
from ._spaces import FROZEN, Channels, Spaces
from .errors import UnsupportedModelError
from .handlers import (
    ATTRIBUTE,
    LayerCall,
    LayerHandler,
    SlimLayer,
    TraceStep,
    handler_for,
    registered_labels,
)
from .handlers import registered_types as slimmable_types

__all__ = ["LayerCall", "SlimLayer", "TraceResult", "trace_channels"]


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
    frozen: dict[int, str] = field(default_factory=dict)  # root space id -> why it is frozen
    constant_macs: int = 0  # MACs of the frozen ops, the same at every width
    constant_macs_of: dict[str, int] = field(default_factory=dict)  # per module, nested ones
    units: set[int] = field(default_factory=set)  # root space ids counted in whole units


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


def _flat_nodes(args: Any) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []
    torch.fx.node.map_arg(args, out.append)
    return out


def trace_channels(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> TraceResult:
    """Trace ``model`` and return its channel spaces and slimmable layers.

    Channels coupled in a way the supernet cannot slim (split, channel shuffle, a reshape to a
    constant channel count, reductions over the channels, per-channel parameters outside the
    slimmable layers, ...) are frozen, each with a one-line reason naming the module or op
    (``TraceResult.frozen``).

    Raises:
        UnsupportedModelError: the model cannot be traced; names the model and fx's reason.
    """
    was_training = model.training
    model.eval()  # trace the inference graph: no stochastic depth/dropout branches
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        gm = torch.fx.GraphModule(tracer.root, graph)
        # ShapeProp prints the traceback of a failing node itself: the error below says it
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
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
    spaces = Spaces()
    info: dict[torch.fx.Node, Channels] = {}
    found = _Layers(spaces, example_inputs[0].shape[0])
    layers = found.layers
    attribute_of: dict[torch.fx.Node, torch.fx.Node] = {}  # a get_attr, or a reshape of one

    for node in gm.graph.nodes:
        out_shape = shape_of(node)
        if node.op == "placeholder":
            if out_shape is not None and len(out_shape) >= 2:
                info[node] = Channels((spaces.new(out_shape[1], "input", fixed=True),))
            continue
        if node.op == "get_attr":
            attribute_of[node] = node
            continue
        if node.op == "output":
            for arg in _flat_nodes(node.args):
                for space in info[arg].layout if arg in info else ():
                    spaces.fixed[spaces.find(space)] = True
            continue

        # each tracked operand once (self-attention reads the same tensor as q, k and v)
        tracked = list(dict.fromkeys(a for a in _flat_nodes((node.args, node.kwargs)) if a in info))
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        name = op_name(node)
        try:
            if module is not None:
                handler = handler_for(module)
                if handler is not None:
                    if not tracked:
                        continue  # a layer on constants (a bias table): its cost is constant
                    if len(tracked) != 1:
                        raise UnsupportedModelError(f"{where(node)}: expected one input tensor")
                    info[node] = _layer_call(found, node, handler, module, tracked[0], info)
                    continue
                if any(True for _ in module.parameters(recurse=True)):
                    if tracked:
                        raise UnsupportedModelError(
                            f"{where(node)} ({type(module).__name__}) has parameters on "
                            f"channels it would slice; only {registered_labels()} layers can "
                            "be slimmed"
                        )
                    continue
                name = "flatten" if isinstance(module, nn.Flatten) else "__module__"
            if "tensor_meta" not in node.meta:
                continue  # shape arithmetic (``x.size()``), or an op without tensors
            source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
            if source in attribute_of and not tracked and reshapes_per_channel(node, name):
                attribute_of[node] = attribute_of[source]  # ``gamma.reshape(1, -1, 1, 1)``
            if not tracked:
                continue  # an op on untracked tensors
            if any(info[t] is FROZEN for t in tracked):
                raise UnsupportedModelError(f"{where(node)} reads frozen channels")
            if out_shape is None and name in SPLITTING:
                raise UnsupportedModelError(f"{where(node)} splits channels")
            if out_shape is None:
                raise cannot_follow(node)
            info[node] = propagate(node, name, tracked, info, spaces, out_shape, module)
            check_sizes(node, name, info[node])
            if name in JOINING or name in CONCAT:
                for operand, axis in channel_operands(node, info[node], out_shape, set(tracked)):
                    found.attribute(
                        node, operand, attribute_of.get(operand), axis, info[node], modules
                    )
        except UnsupportedModelError as exc:
            # the channels this op reads keep full width; what it writes follows no group
            for t in tracked:
                spaces.freeze(info[t].layout, str(exc))
            if node in info:
                spaces.freeze(info[node].layout, str(exc))
            info[node] = FROZEN

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
    other_params_of = _other_params(model, layers.values())
    frozen = {r: spaces.reason[r] for r in roots if spaces.reason[r]}
    constant_macs_of = _constant_macs(model, example_inputs, layers.values())
    return TraceResult(
        layers=list(layers.values()),
        space_size={r: spaces.size[r] for r in roots},
        space_name={r: spaces.name[r] for r in roots},
        fixed={r for r in roots if spaces.fixed[r]},
        multiple={r: spaces.multiple[r] for r in roots},
        order=roots,
        other_params=sum(other_params_of.values()),
        other_params_of=other_params_of,
        frozen=frozen,
        constant_macs=constant_macs_of.get("", 0),
        constant_macs_of=constant_macs_of,
        units={r for r in roots if spaces.units[r]},
    )


def _layer_call(
    found: _Layers,
    node: torch.fx.Node,
    handler: LayerHandler,
    module: nn.Module,
    producer: torch.fx.Node,
    info: dict[torch.fx.Node, Channels],
) -> Channels:
    """One call of a slimmable layer. On frozen channels it reads a fixed space of its own,
    along the dimension it takes channels on (the first after the batch, or the last)."""
    channels = info[producer]
    if channels is not FROZEN:
        return found.module_call(node, handler, module, producer, channels)
    shape = shape_of(producer)
    if shape is None or len(shape) < 2:
        raise cannot_follow(node)
    refusal = cannot_follow(node)
    for dim in dict.fromkeys((1, len(shape) - 1)):
        fixed = Channels((found.spaces.new(shape[dim], f"{node.target}:in", fixed=True),), 1, dim)
        try:
            return found.module_call(node, handler, module, producer, fixed)
        except UnsupportedModelError as exc:
            refusal = exc
    raise refusal


def _constant_macs(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], layers: Iterable[SlimLayer]
) -> dict[str, int]:
    """MACs per sample outside the slimmable layers (the frozen ops': attention's matmuls, a
    layer on a constant), for the whole model (key ``""``) and every module holding some.

    ``FlopCounterMode`` counts one forward at batch 1 (:func:`._counting.counted_flops`); the
    layers' own counts are taken away, since the cost model counts those in their widths."""
    counter = counted_flops(model, *(x[:1] for x in example_inputs))
    root = type(model).__name__
    flops: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == root or key.startswith(root + "."):
            flops[key[len(root) + 1 :]] = sum(per_op.values())
    owners = {layer.module_name for layer in layers if not layer.attribute}
    # a layer inside another layer's module (attention's output projection) is in its count
    tops = {m for m in owners if not any(m.startswith(o + ".") for o in owners)}
    in_layers = {m: flops.get(m, 0) for m in tops}
    out: dict[str, int] = {}
    for name, total in flops.items():
        if any(name.startswith(m + ".") for m in tops):
            continue
        inside = sum(n for m, n in in_layers.items() if not name or m.startswith(name + "."))
        inside += in_layers.get(name, 0)
        rest = total - inside
        if rest % 2:
            raise UnsupportedModelError(f"module {name!r}: an odd FLOP count outside its layers")
        if rest > 0:
            out[name] = rest // 2
    return out


def _other_params(model: nn.Module, layers: Iterable[SlimLayer]) -> dict[str, int]:
    """Per module, the parameters of its own that no slimmable layer slices."""
    sliced: set[int] = set()
    for layer in layers:
        if layer.attribute:
            sliced.add(id(getattr(layer.module, layer.attribute)))
        else:
            sliced.update(id(p) for p in layer.module.parameters())
    counts = {
        name: sum(p.numel() for p in m.parameters(recurse=False) if id(p) not in sliced)
        for name, m in model.named_modules()
    }
    return {name: n for name, n in counts.items() if n}


class _Layers:
    """The slimmable layers found so far, each recorded through its handler."""

    def __init__(self, spaces: Spaces, batch: int) -> None:
        self.spaces, self.batch = spaces, batch
        self.layers: dict[str, SlimLayer] = {}

    def module_call(
        self,
        node: torch.fx.Node,
        handler: LayerHandler,
        module: nn.Module,
        producer: torch.fx.Node,
        channels: Channels,
    ) -> Channels:
        """One call of a slimmable module on ``producer``'s output: its output's channels."""
        source = str(producer.target) if producer.op == "call_module" else None
        source = source if source in self.layers else None
        name, in_shape = str(node.target), shape_of(producer)
        layer = self._record(handler, module, node, name, channels, in_shape, channels.dim, source)
        inner = handler.output_layer(layer)
        if inner is None:
            return Channels(layer.out_spaces, 1, layer.out_dim)
        # the layer's channels stay inside the module: its child reading them is a layer too
        child_name, factor = inner
        child = module.get_submodule(child_name)
        child_handler = handler_for(child)
        if child_handler is None:
            raise UnsupportedModelError(f"{where(node)}: {child_name!r} is no slimmable layer")
        out_shape = shape_of(node) or ()
        features = sum(self.spaces.size[self.spaces.find(s)] for s in layer.out_spaces) * factor
        child_in = (*out_shape[: layer.out_dim], features, *out_shape[layer.out_dim + 1 :])
        inside = Channels(layer.out_spaces, factor, layer.out_dim)
        child_name = f"{name}.{child_name}"
        child_layer = self._record(
            child_handler, child, node, child_name, inside, child_in, layer.out_dim, None
        )
        return Channels(child_layer.out_spaces, 1, child_layer.out_dim)

    def attribute(
        self,
        node: torch.fx.Node,
        operand: torch.fx.Node,
        attribute: torch.fx.Node | None,
        axis: int,
        channels: Channels,
        modules: dict[str, nn.Module],
    ) -> None:
        """A joining op's untracked operand with one value per channel (along its dimension
        ``axis``): sliceable only when it is a parameter or buffer of the model (a
        ``get_attr``) or a reshape of one that follows its width, as a layer of its own."""
        if attribute is None:
            raise UnsupportedModelError(
                f"{where(node)}: its operand {operand.name!r} holds a value per channel but is "
                "no parameter or buffer of the model, nor a reshape of one with -1 for its "
                "channels; the supernet cannot slice it"
            )
        if attribute is not operand:  # a reshape: the attribute's own dimension larger than 1
            axis = next(i for i, size in enumerate(shape_of(attribute) or ()) if size != 1)
        name = str(attribute.target)
        owner = modules.get(name.rpartition(".")[0])
        if owner is None:
            raise UnsupportedModelError(f"{where(node)}: its operand {name!r} has no owner module")
        self._record(ATTRIBUTE, owner, node, name, channels, shape_of(attribute), axis, None)

    def _record(
        self,
        handler: LayerHandler,
        module: nn.Module,
        node: torch.fx.Node,
        name: str,
        channels: Channels,
        in_shape: tuple[int, ...] | None,
        in_dim: int,
        source: str | None,
    ) -> SlimLayer:
        """Record one call of a slimmable layer (its handler says which spaces it uses)."""
        step = TraceStep(
            name=name,
            where=where(node),
            in_spaces=channels.layout,
            in_factor=channels.factor,
            in_shape=in_shape,
            out_shape=shape_of(node) or (),
            batch=self.batch,
            source=source,
            existing=self.layers.get(name),
            spaces=self.spaces,
            in_dim=in_dim,
        )
        layer = handler.trace(module, step)
        if step.existing:  # a module called more than once must see the same spaces every time
            self.spaces.unite(step.existing.in_spaces, step.in_spaces, f"{step.where} (reused)")
            if step.existing.in_dim != step.in_dim:
                raise UnsupportedModelError(f"{step.where} (reused): its channels move")
        else:
            layer.in_dim, layer.out_dim = step.in_dim, handler.out_dim(step)
        self.layers[name] = layer
        call = handler.call(step)
        if call is not None:
            layer.calls.append(call)
        return layer
