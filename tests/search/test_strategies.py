"""Every strategy on a tiny trained supernet: budgets met, valid configs, exact MACs,
reproducible; plus the cost claims of bisection, evolution and peel."""

import json

import numpy as np
import optuna
import pytest
import torch
from widthsearch.search import (
    SubnetEvaluator,
    build_evaluator,
    get_strategy,
    list_strategies,
    make_constraints,
    prior_population,
    resolve_budgets,
    run_search,
)
from widthsearch.search._space import IndexSpace

OPTIONS = {
    "bisection": {},
    "uniform": {},
    "random": {"samples": 4},
    "peel": {},
    "relax": {"steps": 6},
    "evolution": {"trials": 24},
}
BUDGETS = (0.3, 0.5, 0.7)


def test_registry_lists_every_strategy():
    assert list_strategies() == sorted(OPTIONS)
    with pytest.raises(ValueError, match="known: bisection, evolution"):
        get_strategy("annealing")
    with pytest.raises(ValueError, match="no option"):
        get_strategy("uniform").search(None, None, budgets=[1], seed=0, trials=3)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_results_meet_budgets_and_repeat_exactly(loaded, name):
    sn, payload = loaded
    budgets = resolve_budgets(sn, BUDGETS)
    state = {k: v.clone() for k, v in sn.model.state_dict().items()}
    runs = []
    for _ in range(2):  # fresh evaluators: nothing cached between the runs
        evaluator = build_evaluator(sn, payload)
        results = get_strategy(name).search(sn, evaluator, budgets=budgets, seed=5, **OPTIONS[name])
        runs.append((results, evaluator))
    (first, evaluator), (second, _) = runs
    assert [r.budget_macs for r in first] == budgets
    for res, budget in zip(first, budgets, strict=True):
        assert res.strategy == name
        assert res.macs <= budget
        assert res.macs >= 0.9 * budget or "below 90%" in res.notes, res
        assert sn.space.validate(res.widths) == res.widths
        assert sn.macs(res.widths) == res.macs
        assert sn.params(res.widths) == res.params
        assert res.score == evaluator.score(res.widths)  # the score is the config's own
        assert res.evaluations >= 0 and res.seconds >= 0
        json.dumps(res.to_dict())
    if name == "uniform":  # below 90 %: only when no uniform config lies closer
        macs = IndexSpace(sn).macs(IndexSpace(sn).uniform_indices())
        for res in first:
            assert not np.any((macs > res.macs) & (macs <= res.budget_macs))
    assert [(r.widths, r.score, r.macs, r.evaluations) for r in first] == [
        (r.widths, r.score, r.macs, r.evaluations) for r in second
    ]
    for key, value in state.items():  # weights and BN statistics survive the search
        assert torch.equal(value, sn.model.state_dict()[key]), key


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_latency_budgets_and_combined_limits_are_kept(loaded, latency_table, name):
    """Every strategy answers latency budgets, and MACs budgets under params and latency
    limits, inside every limit (predicted latency, exact MACs and params)."""
    sn, payload = loaded
    model = latency_table.bind(sn)
    full_ms = model.predict(sn.widths_vector(sn.space.max()))
    small_ms = model.predict(sn.widths_vector(sn.space.min()))
    latencies = [f"{small_ms + f * (full_ms - small_ms):.4f}ms" for f in (0.3, 0.6)]
    constraints = make_constraints(sn, latencies, table=latency_table)
    budgets = resolve_budgets(sn, latencies, constraints=constraints)
    evaluator = build_evaluator(sn, payload)
    strategy = get_strategy(name)
    results = strategy.search(
        sn, evaluator, budgets=budgets, seed=1, constraints=constraints, **OPTIONS[name]
    )
    for res, budget in zip(results, budgets, strict=True):
        assert res.budget_macs is None and res.budget_ms == pytest.approx(budget / 1e6)
        assert res.latency_ms == pytest.approx(model.predict(sn.widths_vector(res.widths)))
        assert res.latency_ms <= res.budget_ms
        assert sn.macs(res.widths) == res.macs and sn.params(res.widths) == res.params
        json.dumps(res.to_dict())

    max_ms = small_ms + 0.5 * (full_ms - small_ms)
    combined = make_constraints(
        sn, [0.7], table=latency_table, max_params=0.4, max_latency=f"{max_ms:.4f}ms"
    )
    (budget,) = resolve_budgets(sn, [0.7], constraints=combined)
    (res,) = strategy.search(
        sn, evaluator, budgets=[budget], seed=1, constraints=combined, **OPTIONS[name]
    )
    assert res.macs <= budget and res.budget_macs == budget
    assert res.params <= combined.max_params
    assert res.latency_ms <= combined.max_latency_ms
    assert not combined.broken(sn, res.widths)


