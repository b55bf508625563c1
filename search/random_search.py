"""``random`` baseline: the best of ``samples`` random configs near each budget.

Uniformly random configs mostly land far below (or above) a budget and would lose for that
reason alone. So each sample is a random *direction* -- a random share per group -- rescaled
towards the budget exactly as ``bisection`` rescales its importance vector (the widest
config along the direction under the budget), then topped up by random single-group steps
that still fit. The directions are drawn once and reused for every budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._space import IndexSpace
from .base import SearchCall, Strategy, Timer, register_strategy
from .bisection import scaled_path
from .result import SearchAnswer

__all__ = ["RandomSearch", "random_configs"]


def random_configs(
    space: IndexSpace, budget: int, directions: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """One config per direction: rescaled to the widest under ``budget``, then topped up."""
    out = []
    for direction in directions:
        idx, cost = scaled_path(space, direction)
        k = max(int(np.searchsorted(cost, budget, side="right")) - 1, 0)
        noise = rng.random(len(space))
        out.append(space.grow(idx[k], budget, priority=lambda _i, g, _a, n=noise: n[g]))
    return out


@register_strategy("random")
class RandomSearch(Strategy):
    """Best of ``samples`` (default 40) random configs near each budget."""

    @dataclass(frozen=True)
    class Options:
        samples: int = 40

        def __post_init__(self) -> None:
            if self.samples < 1:
                raise ValueError(f"random: samples must be >= 1, got {self.samples}")

    def run(self, call: SearchCall) -> list[SearchAnswer]:
        space, evaluator, samples = call.space, call.evaluator, call.options.samples
        rng = np.random.default_rng(call.seed)
        # a share in [0.05, 1) per group: wide enough to reach every corner of the space
        directions = rng.uniform(0.05, 1.0, size=(samples, len(space)))
        results = []
        for budget in call.budgets:
            with Timer() as t:
                before = evaluator.evaluations
                candidates = random_configs(space, budget, directions, rng)
                scores = [evaluator.score(space.config(idx)) for idx in candidates]
                best = int(np.argmax(scores))
                spent = evaluator.evaluations - before
            res = self.result(
                space,
                evaluator,
                candidates[best],
                budget,
                evaluations=spent,
                seconds=t.seconds,
                score=scores[best],
                notes=[f"best of {samples} random configs"],
            )
            results.append(res)
        return results
