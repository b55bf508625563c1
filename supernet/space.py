"""The width space: channel groups, their allowed widths, and width configs.

A *group* is a set of channels that must share one width (a conv's outputs, the BN after
it, every tensor joined to it by a residual add, a depthwise conv on it). A *width config*
maps group name -> channels; it is a plain ``dict`` so it serialises to JSON as is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Group", "WidthConfig", "WidthSpace", "bin_widths"]

WidthConfig = dict[str, int]


def bin_widths(max_channels: int, bins: int, round_to: int) -> list[int]:
    """Width of every bin ``k = 0..bins``, mirrored so that ``w(bins - k) == C - w(k)``.

    The mirror makes complementary sampling exact: the left subnet of width ``w(k)`` and the
    left subnet of width ``w(bins - k)`` together cover every channel the same number of times.
    """
    widths = [0] * (bins + 1)
    for k in range(bins // 2 + 1):
        units = max_channels * k / (bins * round_to)
        widths[k] = min(max_channels, round_to * math.floor(units + 0.5))
    for k in range(bins // 2 + 1, bins + 1):
        widths[k] = max_channels - widths[bins - k]
    return widths


@dataclass(frozen=True)
class Group:
    """Channels that share one width.

    Attributes:
        name: Name of the module that first produces these channels (``"input"`` for the
            network input).
        max_channels: Full width ``C``.
        choices: Allowed widths, sorted ascending; ``[C]`` for a fixed group.
        fixed: True for groups that must keep full width (network input, classifier output).
        bins: Number of equal width steps ``C / bins``.
        min_bins: Smallest allowed bin.
        round_to: Channel multiple the widths are rounded to (includes grouped-conv group
            widths).
        bin_to_width: Width of each bin ``0..bins`` (``bin_to_width[bins] == C``).
        block: For a group that may be 0 (depth pruning), the residual block that width 0
            removes; ``""`` when the group cannot be removed. Width 0 is valid for such
            groups but is not among ``choices`` (samplers never draw it).
    """

    name: str
    max_channels: int
    choices: tuple[int, ...]
    fixed: bool = False
    bins: int = 1
    min_bins: int = 1
    round_to: int = 1
    bin_to_width: tuple[int, ...] = field(default=(), repr=False)
    block: str = ""

    @property
    def removable(self) -> bool:
        return bool(self.block)


def make_group(
    name: str, max_channels: int, *, fixed: bool, bins: int, min_bins: int, round_to: int
) -> Group:
    if fixed:
        return Group(name, max_channels, (max_channels,), True, 1, 1, 1, (0, max_channels))
    round_to = max(1, min(round_to, max_channels))
    per_bin = bin_widths(max_channels, bins, round_to)
    choices = sorted({w for w in per_bin[min_bins:] if w > 0})
    return Group(
        name, max_channels, tuple(choices), False, bins, min_bins, round_to, tuple(per_bin)
    )


class WidthSpace:
    """All groups of a supernet, in graph order, with config validation and sampling."""

    def __init__(self, groups: Sequence[Group]) -> None:
        self.groups: list[Group] = list(groups)
        self.index: dict[str, int] = {g.name: i for i, g in enumerate(self.groups)}
        self.searchable: list[Group] = [g for g in self.groups if not g.fixed]

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, name: str) -> Group:
        return self.groups[self.index[name]]

    def __repr__(self) -> str:
        return f"WidthSpace({len(self.searchable)} searchable groups, {len(self.groups)} in all)"

    # -- configs -------------------------------------------------------------------------
    def validate(self, cfg: Mapping[str, int]) -> WidthConfig:
        """Return a full config (fixed groups filled in) or raise ``ValueError`` naming the group.

        Fixed groups may be omitted; every searchable group must be present with an allowed
        width, and unknown names are rejected (they usually mean the config belongs to another
        supernet).
        """
        if not isinstance(cfg, Mapping):
            raise ValueError(f"a width config must be a mapping group -> channels, got {cfg!r}")
        for name in cfg:
            if name not in self.index:
                raise ValueError(f"unknown group {name!r} in width config (not in this supernet)")
        full: WidthConfig = {}
        for group in self.groups:
            if group.name not in cfg:
                if group.fixed:
                    full[group.name] = group.max_channels
                    continue
                raise ValueError(f"width config is missing group {group.name!r}")
            value = cfg[group.name]
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"width of group {group.name!r} must be an int, got {value!r}")
            if int(value) not in group.choices and not (value == 0 and group.removable):
                raise ValueError(
                    f"width {value} is not allowed for group {group.name!r} "
                    f"(choices: {_short(group.choices)})"
                )
            full[group.name] = int(value)
        return full

    def encode(self, cfgs: Iterable[Mapping[str, int]]) -> np.ndarray:
        """Configs -> int64 matrix ``(n, len(groups))`` in group order, validating each."""
        rows = [[full[g.name] for g in self.groups] for full in map(self.validate, cfgs)]
        return np.asarray(rows, dtype=np.int64).reshape(-1, len(self.groups))

    def decode(self, row: Sequence[int]) -> WidthConfig:
        return {g.name: int(w) for g, w in zip(self.groups, row, strict=True)}

    # -- canonical configs ---------------------------------------------------------------
    def max(self) -> WidthConfig:
        return {g.name: g.choices[-1] for g in self.groups}

    def min(self) -> WidthConfig:
        return {g.name: g.choices[0] for g in self.groups}

    def uniform(self, ratio: float) -> WidthConfig:
        """Every searchable group at the allowed width nearest to ``ratio * C`` (ties widen)."""
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"uniform width ratio must be in (0, 1], got {ratio}")
        return {g.name: _nearest(g.choices, ratio * g.max_channels) for g in self.groups}

    def sample(self, rng: np.random.Generator | int | None = None) -> WidthConfig:
        """A config with each searchable group's width drawn uniformly from its choices."""
        rng = np.random.default_rng(rng)
        return {g.name: int(g.choices[rng.integers(len(g.choices))]) for g in self.groups}


def _nearest(choices: Sequence[int], target: float) -> int:
    return min(choices, key=lambda w: (abs(w - target), -w))


def _short(values: Sequence[int]) -> str:
    if len(values) <= 12:
        return ", ".join(map(str, values))
    return ", ".join(map(str, values[:5])) + ", ..., " + ", ".join(map(str, values[-3:]))
