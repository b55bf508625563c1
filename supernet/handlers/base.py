"""The handler interface, the layer record and the registry of layer kinds.

A handler is the one place that knows one kind of slimmable layer (a module type). It says

- how tracing sees it: which channel spaces it reads and writes (:meth:`LayerHandler.trace`)
  and what one call of it costs (:meth:`LayerHandler.call`);
- the sliced view the supernet's forward hooks swap in for a width config
  (:meth:`LayerHandler.run_widths`, :meth:`LayerHandler.view`);
- extraction: slicing the module in place to given input and output channel indices
  (:meth:`LayerHandler.slice`);
- its cost terms: MACs and parameters as products of its input and output widths
  (:meth:`LayerHandler.cost_terms`);
- the evidence on its output channels' importance that bisection, the warm start and weight
  inheritance rank channels by (:meth:`LayerHandler.importance`), and whether it is a
  *normaliser* (BN: reads and writes the same channels and rescales each, so its output is
  where a group's channels take their final values).

Handlers are stateless; :func:`register_layer` makes one the handler of some module types
and :func:`handler_for` finds the most specific one for a module (subclasses such as timm's
``BatchNormAct2d`` get the BN handler).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar

import torch
from torch import nn

__all__ = [
    "GAMMA",
    "L1",
    "CallWidths",
    "ChannelEvidence",
    "ChannelSpaces",
    "CostTerms",
    "LayerCall",
    "LayerHandler",
    "Layout",
    "SlimLayer",
    "TraceStep",
    "handler_for",
    "positions",
    "register_layer",
    "registered_labels",
    "registered_types",
    "replace_param",
    "restore",
    "span",
    "swap",
    "unregister_layer",
]

GAMMA = "gamma"  # evidence from a normaliser's |scale| (BN gamma)
L1 = "l1"  # evidence from the |weights| of the filters that write each channel


# A tensor's channel dimension as the concatenation of whole channel spaces (or groups), in
# order: one entry for most tensors, several after a ``torch.cat`` along the channels.
Layout = tuple[int, ...]


@dataclass
class LayerCall:
    """One call of a layer: what the cost model needs."""

    positions: int  # output positions per sample (H_out*W_out for convs, 1 for (N, F) linears)


@dataclass
class SlimLayer:
    """A slimmable layer, its handler and the channel spaces it reads and writes.

    ``in_spaces``/``out_spaces`` are layouts: the spaces whose channels the input/output's
    channel dimension concatenates (one space unless the tensor is a concat). For a
    normaliser, ``in_spaces == out_spaces``. ``in_factor`` is the number of input features
    per channel of a linear layer that follows a flatten of H x W maps.
    """

    name: str
    module: nn.Module
    handler: LayerHandler
    in_spaces: Layout
    out_spaces: Layout
    in_factor: int = 1
    group_width: int = 0  # grouped/depthwise conv: input channels per conv group (0 = dense)
    source: str | None = None  # normaliser: the layer whose output it normalises directly
    calls: list[LayerCall] = field(default_factory=list)
    in_dim: int = 1  # the input's channel dimension (the last one for a channels-last linear)
    out_dim: int = 1  # the output's channel dimension
    # a tensor used directly in its owner's forward (``layer_scale``): its name on ``module``,
    # which is the owner; ``name`` is the tensor's qualified name, ``in_dim`` its channel axis
    attribute: str = ""

    def __post_init__(self) -> None:
        # a handler may name a single space by its id
        if isinstance(self.in_spaces, int):
            self.in_spaces = (self.in_spaces,)
        if isinstance(self.out_spaces, int):
            self.out_spaces = (self.out_spaces,)

    @property
    def kind(self) -> str:
        """The handler's name for this kind of layer (``"conv"``, ``"bn"``, ``"linear"``)."""
        return self.handler.kind

    @property
    def module_name(self) -> str:
        """The qualified name of :attr:`module` (the owner of an attribute)."""
        return self.name.rpartition(".")[0] if self.attribute else self.name


class ChannelSpaces(Protocol):
    """The union-find over channel spaces that tracing keeps (see ``_graph``)."""

    def new(self, size: int, name: str, *, units: bool = False) -> int:
        """A new space of ``size`` channels; ``units``: each one is a whole unit (an attention
        head) that the width space does not round to ``round_to``."""
        ...

    def union(self, a: int, b: int, where: str) -> int: ...

    def unite(self, a: Layout, b: Layout, where: str) -> Layout: ...

    def require_multiple(self, space: int, multiple: int) -> None: ...


