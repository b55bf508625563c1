"""Searchable groups as choice indices: the vectorised view every strategy works in.

Strategies move each searchable group along its sorted choices; fixed groups never move.
A config is then a small int vector of choice indices, and whole batches of them go through
the cost model in one call (``sn.cost.macs`` on an ``(n, G)`` width matrix).

Budgets are compared with :meth:`IndexSpace.cost`: MACs by default, or what the space's
:class:`~.constraints.Constraints` make of a latency budget and further limits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from widthsearch.supernet import Supernet, WidthConfig

from ._macs import MacsPolynomial
from .constraints import NS_PER_MS, Constraints

__all__ = ["IndexSpace"]


class IndexSpace:
    """Choice-index view of a supernet's width space.

    Attributes:
        sn: The supernet.
        names: Searchable group names, in graph order.
        choices: Per searchable group, its allowed widths (ascending int arrays).
        sizes: Number of choices per searchable group.
        positions: Column of each searchable group in the full ``(n, G)`` width matrix.

    Args:
        sn: The supernet.
        removable_zero: Add width 0 to the choices of groups with ``removable`` set (depth
            pruning: the block is dropped). The core does not mark groups removable yet, so
            today this changes nothing.
        constraints: What :meth:`cost` measures (default: plain MACs, no further limit).
    """

    def __init__(
        self,
        sn: Supernet,
        *,
        removable_zero: bool = False,
        constraints: Constraints | None = None,
    ) -> None:
        self.sn = sn
        self.constraints = constraints or Constraints()
        groups = sn.space.searchable
        self.names: list[str] = [g.name for g in groups]
        self.choices: list[np.ndarray] = [
            np.asarray(_choices(g, removable_zero), dtype=np.int64) for g in groups
        ]
        self.sizes = np.array([len(c) for c in self.choices], dtype=np.int64)
        self.positions = np.array([sn.space.index[n] for n in self.names], dtype=np.int64)
        self.max_channels = np.array([g.max_channels for g in groups], dtype=np.int64)
        self._base = sn.widths_vector(sn.space.max())  # fixed groups at their only width
        # padded choice table: row g, column k -> width (repeat the last for short rows)
        width = int(self.sizes.max()) if len(self.sizes) else 1
        self._table = (
            np.stack([np.pad(c, (0, width - len(c)), mode="edge") for c in self.choices])
            if len(self.choices)
            else np.zeros((0, 1), dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self.names)

    # -- conversions ---------------------------------------------------------------------
    def widths(self, idx: np.ndarray) -> np.ndarray:
        """Choice indices ``(n, S)`` or ``(S,)`` -> full width matrix ``(n, G)`` or ``(G,)``."""
        idx = np.asarray(idx, dtype=np.int64)
        single = idx.ndim == 1
        idx = np.atleast_2d(idx)
        out = np.repeat(self._base[None, :], len(idx), axis=0)
        out[:, self.positions] = self._table[np.arange(len(self)), idx]
        return out[0] if single else out

    def macs(self, idx: np.ndarray):
        """Exact MACs of one index vector (-> int) or a batch (-> int64 array)."""
        return self.sn.cost.macs(self.widths(idx))

    def cost(self, idx: np.ndarray):
        """What budgets are compared with (int or int64 array): MACs, or predicted latency
        in ns; above every budget where a further limit is broken (see ``constraints``)."""
        return self.constraints.cost(self.sn, self.widths(idx))

    def params(self, idx: np.ndarray) -> int:
        return int(self.sn.cost.params(self.widths(idx)))

    def latency_ms(self, idx: np.ndarray) -> float | None:
        """Predicted latency of one index vector (``None`` without a latency table)."""
        value = self.constraints.latency_ms(self.widths(idx))
        return None if value is None else float(value)

    def expected_cost(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Expected budgeted measure (MACs or ns; further limits ignored) when searchable group
        ``j`` takes choice ``k`` with probability ``probs[j][k]``, independently; exact and
        differentiable."""
        if self.constraints.measure == "latency":
            given = {
                int(p): (c, q) for p, c, q in zip(self.positions, self.choices, probs, strict=True)
            }
            return self.constraints.latency.expected_torch(given) * NS_PER_MS
        if not hasattr(self, "_poly"):
            self._poly = MacsPolynomial(self.sn)
            self._full = torch.as_tensor(self._base, dtype=torch.float64)
        pairs = [
            (p.double(), torch.as_tensor(c, dtype=torch.float64))
            for p, c in zip(probs, self.choices, strict=True)
        ]
        means = torch.stack([p @ c for p, c in pairs])
        seconds = torch.stack([p @ c**2 for p, c in pairs])
        zeros = torch.stack([p[0] if int(c[0]) == 0 else p.new_zeros(()) for p, c in pairs])
        pos = torch.as_tensor(self.positions)
        mean = self._full.index_put((pos,), means)
        second = (self._full**2).index_put((pos,), seconds)
        zero = torch.zeros_like(self._full).index_put((pos,), zeros)
        return self._poly.expected_torch(mean, second, zero)

    def config(self, idx: np.ndarray) -> WidthConfig:
        """Index vector -> full width config (fixed groups included)."""
        return self.sn.space.decode(self.widths(idx))

    def index_of(self, cfg: Mapping[str, int]) -> np.ndarray:
        """Width config -> index vector (validated)."""
        full = self.sn.space.validate(cfg)
        pairs = zip(self.names, self.choices, strict=True)
        return np.array([int(np.searchsorted(c, full[n])) for n, c in pairs], dtype=np.int64)

    def snap_down(self, targets: np.ndarray) -> np.ndarray:
        """Per group, the index of the widest choice <= target (the narrowest if none)."""
        targets = np.asarray(targets, dtype=np.float64)
        single = targets.ndim == 1
        targets = np.atleast_2d(targets)
        out = np.empty(targets.shape, dtype=np.int64)
        for j, c in enumerate(self.choices):
            out[:, j] = np.clip(np.searchsorted(c, targets[:, j] + 1e-9, side="right") - 1, 0, None)
        return out[0] if single else out

    # -- canonical configs ---------------------------------------------------------------
    def min_index(self) -> np.ndarray:
        return np.zeros(len(self), dtype=np.int64)

    def max_index(self) -> np.ndarray:
        return self.sizes - 1

    def uniform_indices(self) -> np.ndarray:
        """Distinct uniform configs (``sn.space.uniform(r)`` for every choice ratio), by MACs."""
        ratios = sorted(
            {float(w) / g for c, g in zip(self.choices, self.max_channels, strict=True) for w in c}
        )
        rows = {tuple(self.index_of(self.sn.space.uniform(r))) for r in ratios if 0 < r <= 1}
        idx = np.array(sorted(rows), dtype=np.int64).reshape(-1, len(self))
        return idx[np.argsort(self.cost(idx), kind="stable")]

    def largest_uniform_under(self, budget: int) -> np.ndarray | None:
        """The widest uniform config with cost <= budget (``None`` if none fits)."""
        idx = self.uniform_indices()
        ok = np.nonzero(self.cost(idx) <= budget)[0]
        return None if not len(ok) else idx[ok[-1]]

    # -- greedy moves (cost model only) --------------------------------------------------
    def grow(
        self,
        idx: np.ndarray,
        budget: int,
        *,
        priority: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
        allowed: Sequence[bool] | None = None,
    ) -> np.ndarray:
        """Widen one group by one choice at a time while the config stays within ``budget``.

        Args:
            idx: Start config (index vector); must already fit.
            budget: Budget (in :meth:`cost` units).
            priority: ``f(idx, candidate_groups, added_cost) -> scores``; the highest-scoring
                fitting step is taken. Default: the step that adds the least cost (packs
                the budget most tightly).
            allowed: Which groups may grow (default all).

        Returns:
            The grown index vector; no single-step widening of it fits any more.
        """
        idx = np.array(idx, dtype=np.int64)
        mask = np.ones(len(self), bool) if allowed is None else np.asarray(allowed, bool)
        current = int(self.cost(idx))
        while True:
            groups = np.nonzero(mask & (idx < self.sizes - 1))[0]
            if not len(groups):
                return idx
            cand = np.repeat(idx[None, :], len(groups), axis=0)
            cand[np.arange(len(groups)), groups] += 1
            costs = self.cost(cand)
            fits = costs <= budget
            if not fits.any():
                return idx
            groups, costs = groups[fits], costs[fits]
            added = (costs - current).astype(np.float64)
            score = -added if priority is None else np.asarray(priority(idx, groups, added))
            best = int(np.argmax(score))  # first max: deterministic
            idx[groups[best]] += 1
            current = int(costs[best])

    def shrink(
        self,
        idx: np.ndarray,
        budget: int,
        *,
        cost: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """Narrow one group by one choice at a time until the config fits ``budget``.

        ``cost(idx, candidate_groups, saved_cost)`` rates each step; the lowest is taken.
        """
        idx = np.array(idx, dtype=np.int64)
        current = int(self.cost(idx))
        while current > budget:
            groups = np.nonzero(idx > 0)[0]
            if not len(groups):
                raise ValueError(f"budget {budget} is below the smallest reachable cost")
            cand = np.repeat(idx[None, :], len(groups), axis=0)
            cand[np.arange(len(groups)), groups] -= 1
            costs = self.cost(cand)
            saved = np.maximum((current - costs).astype(np.float64), 1.0)
            best = int(np.argmin(np.asarray(cost(idx, groups, saved))))
            idx[groups[best]] -= 1
            current = int(costs[best])
        return idx


def _choices(group, removable_zero: bool) -> tuple[int, ...]:
    choices = tuple(group.choices)
    if removable_zero and getattr(group, "removable", False) and 0 not in choices:
        choices = (0, *choices)
    return choices
