"""A slimmable supernet that wraps any traceable CNN in place.

Slimmable layers (conv, BN, linear: every module type with a handler, see :mod:`.handlers`)
keep their full weights; while a width config is active, a forward pre-hook swaps in the
view its handler makes (slices of weights, BN running stats) for the duration of each call,
then a forward hook restores them. Slices are views, so gradients and BN running-stat
updates reach the full tensors. BCNet's bilateral coupling: a width ``c`` of ``C`` uses
channels ``[0, c)`` on the *left* side and ``[C - c, C)`` on the *right*.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from ._blocks import RemovableBlocks
from ._graph import TraceResult, trace_channels
from .cost import CostModel
from .errors import UnsupportedModelError
from .handlers import CallWidths, SlimLayer, positions, restore, span
from .space import WidthSpace, make_group

__all__ = ["SIDES", "LayerEntry", "Side", "Supernet", "slice_layer"]

Side = Literal["left", "right"]
SIDES: tuple[Side, Side] = ("left", "right")


class LayerEntry(NamedTuple):
    """One row of :attr:`Supernet.layers`: a slimmable layer and the groups it reads and writes
    (indices into ``space.groups``), in the order their channels lie along the input's and
    the output's channel dimension: one group, or several when it reads or normalises a
    concatenation (see :meth:`Supernet.segments`)."""

    layer: SlimLayer
    in_groups: tuple[int, ...]
    out_groups: tuple[int, ...]


class Supernet(RemovableBlocks, nn.Module):
    """A model whose conv/BN/linear widths can be set per channel group.

    Build it with :meth:`from_model`; run subnets with :meth:`active`; count their cost
    with :meth:`macs`/:meth:`params`; turn one into a dense model with :meth:`extract`.

    Attributes:
        model: The wrapped model (its own class, its own forward).
        space: The width space (groups in graph order).
        meta: How the supernet was built (model name, arguments, width-space settings), so a
            checkpoint can rebuild it.
        frozen: Group name -> why it keeps full width, for the groups an op the supernet
            cannot slim across reads (a channel shuffle, a reshape to a constant channel
            count).
    """

    def __init__(
        self,
        model: nn.Module,
        trace: TraceResult,
        *,
        bins: int,
        min_bins: int,
        round_to: int,
        meta: dict[str, Any] | None = None,
        example_inputs: tuple[torch.Tensor, ...] = (),
    ) -> None:
        super().__init__()
        self.model = model
        group_of_space = {space: i for i, space in enumerate(trace.order)}
        self.space = WidthSpace(
            [
                make_group(
                    trace.space_name[s],
                    trace.space_size[s],
                    fixed=s in trace.fixed,
                    bins=bins,
                    min_bins=min_bins,
                    # attention heads are whole units: ``round_to`` is for channels
                    round_to=int(np.lcm(1 if s in trace.units else round_to, trace.multiple[s])),
                )
                for s in trace.order
            ]
        )
        if trace.frozen and not self.space.searchable:
            first = next(iter(trace.frozen.values()))
            raise UnsupportedModelError(f"no channel group can be slimmed: {first}")
        self._blocks = {trace.space_name[s]: trace.multiple[s] for s in trace.order}
        self.frozen: dict[str, str] = {
            trace.space_name[s]: reason for s, reason in trace.frozen.items()
        }
        self.meta: dict[str, Any] = dict(meta or {})
        self.meta.update(bins=bins, min_bins=min_bins, round_to=round_to)
        self._layers: list[LayerEntry] = [
            LayerEntry(
                layer,
                tuple(group_of_space[s] for s in layer.in_spaces),
                tuple(group_of_space[s] for s in layer.out_spaces),
            )
            for layer in trace.layers
        ]
        self._widths: list[int] | None = None
        self._side: str = "left"
        self._saved: dict[int, list[dict[str, Any]]] = {}
        self._hook_handles: list[Any] = []
        restore_hook = self._make_restore_hook()
        for layer, in_gs, out_gs in self._layers:
            pre = self._make_pre_hook(layer, in_gs, out_gs)
            self._hook_handles.append(layer.module.register_forward_pre_hook(pre))
            self._hook_handles.append(
                layer.module.register_forward_hook(restore_hook, always_call=True)
            )
        blocks = self._find_removable_blocks(example_inputs) if example_inputs else {}
        # a block holding frozen ops' MACs keeps them: the cost model could not drop them
        blocks = {g: b for g, b in blocks.items() if b not in trace.constant_macs_of}
        self.space = WidthSpace(
            [
                dataclasses.replace(g, block=blocks.get(i, ""))
                for i, g in enumerate(self.space.groups)
            ]
        )
        self.cost = CostModel(trace, group_of_space, gates=self._cost_gates(blocks))

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        *,
        bins: int = 10,
        min_bins: int = 1,
        round_to: int = 1,
        meta: dict[str, Any] | None = None,
    ) -> Supernet:
        """Trace ``model`` once and make it slimmable in place.

        Args:
            model: Any torch.fx-traceable CNN (torchvision, timm, the built-in ResNets).
            example_inputs: A tensor (or tuple) of the input shape; batch size is irrelevant.
            bins: Width steps per group (BCNet uses 20 on ImageNet).
            min_bins: Smallest bin a group may shrink to.
            round_to: Channel multiple of every width (8 suits hardware; 1 for tiny nets).
            meta: Extra facts to keep with the supernet (model name and arguments).

        Raises:
            UnsupportedModelError: the model cannot be traced or slimmed; names the op.
            ValueError: bad bin settings.
        """
        if bins < 1 or not 1 <= min_bins <= bins:
            raise ValueError(f"need bins >= 1 and 1 <= min_bins <= bins, got {bins}, {min_bins}")
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        trace = trace_channels(model, tuple(example_inputs))
        return cls(
            model,
            trace,
            bins=bins,
            min_bins=min_bins,
            round_to=round_to,
            meta=meta,
            example_inputs=tuple(example_inputs),
        )

    @property
    def layers(self) -> list[LayerEntry]:
        """Every slimmable layer with the indices of the groups it reads and writes, in graph
        order; ``entry.layer.handler`` knows its kind. The public layer table: every module
        outside this one reads layers through it."""
        return list(self._layers)

    def segments(self, groups: Sequence[int]) -> list[tuple[int, slice]]:
        """Where each of ``groups`` (a :class:`LayerEntry`'s ``in_groups``/``out_groups``)
        lies along the channel dimension at full width: ``(group index, positions)``."""
        out, offset = [], 0
        for g in groups:
            size = self.space.groups[g].max_channels
            out.append((g, slice(offset, offset + size)))
            offset += size
        return out

    def layout_index(
        self, groups: Sequence[int], per_group: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """The positions along a channel dimension laid out as ``groups`` that hold each
        group's channels ``per_group[name]`` (in order): what a layer keeps of it."""
        parts = [
            per_group[self.space.groups[g].name] + rows.start for g, rows in self.segments(groups)
        ]
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    def channel_blocks(self) -> dict[str, int]:
        """Per group, the run of channels that must stay together when choosing or
        reordering channels: the multiple its widths must be, which tracing required (the
        lcm of the conv-group widths of its grouped convs; the head size where the channels
        are ``nn.MultiheadAttention``'s heads; 1 for everything else)."""
        return dict(self._blocks)

    # -- running subnets -----------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def set_active(self, cfg: Mapping[str, int] | None, side: Side = "left") -> None:
        """Make ``cfg`` the width of every later forward (``None``: full width)."""
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        if cfg is None:
            self._widths = None
        else:
            full = self.space.validate(cfg)
            self._widths = [full[g.name] for g in self.space.groups]
        self._side = side

    @contextlib.contextmanager
    def active(self, cfg: Mapping[str, int] | None, side: Side = "left") -> Iterator[Supernet]:
        """Run the subnet ``cfg`` (one side of it) inside the block, then restore."""
        previous = (self._widths, self._side)
        self.set_active(cfg, side)
        try:
            yield self
        finally:
            self._widths, self._side = previous

    def _make_pre_hook(self, layer: SlimLayer, in_gs: tuple[int, ...], out_gs: tuple[int, ...]):
        in_fulls = [self.space.groups[g].max_channels for g in in_gs]
        out_fulls = [self.space.groups[g].max_channels for g in out_gs]
        in_full, out_full = sum(in_fulls), sum(out_fulls)
        source_in_gs = next(
            (
                i
                for other, i, _ in self._layers
                if other.name == layer.source and not other.group_width
            ),
            None,
        )

        def parts(fulls: list[int], groups: tuple[int, ...], widths: list[int], run: int):
            if len(groups) == 1:
                return ()
            kept = [widths[g] for g in groups]
            # a stand-in width (see below) reads zeros: any ``run`` channels will do
            return (
                tuple(zip(fulls, kept, strict=True)) if sum(kept) == run else ((sum(fulls), run),)
            )

        handler = layer.handler

        def pre_hook(module: nn.Module, args: Any) -> Any:
            widths = self._widths
            if widths is None:
                return None
            w_in, w_out = sum(widths[g] for g in in_gs), sum(widths[g] for g in out_gs)
            # Width 0 (a removed residual block): torch has no zero-channel conv/BN, so run
            # the layer at its narrowest width on zeros and let the restore hook return an
            # empty tensor ("empty") or zeros ("dead": its input channels are all removed).
            # A tensor its owner's forward reads leaves the owner's input and output alone.
            owns = handler.owns_output
            empty = owns and w_out == 0
            dead = owns and (
                w_in == 0 or (source_in_gs is not None and not any(widths[g] for g in source_in_gs))
            )
            run_in, run_out = handler.run_widths(layer, w_in, w_out)
            features, dim = run_in * layer.in_factor, layer.in_dim
            stand_in = (empty or (owns and w_in == 0)) and bool(args)
            replace_input = stand_in and args[0].shape[dim] != features
            at = CallWidths(
                run_in,
                run_out,
                in_full,
                out_full,
                self._side,
                empty,
                parts(in_fulls, in_gs, widths, run_in),
                parts(out_fulls, out_gs, widths, run_out),
            )
            saved = handler.view(layer, module, at)
            saved["__output__"] = ("empty" if empty else "dead" if dead else None, layer.out_dim)
            self._saved.setdefault(id(module), []).append(saved)
            if replace_input:
                x = args[0]
                return (x.new_zeros(*x.shape[:dim], features, *x.shape[dim + 1 :]),)
            return None

        return pre_hook

    def _make_restore_hook(self):
        # A closure, not a bound method: deep copies of the model must not copy the supernet.
        saved_by_module = self._saved

        def restore_hook(module: nn.Module, args: Any, output: Any) -> Any:
            stack = saved_by_module.get(id(module))
            if not stack:
                return None
            saved = stack.pop()
            mode, dim = saved.pop("__output__", (None, 1))
            restore(module, saved)
            if mode == "empty":
                return output.narrow(dim, 0, 0)
            if mode == "dead":
                return torch.zeros_like(output)
            return None

        return restore_hook

    def active_spans(self) -> dict[int, slice | torch.Tensor]:
        """``id(module) ->`` the positions (a slice, or an index tensor for a concatenation)
        of every slimmable layer's output channels in the active config (all when none); BN
        recalibration resets its statistics on these."""
        spans = {}
        for layer, _, out_gs in self._layers:
            fulls = [self.space.groups[g].max_channels for g in out_gs]
            widths = fulls if self._widths is None else [self._widths[g] for g in out_gs]
            spans[id(layer.module)] = positions(tuple(zip(fulls, widths, strict=True)), self._side)
        return spans

    # -- cost ----------------------------------------------------------------------------
    def widths_vector(self, cfg: Mapping[str, int]) -> np.ndarray:
        """A config as a width vector in group order (validated)."""
        return self.space.encode([cfg])[0]

    def macs(self, cfg: Mapping[str, int] | None = None) -> int:
        """Exact MACs per sample of the subnet ``cfg`` (``None``: full model)."""
        return self.cost.macs(self.widths_vector(cfg if cfg is not None else self.space.max()))

    def params(self, cfg: Mapping[str, int] | None = None) -> int:
        """Exact parameter count of the subnet ``cfg`` once extracted."""
        return self.cost.params(self.widths_vector(cfg if cfg is not None else self.space.max()))

    # -- extraction ----------------------------------------------------------------------
    def channel_indices(
        self, cfg: Mapping[str, int], side: Side = "left"
    ) -> dict[str, torch.Tensor]:
        """The channels each group keeps on ``side``, as sorted index tensors."""
        full = self.space.validate(cfg)
        if side not in SIDES:
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        out = {}
        for g in self.space.groups:
            kept = span(g.max_channels, full[g.name], side)
            out[g.name] = torch.arange(kept.start, kept.stop)
        return out

    def extract(
        self,
        cfg: Mapping[str, int],
        side: Side = "left",
        *,
        indices: Mapping[str, torch.Tensor | Sequence[int]] | None = None,
    ) -> nn.Module:
        """A dense copy of the wrapped model (same class) with only the chosen channels.

        Args:
            cfg: The width config.
            side: Which channels to inherit (``"left"``/``"right"``), unless ``indices``.
            indices: Per group, the channels to keep (any subset of the config's width, e.g.
                L1-norm top-k); overrides ``side``. Grouped convs need whole conv groups.

        Returns:
            A plain ``nn.Module`` with no hooks of this package: saving it with ``torch.save``
            and loading it needs only the model's own classes.
        """
        full = self.space.validate(cfg)
        keep = self.channel_indices(full, side)
        for name, idx in (indices or {}).items():
            idx = torch.as_tensor(idx, dtype=torch.long)
            if name not in self.space.index:
                raise ValueError(f"unknown group {name!r} in channel indices")
            group = self.space[name]
            if len(idx) != full[name] or len(set(idx.tolist())) != len(idx):
                raise ValueError(f"group {name!r}: need {full[name]} distinct channel indices")
            if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= group.max_channels):
                raise ValueError(f"group {name!r}: channel index out of range")
            keep[name] = idx
        saved_state, self._widths = self._widths, None
        try:
            model = copy.deepcopy(self.model)
        finally:
            self._widths = saved_state
        hook_ids = {h.id for h in self._hook_handles}
        copies = dict(model.named_modules())
        for module in copies.values():
            for hooks in (
                module._forward_pre_hooks,
                module._forward_hooks,
                module._forward_hooks_always_called,
            ):
                for hid in hook_ids & set(hooks):
                    del hooks[hid]
        removed = [g.block for g in self.space.groups if g.removable and full[g.name] == 0]
        for block in removed:  # depth pruning: the whole residual block becomes the identity
            parent_name, _, child = block.rpartition(".")
            setattr(copies[parent_name] if parent_name else model, child, nn.Identity())
        with torch.no_grad():
            for layer, in_gs, out_gs in self._layers:
                if any(layer.name.startswith(block + ".") for block in removed):
                    continue
                in_idx, out_idx = self.layout_index(in_gs, keep), self.layout_index(out_gs, keep)
                slice_layer(copies[layer.module_name], layer, in_idx, out_idx)
        return model


def slice_layer(
    module: nn.Module, layer: SlimLayer, in_idx: torch.Tensor, out_idx: torch.Tensor
) -> None:
    """Keep (in this order) the given input and output channels of one slimmable layer, in
    place: a subset shrinks it (extraction), a permutation reorders it (channel ordering)."""
    device = next(module.parameters(), torch.empty(0)).device
    layer.handler.slice(layer, module, in_idx.to(device), out_idx.to(device))
