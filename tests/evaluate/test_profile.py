"""The latency table's whole-subnet fit (``evaluate/profile.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from widthsearch.evaluate.profile import _output_elements, fit_latency
from widthsearch.search.latency import LayerLatency


def test_fit_recovers_overhead_scale_and_activation_cost():
    rng = np.random.default_rng(0)
    sums = rng.uniform(1, 10, size=12)
    mega = rng.uniform(0, 5, size=12)
    measured = 0.7 + 1.3 * sums + 0.4 * mega
    overhead, scale, activation = fit_latency(list(sums), list(mega), list(measured))
    assert (overhead, scale, activation) == pytest.approx((0.7, 1.3, 0.4), abs=1e-9)


def test_fit_keeps_every_term_non_negative():
    sums = [1.0, 2.0, 3.0, 4.0, 5.0]
    mega = [1.0, 3.0, 2.0, 5.0, 4.0]
    # measured falls with the elements: their coefficient is clipped to 0, not negative
    measured = [2 + s - 0.3 * e for s, e in zip(sums, mega, strict=True)]
    overhead, scale, activation = fit_latency(sums, mega, measured)
    assert min(overhead, scale, activation) >= 0
    assert activation == 0.0


def test_fit_with_too_little_to_fit_keeps_the_layers_and_a_constant():
    assert fit_latency([2.0, 2.0], [1.0, 3.0], [3.0, 3.5]) == (1.25, 1.0, 0.0)
    assert fit_latency([1.0, 2.0], [1.0, 2.0], [0.5, 0.5]) == (0.0, 1.0, 0.0)


def test_output_elements_follow_the_output_width_axis():
    choices = {"a": [2, 4], "b": [1, 3, 5]}
    two = _output_elements(LayerLatency("conv", ["a", "b"], []), choices, per_channel=1_000_000)
    assert np.array_equal(two, [[1, 3, 5], [1, 3, 5]])
    one = _output_elements(LayerLatency("bn", ["a"], []), choices, per_channel=500_000)
    assert np.array_equal(one, [1.0, 2.0])
