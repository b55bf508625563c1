"""The latency table: JSON round trip and validation, predictions that are the table's sum,
refusal of a table made elsewhere, latency budgets and the constraint set's cost."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from widthsearch.search import (
    Constraints,
    LatencyTable,
    budget_measure,
    make_constraints,
    parse_latency,
    resolve_budgets,
)
from widthsearch.search._space import IndexSpace


def test_table_round_trips_through_json(latency_table, latency_table_path):
    doc = json.loads(latency_table_path.read_text())
    again = LatencyTable.from_dict(json.loads(json.dumps(latency_table.to_dict())))
    assert again.to_dict() == latency_table.to_dict() == doc
    assert {"device", "threads", "batch", "torch", "model", "input_size"} <= set(doc)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format=99), "format"),
        (lambda d: d.update(threads="one"), "threads"),
        (lambda d: d["layers"][0].update(ms=[[1.0]]), "shape"),
        (lambda d: d["layers"][1].update(groups=["nope"]), "not in 'choices'"),
        (lambda d: d.update(overhead_ms=-1), "overhead_ms"),
        (lambda d: d.update(layers=[]), "no layers"),
        (lambda d: d.update(sample_widths=-1), "sample_widths"),
    ],
)
def test_a_bad_table_is_refused_naming_the_field(latency_table, change, message):
    doc = latency_table.to_dict()
    change(doc)
    with pytest.raises(ValueError, match=message):
        LatencyTable.from_dict(doc)


def test_prediction_is_the_sum_of_table_entries(loaded, latency_table_path):
    sn, _ = loaded
    doc = json.loads(latency_table_path.read_text())
    table = LatencyTable.from_dict(doc)
    model = table.bind(sn)

    def by_hand(pick: int) -> float:  # every axis at its widest (-1) or narrowest (0) choice
        total = doc["overhead_ms"]
        for layer in doc["layers"]:
            cell = layer["ms"]
            for _ in layer["groups"]:
                cell = cell[pick]
            total += cell
        return total

    full = model.predict(sn.widths_vector(sn.space.max()))
    smallest = model.predict(sn.widths_vector(sn.space.min()))
    assert full == pytest.approx(by_hand(-1), abs=1e-9)
    assert smallest == pytest.approx(by_hand(0), abs=1e-9)
    assert table.predict_config(sn) == pytest.approx(full)
    rng = np.random.default_rng(0)
    cfgs = [sn.space.sample(rng) for _ in range(5)]
    batch = model.predict(np.stack([sn.widths_vector(c) for c in cfgs]))
    assert batch.tolist() == pytest.approx([model.predict(sn.widths_vector(c)) for c in cfgs])
    assert smallest < min(batch) <= max(batch) < full


def test_expected_latency_is_exact_for_point_masses_and_linear(loaded, latency_table):
    sn, _ = loaded
    space = IndexSpace(
        sn, constraints=Constraints(measure="latency", latency=latency_table.bind(sn))
    )
    a = np.random.default_rng(1).integers(0, space.sizes)

    def onehot(idx):
        return [
            torch.eye(int(n), dtype=torch.float64)[int(i)]
            for i, n in zip(idx, space.sizes, strict=True)
        ]

    assert float(space.expected_cost(onehot(a))) == pytest.approx(space.cost(a), abs=1)
    # one group drawn 50/50 between two choices: the mean of the two predictions
    c = a.copy()
    c[0] = (a[0] + 1) % space.sizes[0]
    probs = onehot(a)
    probs[0] = 0.5 * probs[0] + 0.5 * onehot(c)[0]
    expected = float(space.expected_cost(probs))
    assert expected == pytest.approx((space.cost(a) + space.cost(c)) / 2, abs=1)


def test_a_table_made_elsewhere_is_refused_with_one_line(loaded, latency_table):
    sn, _ = loaded
    latency_table.check(device="cpu", threads=1, batch=1, model="resnet20")
    for asked in ({"threads": 4}, {"batch": 32}, {"device": "cuda:0"}, {"model": "resnet56"}):
        with pytest.raises(ValueError) as info:
            latency_table.check(**asked)
        message = str(info.value)
        assert "\n" not in message and next(iter(asked)) in message and "profile again" in message
    latency_table.choices[next(iter(latency_table.choices))] = [1, 2]
    with pytest.raises(ValueError, match="another width space"):
        latency_table.bind(sn)


def test_latency_budgets_parse_and_resolve(loaded, latency_table):
    sn, _ = loaded
    assert parse_latency("12ms") == 12 and parse_latency("800us") == pytest.approx(0.8)
    assert parse_latency("0.01 s") == pytest.approx(10) and parse_latency("20M") is None
    with pytest.raises(ValueError, match="bad latency"):
        parse_latency("12xs")
    with pytest.raises(ValueError, match="mix"):
        budget_measure(["0.5", "3ms"])
    full = latency_table.predict_config(sn)
    smallest = latency_table.predict_config(sn, sn.space.min())
    ms = round((smallest + full) / 2, 3)
    constraints = make_constraints(sn, [f"{ms}ms"], table=latency_table)
    assert constraints.measure == "latency"
    budgets = [f"{ms}ms", f"{ms * 1000:.0f}us"]
    assert resolve_budgets(sn, budgets, constraints=constraints) == [round(ms * 1e6)]
    with pytest.raises(ValueError, match="above the full model's predicted"):
        resolve_budgets(sn, [f"{full + 1}ms"], constraints=constraints)
    with pytest.raises(ValueError, match="below the smallest"):
        resolve_budgets(sn, ["1us"], constraints=constraints)
    with pytest.raises(ValueError, match="latency table"):
        make_constraints(sn, ["2ms"])
    with pytest.raises(ValueError, match="is a latency"):
        resolve_budgets(sn, ["2ms"])
    with pytest.raises(ValueError, match="exclude every subnet"):
        resolve_budgets(sn, [0.5], constraints=make_constraints(sn, [0.5], max_params=10))


def test_cost_keeps_every_limit_and_grows_with_widths(loaded, latency_table):
    sn, _ = loaded
    full = latency_table.predict_config(sn)
    middle = (latency_table.predict_config(sn, sn.space.min()) + full) / 2
    constraints = make_constraints(
        sn, [0.6], table=latency_table, max_params=0.5, max_latency=f"{middle}ms"
    )
    space = IndexSpace(sn, constraints=constraints)
    rng = np.random.default_rng(2)
    idx = rng.integers(0, space.sizes, size=(300, len(space)))
    cost, macs = space.cost(idx), space.macs(idx)
    params = np.array([space.params(i) for i in idx])
    latency = constraints.latency.predict(space.widths(idx))
    keeps = (params <= constraints.max_params) & (latency <= constraints.max_latency_ms)
    assert keeps.any() and not keeps.all()
    assert (cost[keeps] == macs[keeps]).all()
    assert (cost[~keeps] > sn.macs()).all()  # above every MACs budget
    wider = np.minimum(idx + 1, space.sizes - 1)
    assert (space.cost(wider) >= cost).all()


def test_latency_budget_as_an_int_is_nanoseconds_and_a_macs_budget_is_refused(
    loaded, latency_table
):
    sn, _ = loaded
    full = latency_table.predict_config(sn)
    smallest = latency_table.predict_config(sn, sn.space.min())
    ns = round((smallest + full) / 2 * 1e6)
    constraints = make_constraints(sn, [f"{ns / 1e6}ms"], table=latency_table)
    assert resolve_budgets(sn, [ns], constraints=constraints) == [ns]  # absolute, like MACs
    with pytest.raises(ValueError) as info:
        resolve_budgets(sn, ["0.5"], constraints=constraints)
    assert str(info.value) == (
        "budget 0.5 is not a latency (12ms, 800us): a latency search takes latency budgets "
        "only; give a MACs limit as --max-macs"
    )


def test_latency_budgets_at_the_ends_and_their_messages(loaded, latency_table):
    from widthsearch.search import format_ms

    sn, _ = loaded
    full = latency_table.predict_config(sn)
    smallest = latency_table.predict_config(sn, sn.space.min())
    constraints = make_constraints(sn, [f"{full}ms"], table=latency_table)
    ends = [round(smallest * 1e6), round(full * 1e6)]  # ns: exactly the two ends are reachable
    assert resolve_budgets(sn, ends, constraints=constraints) == ends
    with pytest.raises(ValueError) as info:
        resolve_budgets(sn, [ends[0] - 1], constraints=constraints)
    assert str(info.value) == (
        f"budget {ends[0] - 1} is below the smallest reachable subnet: predicted "
        f"{format_ms(smallest)} ({smallest / full:.1%} of full)"
    )
    with pytest.raises(ValueError) as info:
        resolve_budgets(sn, [ends[1] + 1], constraints=constraints)
    assert str(info.value) == (
        f"budget {ends[1] + 1} is above the full model's predicted {format_ms(full)}"
    )


def test_constraint_limits_are_parsed_like_budgets(loaded, latency_table):
    sn, _ = loaded
    full_macs, full_params = sn.macs(), sn.params()
    constraints = make_constraints(
        sn, ["0.5"], table=latency_table, max_macs="0.5", max_params="0.25", max_latency="3ms"
    )
    assert constraints.max_macs == round(full_macs * 0.5)
    assert constraints.max_params == round(full_params * 0.25)
    assert constraints.max_latency_ms == 3.0 and constraints.latency is not None
    absolute = make_constraints(sn, ["0.5"], max_macs=12345, max_params="1k")
    assert (absolute.max_macs, absolute.max_params) == (12345, 1000)
    with pytest.raises(ValueError) as info:
        make_constraints(sn, ["0.5"], table=latency_table, max_latency="3")
    assert str(info.value) == "bad --max-latency '3': give a unit (8ms, 800us)"


def test_budget_messages_in_full(loaded, latency_table):
    sn, _ = loaded
    with pytest.raises(ValueError) as info:
        resolve_budgets(sn, ["2ms"])
    assert str(info.value) == (
        "budget 2ms is a latency: search it with a latency table "
        "(--latency-table LAT.json), apart from MACs budgets"
    )
    latency = make_constraints(sn, ["1ms"], table=latency_table)
    for constraints in (None, latency):
        with pytest.raises(ValueError) as info:
            resolve_budgets(sn, [], constraints=constraints)
        assert str(info.value) == "no budget given"
    # the smallest subnet breaks two limits: both are named, "; " between them
    both = make_constraints(sn, [0.5], max_params=10, max_macs=10)
    with pytest.raises(ValueError) as info:
        resolve_budgets(sn, [0.5], constraints=both)
    smallest = sn.space.min()
    assert str(info.value) == (
        f"the limits exclude every subnet: the smallest one has {sn.macs(smallest)} MACs > "
        f"max 10; {sn.params(smallest)} params > max 10"
    )
