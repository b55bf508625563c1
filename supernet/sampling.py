"""Width sampling for supernet training: BCNet's fair sampler and the sandwich rule.

Both samplers are pure functions of ``(seed, step)``: resuming at step ``t`` or running on
any rank of a distributed job gives the same widths without sharing any state, and the
only thing a checkpoint needs to remember is the step counter.

*Fair (stochastic complementary) sampling* (BCNet): widths come in pairs. The first of a
pair draws each group's bin ``k`` uniformly from ``[min_bins, bins - min_bins]``; the second
trains the complement bin ``bins - k`` (width ``C - c``, exact because ``bin_to_width`` is
mirrored). Each step trains the left *and* right subnet of its config, so channel ``i`` of a
group is used ``[i < c] + [i >= C - c]`` times, and over a pair
``[i < c] + [i >= c] + [i >= C - c] + [i < C - c] = 2`` times: every channel gets the same
number of updates, whatever ``k`` was drawn. A full-width step follows every ``full_every``
sampled steps (BCNet V1 cycles pair, complement, full).

*MACs coverage.* Drawn independently per group, bins average to ``C / 2`` and a config's
MACs concentrate near a quarter of the full model's, so the 50-100 % range users ask for
is almost never trained. With ``coverage="levels"`` (the default) each pair first draws a
width level ``u`` uniformly in ``[0, 1]``, and every group draws its bin within ``spread``
bins of ``u * bins``; the complement then sits at level ``1 - u``. Fairness over the pair
is unchanged (it holds for any ``k``), and the trained MACs spread over the whole range.

*Sandwich rule* (US-Nets / AutoSlim): each step trains the max width, the min width and
``n_random`` uniformly drawn widths. It is the comparison baseline.

*Budget-focused sampling* (the ``budgets`` trainer): when the budgets are known before
training, each step trains one subnet near each of them, so that every delivered subnet is
trained on every batch instead of on the few steps a sampler over all widths spends near it.
Each budget starts from its *level*, the widest uniform config within it; every group then
moves up to ``spread`` choices away, random groups narrow until the draw fits the budget and
widen while it still does, and a draw is kept when its MACs lie in
``[window * budget, budget]``, the range a search answer lies in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .space import Group, WidthConfig, WidthSpace

__all__ = [
    "COVERAGES",
    "BudgetSampler",
    "FairSampler",
    "SandwichSampler",
    "StepPlan",
    "channel_usage",
    "step_rng",
]

StepKind = Literal["sampled", "complement", "full"]
COVERAGES = ("levels", "independent")


def step_rng(seed: int, *keys: int) -> np.random.Generator:
    """A generator determined by ``seed`` and ``keys`` only (e.g. ``(pair,)``, ``(epoch, rank)``).

    ``SeedSequence`` mixes the entropy so that nearby keys give unrelated streams.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


@dataclass(frozen=True)
class StepPlan:
    """What one BCNet step trains.

    Attributes:
        step: The global step this plan is for.
        kind: ``"sampled"`` (first of a pair), ``"complement"`` (second) or ``"full"``.
        cfg: The width config (every group, fixed ones at full width); ``None`` on full steps.
        bins: Each searchable group's bin (``None`` on full steps).
    """

    step: int
    kind: StepKind
    cfg: WidthConfig | None
    bins: dict[str, int] | None