def test_bisection_evaluates_only_its_final_answers(loaded):
    sn, payload = loaded
    evaluator = build_evaluator(sn, payload)
    scored = []
    original = evaluator.score
    evaluator.score = lambda cfg: scored.append(dict(cfg)) or original(cfg)
    budgets = resolve_budgets(sn, [0.2, 0.45, 0.8])
    results = get_strategy("bisection").search(sn, evaluator, budgets=budgets, seed=0)
    assert scored == [r.widths for r in results]
    assert evaluator.evaluations == len(budgets)
    assert [r.evaluations for r in results] == [1, 1, 1]


def test_evolution_many_budgets_cost_about_one(loaded):
    sn, payload = loaded
    spent = {}
    for key, fractions in (("one", [0.5]), ("five", [0.3, 0.4, 0.5, 0.6, 0.7])):
        evaluator = build_evaluator(sn, payload)
        budgets = resolve_budgets(sn, fractions)
        results = get_strategy("evolution").search(
            sn, evaluator, budgets=budgets, seed=1, trials=24
        )
        assert len(results) == len(budgets)
        spent[key] = evaluator.evaluations
        assert all(r.evaluations == evaluator.evaluations for r in results)
    assert 0 < spent["five"] < 2 * spent["one"], spent


def test_evolution_repairs_every_trial_into_its_budget_window(loaded, tmp_path):
    """Every trial (sampled or seeded) is moved into [0.97, 1] x its budget before it is
    evaluated, budgets take turns, and the evaluator runs once per distinct repaired config."""
    sn, payload = loaded
    evaluator = build_evaluator(sn, payload)
    budgets = resolve_budgets(sn, [0.3, 0.6])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    results = get_strategy("evolution").search(
        sn, evaluator, budgets=budgets, seed=2, trials=20, storage=storage, study_name="s"
    )
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert len(trials) == 20
    targets = [t.user_attrs["target"] for t in trials]
    assert set(targets) == set(budgets)
    for t in trials:
        assert t.user_attrs["evaluated"]
        assert 0.97 * t.user_attrs["target"] <= t.user_attrs["macs"] <= t.user_attrs["target"]
    repaired = {tuple(t.user_attrs["idx"]) for t in trials}
    assert evaluator.evaluations == len(repaired)
    sampled = [t for t in trials if "fixed_params" not in t.system_attrs]
    assert any(
        tuple(t.user_attrs["idx"]) != tuple(t.params[n] for n in sorted(t.params)) for t in sampled
    )
    for res, budget in zip(results, budgets, strict=True):
        assert 0.97 * budget <= res.macs <= budget