@dataclass
class TraceStep:
    """What tracing knows about one call of a slimmable module."""

    name: str  # the module's qualified name
    where: str  # how error messages name the call
    in_spaces: Layout  # channel spaces of the input
    in_factor: int  # input features per channel (> 1 after a flatten of H x W maps)
    in_shape: tuple[int, ...] | None
    out_shape: tuple[int, ...]
    batch: int  # batch size of the example inputs
    source: str | None  # the slimmable layer that produced the input, if one did
    existing: SlimLayer | None  # the record of an earlier call of the same module
    spaces: ChannelSpaces
    in_dim: int = 1  # the input's channel dimension (its last one when channels-last)


class CallWidths(NamedTuple):
    """The widths one call of a layer runs at (see :meth:`LayerHandler.run_widths`).

    ``in_parts``/``out_parts`` are ``(full, width)`` per group of a concatenated input or
    output (empty: one group, ``(in_full, w_in)``).
    """

    w_in: int  # all input groups together
    w_out: int
    in_full: int  # channels of the input at full width
    out_full: int
    side: str  # "left": the first channels of each group; "right": the last
    empty: bool  # the output group is at width 0: the output is discarded
    in_parts: tuple[tuple[int, int], ...] = ()
    out_parts: tuple[tuple[int, int], ...] = ()

    def out_span(self) -> slice | torch.Tensor:
        """The output channels kept: a slice, or an index tensor for a concatenation."""
        return positions(self.out_parts or ((self.out_full, self.w_out),), self.side)

    def in_span(self, factor: int = 1) -> slice | torch.Tensor:
        """The input features kept (``factor`` features per channel)."""
        return positions(self.in_parts or ((self.in_full, self.w_in),), self.side, factor)


class CostTerms(Protocol):
    """A sum of ``coef * w[a] * w[b]`` terms (index -1: the constant 1), see ``cost``; a
    layout ``a`` or ``b`` stands for the sum of its groups' widths."""

    def add(self, coef: int, a: int | Layout, b: int | Layout = -1) -> None: ...


@dataclass
class ChannelEvidence:
    """How much each output channel of a layer matters, before reduction.

    ``values`` has the output channels first (``|gamma|`` of shape ``(C,)`` for a
    normaliser, ``|W|`` of shape ``(C, ...)`` for a conv or linear); ``source`` is
    :data:`GAMMA` or :data:`L1`.
    """

    source: str
    values: torch.Tensor

    def per_channel(self, dtype: torch.dtype) -> torch.Tensor:
        """One value per output channel: the sum of ``values`` over the other dimensions."""
        values = self.values.to(dtype)
        return values.reshape(values.shape[0], -1).sum(1)


class LayerHandler:
    """What the supernet needs to know about one kind of layer; subclass and register.

    Attributes:
        kind: A short name (``"conv"``); shown as :attr:`SlimLayer.kind`.
        label: How messages name the module type (``"Conv2d"``).
        normaliser: The layer reads and writes the same channels and rescales each one.
        owns_output: The module's output is the layer's output (``False`` for a tensor its
            owner's forward reads, whose owner's output the supernet must leave alone).
    """

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""
    normaliser: ClassVar[bool] = False
    owns_output: ClassVar[bool] = True

    # -- tracing -------------------------------------------------------------------------
    def trace(self, module: nn.Module, step: TraceStep) -> SlimLayer:
        """The layer record of this call (``step.existing`` for a module called again),
        creating or uniting channel spaces as the layer requires.

        Raises:
            UnsupportedModelError: the call cannot be slimmed; names ``step.where``.
        """
        raise NotImplementedError

    def call(self, step: TraceStep) -> LayerCall | None:
        """What this call adds to the cost model (``None``: nothing, e.g. BN)."""
        return None

    def out_dim(self, step: TraceStep) -> int:
        """The output's channel dimension (the input's, unless the layer moves it)."""
        return step.in_dim

    def output_layer(self, layer: SlimLayer) -> tuple[str, int] | None:
        """A layer whose output channels stay inside its module (attention's heads): the
        child module (its name in the module) that reads them, with this many features per
        channel, and writes the module's output, as a layer of its own. ``None`` (most
        kinds): the module's output is the layer's."""
        return None

    # -- the sliced view in the forward hooks --------------------------------------------
    def run_widths(self, layer: SlimLayer, w_in: int, w_out: int) -> tuple[int, int]:
        """The widths to run the layer at: torch has no zero-channel conv or BN, so a width
        0 runs at the narrowest width the layer allows (its output is then discarded)."""
        return w_in or 1, w_out or 1

    def view(self, layer: SlimLayer, module: nn.Module, at: CallWidths) -> dict[Any, Any]:
        """Swap views of the channels ``at`` keeps into ``module`` for one call; return what
        the restore hook puts back (attribute name -> value; ``(id(store), name)`` ->
        ``(store, original)`` for tensors, see :func:`swap`)."""
        raise NotImplementedError

    # -- extraction ----------------------------------------------------------------------
    def slice(
        self, layer: SlimLayer, module: nn.Module, in_idx: torch.Tensor, out_idx: torch.Tensor
    ) -> None:
        """Keep (in this order) the given input and output channels of ``module``, in place;
        the indices are already on the weights' device."""
        raise NotImplementedError

    # -- cost ----------------------------------------------------------------------------
    def cost_terms(
        self, layer: SlimLayer, in_g: Layout, out_g: Layout, macs: CostTerms, params: CostTerms
    ) -> None:
        """Add the layer's MACs (per sample, all calls) and parameters as terms in its input
        groups ``in_g`` and output groups ``out_g`` (layouts: each stands for the sum of its
        groups' widths, which is what the layer's input or output channel count is)."""
        raise NotImplementedError

    # -- importance ----------------------------------------------------------------------
    def importance(self, layer: SlimLayer) -> ChannelEvidence | None:
        """Evidence on the importance of the layer's output channels (``None``: none)."""
        return None


