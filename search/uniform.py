"""``uniform`` baseline: the widest config with one width ratio for every group under the budget.

It is what a hand-tuned "width multiplier" gives, so every other strategy must beat it to be
worth its evaluations. Candidates are ``sn.space.uniform(r)`` for every ratio ``r`` that some
group can take exactly; with coarse bins the widest one may sit well below the budget, and
the result's notes then say how close the uniform family gets.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .base import CLOSE_ENOUGH, SearchCall, Strategy, Timer, register_strategy
from .result import SearchAnswer

__all__ = ["Uniform"]


@register_strategy("uniform")
class Uniform(Strategy):
    """Largest uniform ratio under each budget; one evaluation per distinct config."""

    def run(self, call: SearchCall) -> list[SearchAnswer]:
        space, evaluator = call.space, call.evaluator
        family = space.uniform_indices()
        costs = space.cost(family)
        results = []
        for budget in call.budgets:
            with Timer() as t:
                k = int(np.searchsorted(costs, budget, side="right")) - 1
                if k < 0:  # the narrowest uniform config can be wider than the space minimum
                    idx, notes = space.min_index(), ["no uniform config fits: smallest config"]
                else:
                    idx, notes = family[k], []
                    if costs[k] < CLOSE_ENOUGH * budget and k + 1 < len(costs):
                        notes.append(
                            f"uniform widths cannot get closer: the next uniform config "
                            f"needs {space.constraints.describe(int(costs[k + 1]))} "
                            f"({costs[k + 1] / budget:.0%} of the budget)"
                        )
                res = self.result(
                    space, evaluator, idx, budget, evaluations=0, seconds=0.0, notes=notes
                )
            results.append(replace(res, seconds=t.seconds))
        return results
