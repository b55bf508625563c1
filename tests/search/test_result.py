"""The search document (search.json) as a typed artefact: what a search writes is key for
key, value for value what the code before it wrote; it reads back to itself; a foreign or
malformed file is one ValueError naming the key."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from widthsearch.search import (
    SearchAnswer,
    SearchDocument,
    build_evaluator,
    get_strategy,
    make_constraints,
    resolve_budgets,
    run_search,
    search_widths,
)

TIMED = {"seconds", "evaluation_seconds", "images_per_second"}  # wall time: differs per run


def _untimed(doc):
    """``doc`` with its wall times zeroed (everything else must agree to the byte)."""
    if isinstance(doc, dict):
        return {k: 0 if k in TIMED else _untimed(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_untimed(v) for v in doc]
    return doc


def _previous_document(sn, evaluator, *, strategies, budgets, options, constraints=None):
    """The dict `run_search` built before the document was typed, spelt out as it was."""
    absolute = resolve_budgets(sn, budgets, constraints=constraints)
    answers, calls = [], []
    for name in strategies:
        evaluator.clear_cache()
        before = evaluator.evaluations
        found = get_strategy(name).search(
            sn, evaluator, budgets=absolute, seed=0, constraints=constraints, **options[name]
        )
        calls.append({"strategy": name, "evaluations": evaluator.evaluations - before})
        answers.extend(r.to_dict() for r in found)
    timed = {"evaluation_seconds": 0, "seconds": 0}
    doc = {
        "supernet": "x.pt",
        "model": sn.meta.get("model", ""),
        "full_macs": int(sn.macs()),
        "min_macs": int(sn.macs(sn.space.min())),
        "full_params": int(sn.params()),
        "seed": 0,
        "budgets": absolute,
        "evaluator": evaluator.stats(),
        "calls": [{**call, **timed} for call in calls],
        "results": answers,
    }
    if constraints is not None and (constraints.limited or constraints.latency is not None):
        doc["constraints"] = constraints.to_dict()
        if constraints.latency is not None:
            full = sn.widths_vector(sn.space.max())
            doc["full_latency_ms"] = round(float(constraints.latency.predict(full)), 6)
    return doc


def _constraints(sn, latency_table, case):
    """``(constraints, budgets)``: MACs budgets alone, with a limit, or latency budgets."""
    if case == "macs":
        return None, (0.3, 0.5, "60%")
    if case == "limit":
        return make_constraints(sn, [0.5], max_macs=0.45), (0.3, 0.5)
    full_ms = latency_table.predict_config(sn)
    budgets = (f"{0.7 * full_ms:.4f}ms",)
    return make_constraints(sn, budgets, table=latency_table, max_params=0.5), budgets


@pytest.mark.parametrize("case", ["macs", "limit", "latency"])
def test_the_document_writes_what_the_previous_code_wrote(loaded, latency_table, case):
    sn, payload = loaded
    strategies = ["bisection", "uniform", "peel", "random"]
    options = {"bisection": {}, "uniform": {}, "peel": {}, "random": {"samples": 3}}
    constraints, budgets = _constraints(sn, latency_table, case)
    settings = dict(strategies=strategies, budgets=budgets, constraints=constraints)
    fresh = lambda: build_evaluator(sn, payload, heldout_images=32, calib_batches=1)  # noqa: E731
    previous = _previous_document(sn, fresh(), options=options, **settings)
    doc = search_widths(sn, fresh(), options=options, seed=0, supernet_path="x.pt", **settings)
    assert isinstance(doc, SearchDocument) and all(isinstance(a, SearchAnswer) for a in doc.results)
    written = json.dumps(_untimed(doc.to_dict()), indent=1)
    assert written == json.dumps(_untimed(previous), indent=1)  # same keys, order and values
    assert list(doc.to_dict()) == list(previous)
    assert SearchDocument.from_dict(doc.to_dict()) == doc
    assert SearchDocument.from_dict(json.loads(json.dumps(doc.to_dict()))) == doc
    if case == "latency":
        assert doc.full_latency_ms is not None and doc.constraints["measure"] == "latency"
        assert all(a.budget_macs is None and a.budget_ms is not None for a in doc.results)
    again = run_search(sn, fresh(), options=options, seed=0, supernet_path="x.pt", **settings)
    assert _untimed(again) == _untimed(doc.to_dict())  # the JSON dict of the same search


def _answer(**changes) -> dict:
    row = {
        "strategy": "uniform",
        "budget_macs": 1000,
        "macs": 990,
        "params": 50,
        "score": 0.5,
        "widths": {"conv1": 8, "fc": 10},
        "evaluations": 1,
        "seconds": 0.1,
    }
    return {**row, **changes}


def _older_file() -> dict:
    """A file with only the keys the README names (older, or written by hand)."""
    return {"supernet": "s.pt", "model": "resnet20", "full_macs": 2000, "results": [_answer()]}


def test_files_read_back_to_themselves():
    timed = _answer(budget_macs=None, seconds=3.0, notes="shared", budget_ms=2.5, latency_ms=2.4)
    newest = {  # every key, in the order a search writes them
        "supernet": "s.pt",
        "model": "resnet20",
        "full_macs": 2000,
        "min_macs": 100,
        "full_params": 90,
        "seed": 0,
        "budgets": [1000],
        "evaluator": {"evaluations": 2, "sides": ["left", "right"]},
        "calls": [{"strategy": "uniform", "evaluations": 2, "seconds": 0.2}],
        "results": [_answer(), timed],
        "constraints": {"measure": "latency", "max_params": 45},
        "full_latency_ms": 3.5,
        "recipe_search": {"strategies": ["uniform"], "budgets": [0.5]},
    }
    for raw in (_older_file(), newest):
        doc = SearchDocument.from_dict(copy.deepcopy(raw))
        assert doc.to_dict() == raw and list(doc.to_dict()) == list(raw)
        assert json.dumps(doc.to_dict()) == json.dumps(raw)  # byte for byte
        assert SearchDocument.from_dict(doc.to_dict()) == doc
    doc = SearchDocument.from_dict(newest)
    assert doc.min_macs == 100 and doc.budgets == (1000,) and doc.full_latency_ms == 3.5
    assert doc.results[1] == SearchAnswer(
        strategy="uniform",
        budget_macs=None,
        macs=990,
        params=50,
        score=0.5,
        widths={"conv1": 8, "fc": 10},
        evaluations=1,
        seconds=3.0,
        notes="shared",
        budget_ms=2.5,
        latency_ms=2.4,
    )
    assert doc.strategies == ["uniform"] and doc.answers("peel") == []
    older = SearchDocument.from_dict(_older_file())
    assert older.seed is None and older.evaluator is None and older.recipe_search is None
    # the document owns its data: changing what it was read from or wrote changes nothing
    raw = _older_file()
    doc = SearchDocument.from_dict(raw)
    raw["results"][0]["widths"]["fc"] = 3
    doc.to_dict()["results"][0]["widths"]["fc"] = 4
    assert doc.results[0].widths["fc"] == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: [d], "search file: no 'results' list (not a widthsearch search JSON)"),
        (lambda d: {"widths": {"conv1": 8}}, "no 'results' list"),
        (lambda d: {**d, "results": {}}, "no 'results' list"),
        (lambda d: {**d, "score": 1}, "search file: unknown key 'score' (known: supernet, model"),
        (lambda d: {**d, "full_macs": "2000"}, "full_macs must be an int or null, got '2000'"),
        (lambda d: {**d, "seed": True}, "seed must be an int or null, got True"),
        (lambda d: {**d, "budgets": [1000, 0.5]}, "budgets[1] must be an int, got 0.5"),
        (lambda d: {**d, "calls": ["uniform"]}, "calls[0] must be an object, got 'uniform'"),
        (lambda d: {**d, "results": [_answer(), 3]}, "results[1] must be an object, got 3"),
        (
            lambda d: {**d, "results": [_answer(budget=5)]},
            "search file: unknown key 'budget' in results[0] (known: strategy, budget_macs",
        ),
        (
            lambda d: {**d, "results": [{k: v for k, v in _answer().items() if k != "widths"}]},
            "search file: results[0] has no 'widths'",
        ),
        (
            lambda d: {**d, "results": [_answer(score="high")]},
            "search file: results[0].score must be a number, got 'high'",
        ),
        (lambda d: {**d, "results": [_answer(macs=None)]}, "results[0].macs must be an int, got"),
        (
            lambda d: {**d, "results": [_answer(widths={"fc": 2.5})]},
            "results[0].widths['fc'] must be an int, got 2.5",
        ),
        (lambda d: {**d, "results": [_answer(notes=7)]}, "results[0].notes must be a str or null"),
    ],
)
def test_a_foreign_or_malformed_file_is_one_error_naming_the_key(change, message):
    with pytest.raises(ValueError) as info:
        SearchDocument.from_dict(change(_older_file()))
    assert message in str(info.value)