_HANDLERS: dict[type[nn.Module], LayerHandler] = {}

H = TypeVar("H", bound=type[LayerHandler])


def register_layer(*module_types: type[nn.Module]) -> Callable[[H], H]:
    """Class decorator: the handler class handles these module types (and subclasses)."""

    def decorate(cls: H) -> H:
        handler = cls()
        for module_type in module_types:
            _HANDLERS[module_type] = handler
        return cls

    return decorate


def unregister_layer(module_type: type[nn.Module]) -> None:
    """Forget the handler registered for ``module_type`` (tests, plug-ins)."""
    _HANDLERS.pop(module_type, None)


def handler_for(module: nn.Module) -> LayerHandler | None:
    """The handler registered for the most specific type of ``module`` (``None``: not a
    slimmable layer)."""
    for cls in type(module).__mro__:
        handler = _HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


def registered_types() -> tuple[type[nn.Module], ...]:
    """The module types that have a handler, in registration order."""
    return tuple(_HANDLERS)


def registered_labels() -> str:
    """``"Conv2d, BatchNorm and Linear"``: how messages list the slimmable layer kinds."""
    labels = list(dict.fromkeys(h.label for h in _HANDLERS.values()))
    return ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else "".join(labels)


def span(full: int, width: int, side: str) -> slice:
    """BCNet's channels of a width: ``[0, width)`` on the left, ``[full - width, full)`` on
    the right."""
    return slice(0, width) if side == "left" else slice(full - width, full)


def positions(
    parts: tuple[tuple[int, int], ...], side: str, factor: int = 1
) -> slice | torch.Tensor:
    """The kept positions of a channel dimension made of groups ``(full, width)`` in order,
    each keeping its BCNet side, with ``factor`` features per channel: a slice for one group,
    an index tensor for several."""
    if len(parts) == 1:
        full, width = parts[0]
        return span(full * factor, width * factor, side)
    kept, offset = [], 0
    for full, width in parts:
        part = span(full, width, side)
        kept.append(torch.arange(offset + part.start, offset + part.stop))
        offset += full
    channels = torch.cat(kept)
    return (channels[:, None] * factor + torch.arange(factor)).reshape(-1)


def swap(store: dict[str, Any], saved: dict[Any, Any], name: str, value: Any) -> None:
    """Replace ``store[name]`` by ``value`` (or by the rows a slice or an index tensor
    selects), remembering the original.

    ``store`` is a module's ``_parameters`` or ``_buffers``; writing the dict directly lets a
    plain tensor (a differentiable view) stand in for the parameter during one call. Rows
    picked by an index tensor are a copy, not a view: for a buffer (BN running statistics
    updated in train mode) the restore writes the copy back.
    """
    current = store.get(name)
    if current is None:
        return
    if isinstance(value, torch.Tensor) and not value.is_floating_point():
        rows = value.to(current.device)
        store[name] = current[rows]
        written = () if isinstance(current, nn.Parameter) else (rows, store[name])
        saved[(id(store), name)] = (store, current, *written)
        return
    saved[(id(store), name)] = (store, current)
    store[name] = current[value] if isinstance(value, slice) else value


def restore(module: nn.Module, saved: dict[Any, Any]) -> None:
    """Undo the :func:`swap` calls and attribute changes that :meth:`LayerHandler.view`
    recorded in ``saved``."""
    for key, value in saved.items():
        if not isinstance(key, tuple):
            setattr(module, key, value)
            continue
        store, original, *written = value
        if written:  # an indexed copy of a buffer: keep what the call wrote into it
            with torch.no_grad():
                original[written[0]] = written[1]
        store[key[1]] = original


def replace_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """``module.name = Parameter(value)``, keeping ``requires_grad`` (extraction)."""
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