class FairSampler:
    """BCNet's stochastic complementary sampler: pair, complement, (full), pair, ...

    Args:
        space: The supernet's width space.
        seed: Seeds the random bins; same seed, same sequence.
        full_every: A full-width step after every this many sampled steps (0: never). An odd
            value may put a full step between the two halves of a pair; fairness holds over
            the pair either way.
        coverage: ``"levels"`` (a width level per pair, bins near it) or ``"independent"``
            (each group's bin uniform on its own).
        spread: With ``"levels"``, how many bins a group may stray from the pair's level.

    A group only draws bins whose width and complement are both allowed and sum to ``C``
    (see :func:`_pair_bins`); a group with none stays at full width.
    """

    def __init__(
        self,
        space: WidthSpace,
        *,
        seed: int = 0,
        full_every: int = 2,
        coverage: str = "levels",
        spread: int = 1,
    ) -> None:
        if full_every < 0:
            raise ValueError(f"full_every must be >= 0, got {full_every}")
        if coverage not in COVERAGES:
            raise ValueError(f"coverage must be one of {', '.join(COVERAGES)}, got {coverage!r}")
        if spread < 0:
            raise ValueError(f"spread must be >= 0, got {spread}")
        self.space = space
        self.seed = int(seed)
        self.full_every = int(full_every)
        self.coverage = coverage
        self.spread = int(spread)
        self._bins = {g.name: _pair_bins(g) for g in space.searchable}
        self._max_bins = {g.name: g.bins for g in space.searchable}

    def _pair_bins(self, pair: int) -> dict[str, int]:
        """The first-of-pair bins of pair number ``pair`` (one draw per group)."""
        rng = step_rng(self.seed, pair)
        if self.coverage == "independent":
            return {
                name: int(bins[rng.integers(len(bins))]) if bins else -1
                for name, bins in self._bins.items()
            }
        level = rng.random()
        out = {}
        for name, bins in self._bins.items():
            if not bins:
                out[name] = -1
                continue
            target = level * self._max_bins[name]
            nearest = min(abs(k - target) for k in bins)
            near = [k for k in bins if abs(k - target) <= nearest + self.spread]
            out[name] = int(near[rng.integers(len(near))])
        return out

    def sampled_index(self, step: int) -> int | None:
        """Index of ``step`` among sampled steps, or ``None`` if it is a full-width step."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.full_every == 0:
            return step
        cycle, pos = divmod(step, self.full_every + 1)
        return None if pos == self.full_every else cycle * self.full_every + pos

    def plan(self, step: int) -> StepPlan:
        """The config trained at ``step`` (a pure function of seed and step)."""
        index = self.sampled_index(step)
        if index is None:
            return StepPlan(step, "full", None, None)
        pair, second = divmod(index, 2)
        bins = self._pair_bins(pair)
        cfg: WidthConfig = {}
        chosen: dict[str, int] = {}
        for g in self.space.groups:
            k = bins.get(g.name, -1)
            if g.fixed or k < 0:
                cfg[g.name] = g.max_channels
                continue
            if second:
                k = g.bins - k
            chosen[g.name] = k
            cfg[g.name] = g.bin_to_width[k]
        return StepPlan(step, "complement" if second else "sampled", cfg, chosen)

    __call__ = plan


def _pair_bins(group: Group) -> list[int]:
    """Bins ``k`` a pair may start from: in ``[min_bins, bins - min_bins]``, with the widths of
    ``k`` and ``bins - k`` both allowed and summing to ``C``.

    Rounding breaks the mirror in two places, which are left out to keep fairness exact:
    end bins of small groups that round to 0 (or ``C``), and the middle bin ``bins / 2`` when
    ``C / round_to`` is odd (``C / 2`` is not a width, so that bin's width is ``C / 2``
    rounded up and cannot be complemented).
    """
    allowed = set(group.choices)
    widths = group.bin_to_width
    return [
        k
        for k in range(group.min_bins, group.bins - group.min_bins + 1)
        if widths[k] in allowed
        and widths[group.bins - k] in allowed
        and widths[k] + widths[group.bins - k] == group.max_channels
    ]


class SandwichSampler:
    """The sandwich rule: max, min and ``n_random`` uniform random widths every step.

    Args:
        space: The supernet's width space.
        seed: Seeds the random widths; same seed, same sequence.
        n_random: Random configs per step besides max and min.
    """

    def __init__(self, space: WidthSpace, *, seed: int = 0, n_random: int = 2) -> None:
        if n_random < 0:
            raise ValueError(f"n_random must be >= 0, got {n_random}")
        self.space = space
        self.seed = int(seed)
        self.n_random = int(n_random)

    def plan(self, step: int) -> list[WidthConfig]:
        """``[max, min, random_1, ..., random_n]`` for ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        rng = step_rng(self.seed, step)
        randoms = [self.space.sample(rng) for _ in range(self.n_random)]
        return [self.space.max(), self.space.min(), *randoms]

    __call__ = plan


