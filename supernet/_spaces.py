"""Channel spaces: which traced channels share one width.

A *space* is a run of channels some op produced; ops that add, multiply or otherwise join two
tensors' channels one to one unite their spaces (:class:`Spaces`, a union-find), and each
root that is left becomes one searchable group. A tracked tensor's :class:`Channels` say
which spaces its channel dimension holds, in order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .errors import UnsupportedModelError
from .handlers import Layout

__all__ = ["FROZEN", "Channels", "Spaces"]


class Channels(NamedTuple):
    """Where a tracked tensor's channels are."""

    layout: Layout  # the spaces its channel dimension concatenates, in order
    factor: int = 1  # features per channel (> 1 after a flatten of H x W maps)
    dim: int = 1  # the dimension that holds the channels


# The channels of a tensor no group follows any more: the output of an op the supernet cannot
# slim across (a channel shuffle, a reshape to a constant channel count). Its inputs' groups
# keep full width, so the op always sees the full tensor and stays exact; a layer reading such
# a tensor reads fixed channels.
FROZEN = Channels((), 1, -1)


class Spaces:
    """Union-find over channel spaces."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.fixed: list[bool] = []
        self.multiple: list[int] = []
        self.reason: list[str] = []  # why a space was frozen ("" if it was not)
        self.units: list[bool] = []  # each channel is a whole unit (a head): never rounded

    def new(self, size: int, name: str, *, fixed: bool = False, units: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.fixed.append(fixed)
        self.multiple.append(1)
        self.reason.append("")
        self.units.append(units)
        return len(self.parent) - 1

    def freeze(self, layout: Layout, reason: str) -> None:
        """Keep every space of ``layout`` at full width, for ``reason`` (the first one stays)."""
        for space in layout:
            root = self.find(space)
            self.fixed[root] = True
            self.reason[root] = self.reason[root] or reason

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
        self.reason[keep] = self.reason[keep] or self.reason[drop]
        self.units[keep] = self.units[keep] or self.units[drop]
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


def _sizes(sizes: list[int]) -> str:
    return " + ".join(map(str, sizes)) if len(sizes) > 1 else f"{sizes[0]} channels"
