"""Depth pruning: which groups' width 0 removes a whole residual block.

A mixin of :class:`~.supernet.Supernet` (it reads the supernet's model, groups, layers and
active widths): the probe runs the wrapped model once per candidate group at width 0.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .space import WidthSpace
    from .supernet import LayerEntry

__all__ = ["RemovableBlocks"]


class RemovableBlocks:
    """Finds the residual blocks that a group's width 0 turns into the identity."""

    # what the supernet provides
    model: nn.Module
    space: WidthSpace
    layers: list[LayerEntry]  # a property of the supernet
    _widths: list[int] | None  # active widths per group (None: full); the probe sets them

    @torch.no_grad()
    def _find_removable_blocks(self, example_inputs: tuple[torch.Tensor, ...]) -> dict[int, str]:
        """Groups whose width 0 turns a whole residual block into the identity.

        A candidate block is any module enclosing every layer of the group. Whether width 0
        really removes it is not assumed from the architecture but checked: with the group
        at 0, the block's output must equal its input exactly on the example input (e.g.
        ``relu(0 + x) == x`` for post-ReLU inputs). Then extraction may drop the block.
        """
        modules = dict(self.model.named_modules())
        was_training = self.model.training
        self.model.eval()
        generator = torch.Generator().manual_seed(0)
        inputs = tuple(  # the example's dtype and device (a float64 model gets float64)
            torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            for x in example_inputs
        )
        full = [g.max_channels for g in self.space.groups]
        found: dict[int, str] = {}
        try:
            shaped = self._same_shape_modules(inputs)
            for gi, group in enumerate(self.space.groups):
                if group.fixed:
                    continue
                names = [lay.name.split(".")[:-1] for lay, i, o in self.layers if gi in (*i, *o)]
                prefix = names[0]
                for parts in names[1:]:
                    common = 0
                    while common < min(len(prefix), len(parts)) and prefix[common] == parts[common]:
                        common += 1
                    prefix = prefix[:common]
                candidates = [".".join(prefix[:k]) for k in range(len(prefix), 0, -1)]
                # only a module whose output has its input's shape can become the identity
                candidates = [c for c in candidates if c not in found.values() and c in shaped]
                if not candidates:
                    continue
                seen: dict[str, tuple[Any, Any]] = {}

                def capture(module: nn.Module, args: Any, out: Any, name: str, seen=seen) -> None:
                    # clone: a later in-place op (``result += x``) must not change what we saw
                    first = args[0] if args else None
                    tensors = isinstance(first, torch.Tensor) and isinstance(out, torch.Tensor)
                    if name not in seen and tensors:
                        seen[name] = (first.clone(), out.clone())

                handles = [
                    modules[c].register_forward_hook(functools.partial(capture, name=c))
                    for c in candidates
                ]
                self._widths = [0 if i == gi else w for i, w in enumerate(full)]
                try:
                    self.model(*inputs)
                except Exception:  # any op that cannot take zero channels: not removable
                    continue
                finally:
                    self._widths = None
                    for h in handles:
                        h.remove()
                for c in candidates:
                    block_in, block_out = seen.get(c, (None, None))
                    if (
                        isinstance(block_in, torch.Tensor)
                        and isinstance(block_out, torch.Tensor)
                        and block_in.shape == block_out.shape
                        and torch.equal(block_in, block_out)
                    ):
                        found[gi] = c
                        break
        finally:
            self._widths = None
            self.model.train(was_training)
        return found

    def _same_shape_modules(self, inputs: tuple[torch.Tensor, ...]) -> set[str]:
        """Names of the modules whose tensor output has the shape of their first input, in
        one full-width forward: the only candidates for a removable block (this spares a
        probe per group in nets without residual blocks, such as DenseNet)."""
        found: set[str] = set()

        def record(module: nn.Module, args: Any, out: Any, name: str) -> None:
            first = args[0] if args else None
            tensors = isinstance(first, torch.Tensor) and isinstance(out, torch.Tensor)
            if tensors and first.shape == out.shape:
                found.add(name)

        handles = [
            module.register_forward_hook(functools.partial(record, name=name))
            for name, module in self.model.named_modules()
            if name
        ]
        try:
            self.model(*inputs)
        finally:
            for h in handles:
                h.remove()
        return found

    def _cost_gates(self, blocks: dict[int, str]) -> dict[str, int]:
        """Layer or parameter-owner name -> group whose width 0 removes it (its block)."""
        gates: dict[str, int] = {}
        for gi, block in blocks.items():
            for name, _ in self.model.named_modules():
                if name == block or name.startswith(block + "."):  # the block's own params too
                    gates[name] = gi
        return gates