class BudgetSampler:
    """One config near each MACs budget per step (a pure function of seed and step).

    Args:
        space: The supernet's width space.
        macs: MACs of a width config (the supernet's exact cost model).
        budgets: MACs budgets as fractions of the full width's, in ``(0, 1]``.
        seed: Seeds the draws; same seed, same sequence.
        spread: How many choices a group may move away from the budget's level.
        window: A draw counts when its MACs are in ``[window * budget, budget]``.
        tries: Draws per budget and step before falling back to the level itself.
    """

    def __init__(
        self,
        space: WidthSpace,
        *,
        macs: Callable[[Mapping[str, int]], float],
        budgets: Sequence[float],
        seed: int = 0,
        spread: int = 1,
        window: float = 0.9,
        tries: int = 32,
    ) -> None:
        if not budgets:
            raise ValueError("the budgets trainer needs at least one MACs budget")
        if any(not 0.0 < float(b) <= 1.0 for b in budgets):
            raise ValueError(f"budgets must be MACs fractions in (0, 1], got {list(budgets)}")
        if spread < 0 or not 0.0 < window <= 1.0 or tries < 1:
            raise ValueError("need spread >= 0, 0 < window <= 1 and tries >= 1")
        self.space = space
        self.macs = macs
        self.seed = int(seed)
        self.spread = int(spread)
        self.window = float(window)
        self.tries = int(tries)
        full = float(macs(space.max()))
        self.limits = [float(b) * full for b in budgets]
        self.fractions = [float(b) for b in budgets]
        self.levels = [self._level(limit) for limit in self.limits]

    def _level(self, limit: float) -> WidthConfig:
        """The widest uniform config within ``limit`` (the narrowest one if none fits)."""
        ratios = sorted({w / g.max_channels for g in self.space.searchable for w in g.choices})
        best = self.space.min()
        for ratio in ratios:
            cfg = self.space.uniform(ratio)
            if self.macs(cfg) <= limit:
                best = cfg
        return best

    def _near(self, level: WidthConfig, limit: float, rng: np.random.Generator) -> WidthConfig:
        """A random config near ``level``: each group moves up to ``spread`` choices, then
        random groups narrow until the config fits ``limit`` and widen while it still does."""
        groups = self.space.searchable
        at = {g.name: g.choices.index(level[g.name]) for g in groups}
        for g in groups:
            lo, hi = (
                max(0, at[g.name] - self.spread),
                min(len(g.choices) - 1, at[g.name] + self.spread),
            )
            at[g.name] = int(rng.integers(lo, hi + 1))

        def config() -> WidthConfig:
            return {**level, **{g.name: g.choices[at[g.name]] for g in groups}}

        while self.macs(config()) > limit:
            wide = [g.name for g in groups if at[g.name] > 0]
            if not wide:
                break
            at[wide[rng.integers(len(wide))]] -= 1
        grew = True
        while grew:
            grew = False
            for i in rng.permutation(len(groups)):
                g = groups[i]
                if at[g.name] + 1 < len(g.choices):
                    at[g.name] += 1
                    if self.macs(config()) <= limit:
                        grew = True
                    else:
                        at[g.name] -= 1
        return config()

    def plan(self, step: int) -> list[WidthConfig]:
        """One config per budget, in the budgets' order."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        out = []
        for i, (level, limit) in enumerate(zip(self.levels, self.limits, strict=True)):
            rng = step_rng(self.seed, step, i)
            chosen = level
            for _ in range(self.tries):
                cfg = self._near(level, limit, rng)
                if self.window * limit <= self.macs(cfg) <= limit:
                    chosen = cfg
                    break
            out.append(chosen)
        return out

    __call__ = plan


def channel_usage(
    space: WidthSpace, cfg: WidthConfig | None, sides: tuple[str, ...] = ("left", "right")
) -> dict[str, np.ndarray]:
    """Per searchable group, how many times each channel is used when ``cfg`` is trained on
    ``sides`` (``None``: full width). Summed over steps, it counts per-channel updates."""
    usage = {}
    for g in space.searchable:
        c = g.max_channels if cfg is None else cfg[g.name]
        counts = np.zeros(g.max_channels, dtype=np.int64)
        for side in sides:
            if side == "left":
                counts[:c] += 1
            else:
                counts[g.max_channels - c :] += 1
        usage[g.name] = counts
    return usage