def _journal(path):
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def test_evolution_resumes_its_study_from_storage(loaded, tmp_path):
    sn, payload = loaded
    budgets = resolve_budgets(sn, [0.4, 0.6])
    storage = str(tmp_path / "study.log")  # journal file
    search = get_strategy("evolution").search
    search(sn, build_evaluator(sn, payload), budgets=budgets, seed=3, trials=10, storage=storage)
    (name,) = optuna.get_all_study_names(storage=_journal(storage))
    assert name.startswith("widthsearch-evolution-")  # stable name: the restart finds it
    before = [
        (t.number, t.params, t.values)
        for t in optuna.load_study(study_name=name, storage=_journal(storage)).trials
    ]
    assert len(before) == 10

    # restart with a fresh evaluator and the same storage, asking for 16 trials in total
    second = build_evaluator(sn, payload)
    results = search(sn, second, budgets=budgets, seed=3, trials=16, storage=storage)
    trials = optuna.load_study(study_name=name, storage=_journal(storage)).trials
    assert len(trials) == 16
    assert [(t.number, t.params, t.values) for t in trials[:10]] == before
    assert second.evaluations <= 6  # only the new trials were evaluated

    # finished: a further call runs nothing and gives the same answers
    third = build_evaluator(sn, payload)
    again = search(sn, third, budgets=budgets, seed=3, trials=16, storage=storage)
    assert len(optuna.load_study(study_name=name, storage=_journal(storage)).trials) == 16
    assert third.evaluations == 0
    assert [r.widths for r in again] == [r.widths for r in results]


def test_peel_shares_measurements_between_budgets(loaded):
    sn, payload = loaded
    evaluator = build_evaluator(sn, payload)
    budgets = resolve_budgets(sn, [0.5, 0.51])
    space = IndexSpace(sn)
    backbones = {tuple(space.largest_uniform_under(int(0.75 * b))) for b in budgets}
    assert len(backbones) == 1  # same backbone for both budgets
    results = get_strategy("peel").search(sn, evaluator, budgets=budgets, seed=0, moves=0)
    assert evaluator.evaluations <= 1 + len(space) + len(budgets)
    assert all("shared" in r.notes for r in results)


class _WidthLover:
    """A stand-in evaluator: the score is the width of one group (counts its calls)."""

    def __init__(self, space: IndexSpace, group: int) -> None:
        self.space, self.group, self.evaluations = space, space.names[group], 0

    def score(self, cfg) -> float:
        self.evaluations += 1
        return float(cfg[self.group])


def test_peel_reallocation_moves_width_from_uninformative_to_informative_groups(loaded):
    from widthsearch.search.peel import reallocate

    sn, _ = loaded
    space = IndexSpace(sn)
    budget = resolve_budgets(sn, [0.5])[0]
    start = space.grow(space.largest_uniform_under(int(0.75 * budget)), budget)
    target = int(np.argmin(start - (space.sizes - 1)))  # a group that can still widen
    info = np.arange(len(space), dtype=np.float64)
    info[target] = 1e9  # the most informative group
    evaluator = _WidthLover(space, target)
    moved, accepted = reallocate(space, evaluator, start, budget, info, moves=4, pairs=3)
    assert accepted >= 1 and space.macs(moved) <= budget
    assert moved[target] > start[target]  # width went into the informative group ...
    assert (moved < start).any()  # ... out of others
    assert evaluator.evaluations <= 1 + 4 * 3
    # nothing to gain: the score ignores widths -> no move is kept
    flat = _WidthLover(space, target)
    flat.score = lambda cfg: 0.5
    same, none = reallocate(space, flat, start, budget, info, moves=4, pairs=3)
    assert none == 0 and np.array_equal(same, start)


def test_prior_population_follows_recorded_losses(loaded):
    sn, payload = loaded
    space = IndexSpace(sn)
    budget = resolve_budgets(sn, [0.6])[0]
    assert payload["loss_records"]  # the fixture recorded losses, as the trainer does
    samples = prior_population(
        space, payload["loss_records"], budget, count=5, rng=np.random.default_rng(0)
    )
    assert samples and all(space.macs(s) <= budget for s in samples)
    assert len({tuple(s) for s in samples}) == len(samples)
    # wide widths with low loss -> wider samples than the reverse
    mean_macs = {}
    for sign in (1, -1):
        records = {
            g.name: {w: [sign * w / g.max_channels, 1] for w in g.choices}
            for g in sn.space.searchable
        }
        got = prior_population(
            space, records, budget, count=8, rng=np.random.default_rng(0), temperature=0.05
        )
        mean_macs[sign] = np.mean([space.macs(s) for s in got])
    assert mean_macs[-1] > mean_macs[1]


