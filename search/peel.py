"""``peel`` (PEEL reallocation): over-prune uniformly, measure, hand the pool back in one round.

1. Backbone: the widest uniform config with MACs <= ``backbone_ratio * budget``.
2. Pool: ``budget - MACs(backbone)``.
3. Informativeness of group ``g``: score gain when ``g`` alone is widened by ``step``
   choices on the backbone, divided by the MACs that adds -- one measurement round on the
   supernet (``1 + #groups`` evaluations), shared by every budget with the same backbone.
4. One allocation round: groups in order of informativeness, each widened by its measured
   step or as far as the pool still allows.
5. Leftovers: widen the most informative group that still fits, one choice at a time
   (cost model only), until nothing fits.

Each answer is then evaluated once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from widthsearch.supernet import Supernet

from ._space import IndexSpace
from .base import SearchResult, Strategy, Timer, register_strategy, reject_options
from .evaluator import SubnetEvaluator

__all__ = ["Peel", "informativeness"]


def informativeness(
    space: IndexSpace, evaluator: SubnetEvaluator, backbone: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per group: (score gain per MAC of widening it by its step, that step in choices).

    Groups already at full width get informativeness ``-inf`` and step 0.
    """
    base_score = evaluator.score(space.config(backbone))
    base_macs = float(space.macs(backbone))
    steps = np.minimum(step, space.sizes - 1 - backbone)
    info = np.full(len(space), -np.inf)
    for g in np.nonzero(steps > 0)[0]:
        wider = backbone.copy()
        wider[g] += steps[g]
        added = float(space.macs(wider)) - base_macs
        gain = evaluator.score(space.config(wider)) - base_score
        info[g] = gain / max(added, 1.0)
    return info, steps


def allocate(
    space: IndexSpace, backbone: np.ndarray, budget: int, info: np.ndarray, steps: np.ndarray
) -> np.ndarray:
    """Steps 4 and 5: one greedy round by informativeness, then fill with the cost model."""
    idx = backbone.copy()
    for g in np.argsort(-info, kind="stable"):
        for k in range(int(steps[g]), 0, -1):  # its measured step, or as far as the pool allows
            trial = idx.copy()
            trial[g] += k
            if space.macs(trial) <= budget:
                idx = trial
                break
    rank = np.where(np.isfinite(info), info, -1e30)
    return space.grow(idx, budget, priority=lambda _i, groups, _added: rank[groups])


@register_strategy("peel")
class Peel(Strategy):
    """PEEL. Options: ``backbone_ratio`` (default 0.75), ``step`` (choices, default 2)."""

    def search(
        self,
        supernet: Supernet,
        evaluator: SubnetEvaluator,
        *,
        budgets: Sequence[int],
        seed: int,
        backbone_ratio: float = 0.75,
        step: int = 2,
        **options: Any,
    ) -> list[SearchResult]:
        reject_options(self.name, options)
        if not 0 < backbone_ratio < 1 or step < 1:
            raise ValueError("peel: need 0 < backbone_ratio < 1 and step >= 1")
        space = IndexSpace(supernet)
        measured: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, int, float, list[int]]] = {}
        results = []
        for budget in budgets:
            backbone = space.largest_uniform_under(int(backbone_ratio * budget))
            if backbone is None:
                backbone = space.min_index()
            key = tuple(int(i) for i in backbone)
            if key not in measured:
                before = evaluator.evaluations
                with Timer() as t:
                    info, steps = informativeness(space, evaluator, backbone, step)
                measured[key] = (info, steps, evaluator.evaluations - before, t.seconds, [])
            info, steps, spent, seconds, users = measured[key]
            users.append(budget)
            with Timer() as t:
                idx = allocate(space, backbone, budget, info, steps)
            note = (
                f"backbone {int(space.macs(backbone))} MACs; its measurement "
                f"({spent} evaluations) is shared by every budget with this backbone"
            )
            res = self.result(
                space,
                evaluator,
                idx,
                budget,
                evaluations=spent,
                seconds=seconds + t.seconds,
                notes=[note],
            )
            results.append(res)
        return results
