"""Fair (complementary) and sandwich width sampling: uniform channel use, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from widthsearch.supernet.sampling import (
    FairSampler,
    SandwichSampler,
    channel_usage,
    step_rng,
)
from widthsearch.supernet.space import WidthSpace, make_group


def _space() -> WidthSpace:
    """Groups of several sizes and settings, plus two fixed ones (like a real network)."""
    return WidthSpace(
        [
            make_group("input", 3, fixed=True, bins=1, min_bins=1, round_to=1),
            make_group("stem", 16, fixed=False, bins=8, min_bins=1, round_to=1),
            make_group("wide", 64, fixed=False, bins=8, min_bins=2, round_to=1),
            make_group("odd", 37, fixed=False, bins=8, min_bins=1, round_to=1),
            make_group("hw", 96, fixed=False, bins=8, min_bins=1, round_to=8),
            make_group("tiny", 2, fixed=False, bins=8, min_bins=1, round_to=1),
            make_group("fc", 10, fixed=True, bins=1, min_bins=1, round_to=1),
        ]
    )


def _usage(space: WidthSpace, plans) -> dict[str, np.ndarray]:
    total = {g.name: np.zeros(g.max_channels, dtype=np.int64) for g in space.searchable}
    for plan in plans:
        for name, counts in channel_usage(space, plan.cfg).items():
            total[name] += counts
    return total


@pytest.mark.parametrize("full_every", [2, 3, 0])
def test_per_channel_updates_are_uniform_over_1000_steps(full_every):
    space = _space()
    sampler = FairSampler(space, seed=7, full_every=full_every)
    usage = _usage(space, (sampler.plan(t) for t in range(1000)))
    for name, counts in usage.items():
        spread = (counts.max() - counts.min()) / counts.max()
        assert spread <= 0.02, (name, counts.min(), counts.max())
    # over whole cycles (every pair completed) the counts are exactly equal
    cycle = 2 * (full_every + 1) if full_every else 2
    whole = _usage(space, (sampler.plan(t) for t in range(1000 // cycle * cycle)))
    for name, counts in whole.items():
        assert counts.min() == counts.max(), name


def test_controls_left_only_is_unfair_and_no_complement_is_only_fair_on_average():
    space = _space()
    sampler = FairSampler(space, seed=7, full_every=0)
    plans = [sampler.plan(t) for t in range(1000)]
    left = {g.name: np.zeros(g.max_channels, dtype=np.int64) for g in space.searchable}
    for plan in plans:
        for name, counts in channel_usage(space, plan.cfg, sides=("left",)).items():
            left[name] += counts
    assert left["wide"][0] == 1000 and left["wide"][-1] < 300  # slimmable-style: first wins
    # the random halves alone are fair only in expectation (symmetric bins), not exactly
    firsts = _usage(space, plans[0::2])["wide"]
    assert firsts.min() != firsts.max()
    assert (firsts.max() - firsts.min()) / firsts.max() < 0.1


def test_complement_mirrors_bins_and_widths():
    space = _space()
    sampler = FairSampler(space, seed=3, full_every=2)
    kinds = [sampler.plan(t).kind for t in range(9)]
    assert kinds == ["sampled", "complement", "full"] * 3
    for t in (0, 3, 6):
        first, second = sampler.plan(t), sampler.plan(t + 1)
        for g in space.searchable:
            k = first.bins[g.name]
            assert second.bins[g.name] == g.bins - k
            assert g.min_bins <= k <= g.bins - g.min_bins
            assert first.cfg[g.name] + second.cfg[g.name] == g.max_channels
        for g in space.groups:
            if g.fixed:
                assert first.cfg[g.name] == g.max_channels
        assert space.validate(first.cfg) == first.cfg
        assert space.validate(second.cfg) == second.cfg
    full = sampler.plan(2)
    assert full.cfg is None and full.bins is None


def test_odd_full_every_splits_pairs_but_keeps_them():
    sampler = FairSampler(_space(), seed=0, full_every=3)
    kinds = [sampler.plan(t).kind for t in range(8)]
    expected = ["sampled", "complement", "sampled", "full"]
    expected += ["complement", "sampled", "complement", "full"]
    assert kinds == expected
    assert sampler.plan(2).bins["wide"] + sampler.plan(4).bins["wide"] == 8


def test_sampler_is_a_function_of_seed_and_step():
    space = _space()
    a, b = FairSampler(space, seed=11), FairSampler(space, seed=11)
    steps = [500, 3, 77, 0, 1000]
    assert [a.plan(t) for t in steps] == [b.plan(t) for t in steps]  # any order, any instance
    c = FairSampler(space, seed=12)
    assert [a.plan(t).cfg for t in range(0, 60, 3)] != [c.plan(t).cfg for t in range(0, 60, 3)]


def test_independent_bins_are_drawn_uniformly():
    space = _space()
    sampler = FairSampler(space, seed=5, full_every=0, coverage="independent")
    draws = np.array([sampler.plan(2 * p).bins["stem"] for p in range(3500)])
    values, counts = np.unique(draws, return_counts=True)
    assert values.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert counts.min() > 0.85 * 500 and counts.max() < 1.15 * 500


def test_levels_reach_every_bin_and_follow_the_level():
    space = _space()
    sampler = FairSampler(space, seed=5, full_every=0, coverage="levels", spread=1)
    firsts = [sampler.plan(2 * p).bins for p in range(2000)]
    assert sorted({b["stem"] for b in firsts}) == [1, 2, 3, 4, 5, 6, 7]
    # groups of one pair move together: their bins never differ by more than 2 * spread + 1
    for bins in firsts:
        assert abs(bins["stem"] - bins["odd"]) <= 3, bins


def test_levels_spread_trained_macs_over_the_whole_range():
    """Independent bins put almost every config near a quarter of the MACs; a level per pair
    (and its complement) covers 50-100 % as well, with the same per-channel fairness."""
    from widthsearch.supernet import Supernet, create_model

    model = create_model("resnet20", num_classes=10, in_chans=1)
    sn = Supernet.from_model(model, torch.zeros(1, 1, 16, 16), bins=8)
    full = sn.macs()

    def fractions(coverage: str) -> np.ndarray:
        sampler = FairSampler(sn.space, seed=3, full_every=0, coverage=coverage)
        return np.array([sn.macs(sampler.plan(t).cfg) / full for t in range(400)])

    independent, levels = fractions("independent"), fractions("levels")
    assert np.mean(independent >= 0.5) < 0.05
    assert np.mean(levels >= 0.5) > 0.2
    assert np.mean(levels < 0.1) > 0.1  # narrow subnets are still trained
    usage = _usage(
        sn.space, (FairSampler(sn.space, seed=3, full_every=0).plan(t) for t in range(400))
    )
    for name, counts in usage.items():
        assert counts.min() == counts.max(), name


def test_groups_too_small_for_end_bins_skip_width_zero():
    space = _space()
    tiny = space["tiny"]
    assert tiny.bin_to_width[1] == 0  # 2 channels / 8 bins rounds to 0
    sampler = FairSampler(space, seed=0, full_every=0)
    for t in range(200):
        assert sampler.plan(t).cfg["tiny"] in tiny.choices


def test_sandwich_plan_is_max_min_and_random():
    space = _space()
    sampler = SandwichSampler(space, seed=1, n_random=3)
    plan = sampler.plan(10)
    assert plan[0] == space.max() and plan[1] == space.min()
    assert len(plan) == 5
    for cfg in plan[2:]:
        assert space.validate(cfg) == cfg
    assert SandwichSampler(space, seed=1, n_random=3).plan(10) == plan
    assert sampler.plan(11)[2:] != plan[2:]


def test_channel_usage_counts_both_sides():
    space = WidthSpace([make_group("g", 8, fixed=False, bins=4, min_bins=1, round_to=1)])
    usage = channel_usage(space, {"g": 2})["g"]
    assert usage.tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
    assert channel_usage(space, {"g": 6})["g"].tolist() == [1, 1, 2, 2, 2, 2, 1, 1]
    assert channel_usage(space, None)["g"].tolist() == [2] * 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="full_every"):
        FairSampler(_space(), full_every=-1)
    with pytest.raises(ValueError, match="n_random"):
        SandwichSampler(_space(), n_random=-1)
    with pytest.raises(ValueError, match="step"):
        FairSampler(_space()).plan(-1)


def test_plans_carry_their_step_and_the_default_seed_is_zero():
    space = _space()
    sampler = FairSampler(space)
    assert [sampler.plan(t).step for t in range(6)] == list(range(6))
    assert [sampler.plan(t) for t in range(9)] == [
        FairSampler(space, seed=0).plan(t) for t in range(9)
    ]
    assert SandwichSampler(space).plan(4) == SandwichSampler(space, seed=0).plan(4)


def test_groups_without_a_complementable_bin_stay_at_full_width():
    space = WidthSpace(
        [*_space().groups, make_group("one", 1, fixed=False, bins=8, min_bins=1, round_to=1)]
    )
    assert space["one"].choices == (1,) and 0 in space["one"].bin_to_width
    sampler = FairSampler(space, seed=0, full_every=0)
    for t in range(40):
        plan = sampler.plan(t)
        assert plan.cfg["one"] == 1 and "one" not in plan.bins
        assert plan.cfg["input"] == 3 and plan.cfg["fc"] == 10 and "fc" not in plan.bins


def test_pairs_start_only_from_bins_between_min_bins_and_its_mirror():
    # rounding to 8 gives bins 2 and 6 the same width as bins 3..5: still below min_bins
    coarse = make_group("coarse", 16, fixed=False, bins=8, min_bins=3, round_to=8)
    assert coarse.bin_to_width == (0, 0, 8, 8, 8, 8, 8, 16, 16)
    sampler = FairSampler(WidthSpace([coarse]), seed=0, full_every=0)
    drawn = {sampler.plan(t).bins["coarse"] for t in range(200)}
    assert drawn == {3, 4, 5}


def test_sandwich_edges_seed_and_message():
    space = _space()
    assert SandwichSampler(space, n_random=0).plan(0) == [space.max(), space.min()]
    a = [cfg for t in range(5) for cfg in SandwichSampler(space, seed=1).plan(t)[2:]]
    b = [cfg for t in range(5) for cfg in SandwichSampler(space, seed=2).plan(t)[2:]]
    assert a != b
    with pytest.raises(ValueError, match=r"step must be >= 0, got -1"):
        SandwichSampler(space).plan(-1)


def test_channel_usage_adds_sides_in_any_order():
    space = WidthSpace([make_group("g", 8, fixed=False, bins=4, min_bins=1, round_to=1)])
    usage = channel_usage(space, {"g": 6}, sides=("right", "left"))["g"]
    assert usage.tolist() == [1, 1, 2, 2, 2, 2, 1, 1]
    assert channel_usage(space, {"g": 2}, sides=("left", "left"))["g"].tolist() == [2, 2] + [0] * 6


def test_sampler_defaults_are_the_recipes():
    from widthsearch.supernet.recipe import TrainSection

    train = TrainSection()
    fair = FairSampler(_space())
    assert (fair.full_every, fair.spread, fair.coverage) == (
        train.full_every,
        train.level_spread,
        train.coverage,
    )
    assert SandwichSampler(_space()).n_random == train.sandwich_random


def test_sampler_option_errors_name_the_valid_values():
    with pytest.raises(ValueError, match=r"^coverage must be one of levels, independent, got 'x'$"):
        FairSampler(_space(), coverage="x")
    with pytest.raises(ValueError, match=r"^spread must be >= 0, got -1$"):
        FairSampler(_space(), spread=-1)


@pytest.mark.parametrize("coverage", ["levels", "independent"])
def test_a_group_without_complementary_bins_stays_full_and_the_others_still_move(coverage):
    """A 1-channel group has no pair of bins that sum to its width: it keeps its channel in
    every plan, and the groups after it are sampled as usual."""
    space = WidthSpace(
        [
            make_group("input", 3, fixed=True, bins=1, min_bins=1, round_to=1),
            make_group("one", 1, fixed=False, bins=8, min_bins=1, round_to=1),
            make_group("wide", 64, fixed=False, bins=8, min_bins=1, round_to=1),
        ]
    )
    sampler = FairSampler(space, seed=3, full_every=0, coverage=coverage, spread=0)
    plans = [sampler.plan(t) for t in range(40)]
    assert all(p.cfg["one"] == 1 and "one" not in p.bins for p in plans)
    assert len({p.cfg["wide"] for p in plans}) > 2  # spread 0 still samples every level
    usage = _usage(space, plans)
    assert usage["wide"].min() == usage["wide"].max()  # whole pairs: exactly fair


def test_levels_with_spread_zero_pick_the_bins_nearest_the_level():
    space = WidthSpace([make_group("wide", 64, fixed=False, bins=8, min_bins=1, round_to=1)])
    sampler = FairSampler(space, seed=5, full_every=0, coverage="levels", spread=0)
    for pair in range(30):
        plan = sampler.plan(2 * pair)
        level = step_rng(5, pair).random() * 8  # the pair's level, as the sampler draws it
        assert abs(plan.bins["wide"] - level) <= min(abs(k - level) for k in range(1, 8))