def test_run_search_document(loaded):
    sn, payload = loaded
    evaluator = build_evaluator(sn, payload)
    with pytest.raises(ValueError, match="unknown strategy"):
        run_search(sn, evaluator, strategies=["bisection", "nope"], budgets=[0.5])
    with pytest.raises(ValueError, match="smallest reachable"):
        run_search(sn, evaluator, strategies=["bisection"], budgets=[1])
    assert evaluator.evaluations == 0  # bad input: no work done
    doc = run_search(
        sn,
        evaluator,
        strategies=["uniform", "bisection"],
        budgets=[0.5, "60%"],
        seed=0,
        supernet_path="x.pt",
    )
    json.dumps(doc)
    assert doc["supernet"] == "x.pt" and doc["model"] == "resnet20"
    assert doc["full_macs"] == sn.macs()
    assert [(r["strategy"], r["budget_macs"]) for r in doc["results"]] == [
        (s, b) for s in ("uniform", "bisection") for b in doc["budgets"]
    ]
    assert [c["strategy"] for c in doc["calls"]] == ["uniform", "bisection"]


def test_relax_removes_a_residual_block_and_extraction_is_exact(loaded):
    """Below the narrowest full-depth network only depth pruning fits: relax must drop a
    block, and the extracted model loses that block and costs exactly the analytic MACs."""
    from torch.utils.flop_counter import FlopCounterMode

    sn, payload = loaded
    evaluator = build_evaluator(sn, payload)
    narrowest = sn.macs(sn.space.min())
    depth_space = IndexSpace(sn, removable_zero=True)
    assert depth_space.macs(depth_space.min_index()) < narrowest  # blocks can go
    budget = int(0.97 * narrowest)
    [result] = get_strategy("relax").search(sn, evaluator, budgets=[budget], seed=0, steps=6)
    removed = [name for name, width in result.widths.items() if width == 0]
    assert removed, result.widths
    assert result.macs == sn.macs(result.widths) <= budget

    sub = sn.extract(result.widths, side="left")
    blocks = lambda m: sum(type(x).__name__ == "BasicBlock" for x in m.modules())  # noqa: E731
    assert blocks(sub) == blocks(sn.model) - len(removed)
    x = torch.randn(1, 1, 12, 12)
    with FlopCounterMode(display=False) as counter:
        sub.eval()(x)
    assert counter.get_total_flops() // 2 == result.macs
    assert sum(p.numel() for p in sub.parameters()) == sn.params(result.widths)


def test_relax_answers_a_budget_on_channels_last_convnext(convnext_supernet):
    """ConvNeXt (LayerNorm and Linear on the last dimension, layer scales): relax trains its
    soft masks and answers a MACs budget within 3 % below it."""
    sn = convnext_supernet
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(48, 3, 32, 32, generator=g), torch.randint(4, (48,), generator=g)
    evaluator = SubnetEvaluator(
        sn, images[:16], labels[:16], images[:16], batch_size=16, fit=(images[16:], labels[16:])
    )
    state = {k: v.clone() for k, v in sn.model.state_dict().items()}
    budget = sn.macs() // 2
    [result] = get_strategy("relax").search(sn, evaluator, budgets=[budget], seed=0, steps=4)
    assert 0.97 * budget <= result.macs == sn.macs(result.widths) <= budget, result
    assert sn.space.validate(result.widths) == result.widths
    assert all(torch.equal(v, state[k]) for k, v in sn.model.state_dict().items())
