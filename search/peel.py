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
6. Reallocation (``moves`` > 0): take one choice from the least informative group that can
   give one and spend what it frees on the most informative groups (cost model); keep the
   move when the supernet scores it higher, else try the next pair; stop when no pair of
   the ``pairs`` tried improves, or after ``moves`` accepted moves. Width thus flows from
   less to more informative layers in both directions, not only onto a uniform backbone.

Each answer is then evaluated once (plus one evaluation per reallocation trial). Under a
latency budget or further limits, "MACs" above read as the search's cost (see
:mod:`.constraints`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._space import IndexSpace
from .base import SearchCall, Strategy, Timer, register_strategy
from .evaluator import SubnetEvaluator
from .result import SearchAnswer

__all__ = ["Peel", "informativeness"]


def informativeness(
    space: IndexSpace, evaluator: SubnetEvaluator, backbone: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per group: (score gain per unit of cost (MAC or ns) of widening it by its step, that
    step in choices).

    Groups already at full width get informativeness ``-inf`` and step 0.
    """
    base_score = evaluator.score(space.config(backbone))
    base_cost = float(space.cost(backbone))
    steps = np.minimum(step, space.sizes - 1 - backbone)
    info = np.full(len(space), -np.inf)
    for g in np.nonzero(steps > 0)[0]:
        wider = backbone.copy()
        wider[g] += steps[g]
        added = float(space.cost(wider)) - base_cost
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
            if space.cost(trial) <= budget:
                idx = trial
                break
    rank = np.where(np.isfinite(info), info, -1e30)
    return space.grow(idx, budget, priority=lambda _i, groups, _added: rank[groups])


def reallocate(
    space: IndexSpace,
    evaluator: SubnetEvaluator,
    idx: np.ndarray,
    budget: int,
    info: np.ndarray,
    *,
    moves: int,
    pairs: int,
) -> tuple[np.ndarray, int]:
    """Step 6: ``(config, accepted moves)``; every trial stays within ``budget``.

    A move narrows a donor (least informative first) until what it frees widens a receiver
    (most informative first) by one choice, then spends any rest by informativeness. Each
    round evaluates at most ``pairs`` such moves and keeps the first that scores higher.
    """
    rank = np.where(np.isfinite(info), info, -1e30)
    order = np.argsort(rank, kind="stable")
    best = np.array(idx, dtype=np.int64)
    best_score = evaluator.score(space.config(best))
    accepted = 0
    while accepted < moves:
        improved, tried = False, 0
        for donor, receiver in _move_pairs(order, best, space.sizes):
            trial = _fund(space, best, donor, receiver, budget)
            if trial is None:
                continue
            allowed = np.arange(len(space)) != donor  # the freed MACs go elsewhere
            trial = space.grow(
                trial, budget, priority=lambda _i, groups, _added: rank[groups], allowed=allowed
            )
            tried += 1
            score = evaluator.score(space.config(trial))
            if score > best_score:
                best, best_score, improved = trial, score, True
                accepted += 1
                break
            if tried >= pairs:
                break
        if not improved:
            break
    return best, accepted


def _move_pairs(order: np.ndarray, idx: np.ndarray, sizes: np.ndarray):
    """(donor, receiver) pairs: donors least informative first, receivers most first."""
    donors = [int(g) for g in order if idx[g] > 0]
    receivers = [int(g) for g in order[::-1] if idx[g] < sizes[g] - 1]
    for receiver in receivers:
        for donor in donors:
            if donor != receiver:
                yield donor, receiver


def _fund(
    space: IndexSpace, idx: np.ndarray, donor: int, receiver: int, budget: int
) -> np.ndarray | None:
    """Narrow ``donor`` until ``receiver`` widened by one choice fits, or ``None``."""
    trial = idx.copy()
    while trial[donor] > 0:
        trial[donor] -= 1
        wider = trial.copy()
        wider[receiver] += 1
        if space.cost(wider) <= budget:
            return wider
    return None


@register_strategy("peel")
class Peel(Strategy):
    """PEEL. Options: ``backbone_ratio`` (default 0.75), ``step`` (choices, default 2),
    ``moves`` (accepted reallocation moves, default 6; 0: none) and ``pairs`` (donors tried
    per move, default 3)."""

    @dataclass(frozen=True)
    class Options:
        backbone_ratio: float = 0.75
        step: int = 2
        moves: int = 6
        pairs: int = 3

        def __post_init__(self) -> None:
            if not 0 < self.backbone_ratio < 1 or self.step < 1 or self.moves < 0 or self.pairs < 1:
                raise ValueError(
                    "peel: need 0 < backbone_ratio < 1, step >= 1, moves >= 0 and pairs >= 1"
                )

    def run(self, call: SearchCall) -> list[SearchAnswer]:
        space, evaluator, opts = call.space, call.evaluator, call.options
        measured: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, int, float, list[int]]] = {}
        results = []
        for budget in call.budgets:
            backbone = space.largest_uniform_under(int(opts.backbone_ratio * budget))
            if backbone is None:
                backbone = space.min_index()
            key = tuple(int(i) for i in backbone)
            if key not in measured:
                before = evaluator.evaluations
                with Timer() as t:
                    info, steps = informativeness(space, evaluator, backbone, opts.step)
                measured[key] = (info, steps, evaluator.evaluations - before, t.seconds, [])
            info, steps, spent, seconds, users = measured[key]
            users.append(budget)
            before = evaluator.evaluations
            with Timer() as t:
                idx = allocate(space, backbone, budget, info, steps)
                idx, accepted = reallocate(
                    space, evaluator, idx, budget, info, moves=opts.moves, pairs=opts.pairs
                )
            note = (
                f"backbone {space.constraints.describe(int(space.cost(backbone)))}; its "
                f"measurement "
                f"({spent} evaluations) is shared by every budget with this backbone; "
                f"{accepted} reallocation move(s) kept"
            )
            res = self.result(
                space,
                evaluator,
                idx,
                budget,
                evaluations=spent + evaluator.evaluations - before,
                seconds=seconds + t.seconds,
                notes=[note],
            )
            results.append(res)
        return results
