"""The width space by hand: bin widths, validation messages, encode/decode, canonical configs."""

from __future__ import annotations

import numpy as np
import pytest
from widthsearch.supernet.space import Group, WidthSpace, bin_widths, make_group


def test_bin_widths_by_hand():
    assert bin_widths(16, 4, 1) == [0, 4, 8, 12, 16]
    assert bin_widths(10, 4, 1) == [0, 3, 5, 7, 10]  # 2.5 rounds half up, mirrored: 10 - 3
    assert bin_widths(37, 8, 1) == [0, 5, 9, 14, 19, 23, 28, 32, 37]
    assert bin_widths(96, 8, 8) == [0, 16, 24, 40, 48, 56, 72, 80, 96]
    assert bin_widths(4, 8, 8) == [0, 0, 0, 0, 0, 4, 4, 4, 4]  # 0.25 units round to 0
    assert bin_widths(6, 2, 4) == [0, 4, 6]  # 0.75 units -> one multiple of 4
    assert bin_widths(6, 2, 8) == [0, 0, 6]  # 0.375 units round to 0; the mirror gives C


def test_make_group_fixed_and_searchable():
    fixed = make_group("fc", 10, fixed=True, bins=8, min_bins=2, round_to=4)
    assert fixed == Group("fc", 10, (10,), True, 1, 1, 1, (0, 10))
    g = make_group("g", 16, fixed=False, bins=4, min_bins=2, round_to=1)
    assert g.choices == (8, 12, 16) and g.bin_to_width == (0, 4, 8, 12, 16)
    assert (g.bins, g.min_bins, g.round_to, g.fixed, g.block) == (4, 2, 1, False, "")
    assert not g.removable and Group("r", 4, (4,), block="layer1.0").removable
    # round_to is clipped to [1, C]
    assert make_group("h", 3, fixed=False, bins=2, min_bins=1, round_to=8).round_to == 3
    assert make_group("h", 3, fixed=False, bins=2, min_bins=1, round_to=0).round_to == 1
    # min_bins 0 never makes width 0 a choice
    assert make_group("z", 8, fixed=False, bins=4, min_bins=0, round_to=1).choices == (2, 4, 6, 8)


def _space() -> WidthSpace:
    return WidthSpace(
        [
            make_group("input", 3, fixed=True, bins=1, min_bins=1, round_to=1),
            make_group("a", 16, fixed=False, bins=4, min_bins=1, round_to=1),
            make_group("b", 10, fixed=False, bins=4, min_bins=1, round_to=1),
            make_group("fc", 10, fixed=True, bins=1, min_bins=1, round_to=1),
        ]
    )


def test_space_basics():
    space = _space()
    assert len(space) == 4 and space.index == {"input": 0, "a": 1, "b": 2, "fc": 3}
    assert [g.name for g in space.searchable] == ["a", "b"]
    assert space["b"].max_channels == 10
    assert repr(space) == "WidthSpace(2 searchable groups, 4 in all)"
    assert space.max() == {"input": 3, "a": 16, "b": 10, "fc": 10}
    assert space.min() == {"input": 3, "a": 4, "b": 3, "fc": 10}


def test_validate_fills_fixed_groups_and_names_the_bad_one():
    space = _space()
    assert space.validate({"a": 8, "b": np.int64(7)}) == {"input": 3, "a": 8, "b": 7, "fc": 10}
    assert type(space.validate({"a": 8, "b": np.int64(7)})["b"]) is int
    cases = [
        ([("a", 8)], "width config must be a mapping group -> channels, got [('a', 8)]"),
        ({"a": 8, "b": 7, "c": 1}, "unknown group 'c' in width config (not in this supernet)"),
        ({"a": 8}, "width config is missing group 'b'"),
        ({"a": 8, "b": True}, "width of group 'b' must be an int, got True"),
        ({"a": 8.0, "b": 7}, "width of group 'a' must be an int, got 8.0"),
        ({"a": 8, "b": 6}, "width 6 is not allowed for group 'b' (choices: 3, 5, 7, 10)"),
        ({"a": 0, "b": 7}, "width 0 is not allowed for group 'a'"),
        ({"a": 8, "b": 7, "fc": 9}, "width 9 is not allowed for group 'fc' (choices: 10)"),
    ]
    for cfg, message in cases:
        with pytest.raises(ValueError) as info:
            space.validate(cfg)
        assert message in str(info.value), (cfg, str(info.value))
    removable = WidthSpace([Group("r", 4, (2, 4), block="blk")])
    assert removable.validate({"r": 0}) == {"r": 0}


def test_long_choice_lists_are_shortened_in_messages():
    space = WidthSpace([make_group("w", 64, fixed=False, bins=16, min_bins=1, round_to=1)])
    with pytest.raises(ValueError) as info:
        space.validate({"w": 5})
    assert str(info.value).endswith("(choices: 4, 8, 12, 16, 20, ..., 56, 60, 64)")
    thirteen = WidthSpace([make_group("t", 13, fixed=False, bins=13, min_bins=1, round_to=1)])
    with pytest.raises(ValueError) as info:
        thirteen.validate({"t": 0})
    assert str(info.value).endswith("(choices: 1, 2, 3, 4, 5, ..., 11, 12, 13)")
    twelve = WidthSpace([make_group("v", 12, fixed=False, bins=12, min_bins=1, round_to=1)])
    with pytest.raises(ValueError) as info:
        twelve.validate({"v": 0})
    assert str(info.value).endswith("(choices: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)")


def test_encode_and_decode():
    space = _space()
    rows = space.encode([{"a": 8, "b": 7}, {"a": 16, "b": 3}])
    assert rows.dtype == np.int64 and rows.tolist() == [[3, 8, 7, 10], [3, 16, 3, 10]]
    assert space.encode([]).shape == (0, 4)
    assert space.decode(rows[1]) == {"input": 3, "a": 16, "b": 3, "fc": 10}
    assert all(type(v) is int for v in space.decode(rows[1]).values())
    with pytest.raises(ValueError):
        space.decode([3, 8, 7])
    with pytest.raises(ValueError, match="missing group 'b'"):
        space.encode([{"a": 8}])


def test_uniform_picks_the_nearest_width_and_widens_ties():
    space = _space()
    assert space.uniform(1.0) == space.max()
    assert space.uniform(0.5) == {"input": 3, "a": 8, "b": 5, "fc": 10}
    assert space.uniform(0.6)["b"] == 7  # 6 is as near to 5 as to 7: the wider one
    assert space.uniform(0.6)["a"] == 8  # 9.6 -> 8 (1.6 away) over 12 (2.4 away)
    assert space.uniform(0.01) == space.min()
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(
            ValueError, match=rf"uniform width ratio must be in \(0, 1\], got {bad}"
        ):
            space.uniform(bad)


def test_sample_is_uniform_over_choices_and_seeded():
    space = _space()
    draws = [space.sample(s) for s in range(2000)]
    assert all(space.validate(d) == d for d in draws)
    assert all(d["input"] == 3 and d["fc"] == 10 for d in draws)
    values, counts = np.unique([d["b"] for d in draws], return_counts=True)
    assert values.tolist() == [3, 5, 7, 10] and counts.min() > 400 and counts.max() < 600
    assert space.sample(7) == space.sample(np.random.default_rng(7))
    assert all(type(v) is int for v in draws[0].values())
