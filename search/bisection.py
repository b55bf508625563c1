"""``bisection`` (AdaPruner): one scalar ``a`` scales every group by its BN-gamma importance.

Group importance ``I_g`` = mean |gamma| over the BN layers producing the group's channels.
``widths(a)`` gives group ``g`` the widest allowed choice <= ``clip(a * I_g / mean(I) * C_g)``
(clipped to ``[min choice, C_g]``). Snapping *down* makes every width, and so the MACs,
non-decreasing in ``a``, so the widest config under a budget is found by bisection. Only the
cost model is queried; each final answer is evaluated once.

All budgets share one table: the path changes only at breakpoints ``a = c * mean(I) /
(I_g C_g)`` (one per group and choice), so we cost every breakpoint config once and bisect
(``searchsorted``) each budget on that monotone MACs array. What a single path step cannot
use of the budget is then filled greedily by importance, still with the cost model only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from widthsearch.supernet import Supernet
from widthsearch.supernet.handlers import GAMMA

from ._space import IndexSpace
from .base import SearchCall, Strategy, Timer, register_strategy
from .constraints import Constraints
from .result import SearchAnswer

__all__ = ["Bisection", "bisection_configs", "group_importance"]


def group_importance(sn: Supernet) -> np.ndarray:
    """Mean |gamma| of each searchable group's BN layers (mean over groups for BN-less ones)."""
    space = IndexSpace(sn)
    sums = np.zeros(len(sn.space.groups))
    counts = np.zeros(len(sn.space.groups))
    for layer, _in_gs, out_gs in sn.layers:
        evidence = layer.handler.importance(layer)
        if evidence is not None and evidence.source == GAMMA:
            gamma = evidence.values.to(torch.float64)
            for out_g, part in sn.segments(out_gs):  # a concat's BN: each group its own part
                sums[out_g] += float(gamma[part].sum())
                counts[out_g] += gamma[part].numel()
    pos = space.positions
    has_bn = counts[pos] > 0
    imp = np.where(has_bn, sums[pos] / np.maximum(counts[pos], 1), 0.0)
    fill = float(imp[has_bn].mean()) if has_bn.any() else 1.0
    imp[~has_bn] = fill
    if not np.isfinite(imp).all() or imp.max() <= 0:
        imp = np.ones_like(imp)
    return imp


def scaled_path(space: IndexSpace, importance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All distinct configs along ``widths(a)``, a ascending: (index matrix, their cost)."""
    rel = importance / importance.mean()
    scale = rel * space.max_channels  # target width of group g is a * scale[g]
    breaks = [0.0]
    for g, c in enumerate(space.choices):
        if scale[g] > 0:
            breaks.extend((c / scale[g]).tolist())
    alphas = np.unique(np.asarray(breaks))
    idx = space.snap_down(alphas[:, None] * scale[None, :])
    idx, first = np.unique(idx, axis=0, return_index=True)
    idx = idx[np.argsort(first)]  # back to ascending a
    cost = space.cost(idx)
    if np.any(np.diff(cost) < 0):  # cannot happen: each width is non-decreasing in a
        raise AssertionError("bisection path is not monotone in cost")
    return idx, cost


def bisection_configs(
    sn: Supernet,
    budgets: Sequence[int],
    *,
    fill: bool = True,
    constraints: Constraints | None = None,
) -> list[np.ndarray]:
    """The bisection answer (index vectors of :class:`IndexSpace`) for every budget."""
    space = IndexSpace(sn, constraints=constraints)
    importance = group_importance(sn)
    idx, cost = scaled_path(space, importance)
    out = []
    for budget in budgets:
        k = int(np.searchsorted(cost, budget, side="right")) - 1
        if k < 0:
            raise ValueError(f"budget {budget} is below the smallest reachable cost {cost[0]}")
        best = idx[k].copy()
        if fill:
            best = space.grow(
                best, budget, priority=lambda _i, groups, added: importance[groups] / added
            )
        out.append(best)
    return out


@register_strategy("bisection")
class Bisection(Strategy):
    """AdaPruner's importance-scaled bisection; options: ``fill`` (bool, default True)."""

    @dataclass(frozen=True)
    class Options:
        fill: bool = True  # grow each answer into what is left of its budget

    def run(self, call: SearchCall) -> list[SearchAnswer]:
        space, budgets = call.space, call.budgets
        with Timer() as shared:
            configs = bisection_configs(
                space.sn, budgets, fill=call.options.fill, constraints=space.constraints
            )
        results = []
        for budget, idx in zip(budgets, configs, strict=True):
            with Timer() as t:
                res = self.result(space, call.evaluator, idx, budget, evaluations=0, seconds=0.0)
            results.append(replace(res, seconds=t.seconds + shared.seconds / len(budgets)))
        return results
