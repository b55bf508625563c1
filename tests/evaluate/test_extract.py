"""`widthsearch extract`: the subnet file, budget matching, loading without widthsearch, and
bad inputs (one line, exit 2, no output file)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from widthsearch.evaluate import export_subnet, find_search_result, load_subnet, read_search
from widthsearch.recipes.cli import main
from widthsearch.search import format_macs

SUBNET_KEYS = {
    "format",
    "version",
    "state_dict",
    "widths",
    "inheritance",
    "meta",
    "macs",
    "params",
    "supernet",
    "strategy",
    "budget_macs",
    "recipe",
}


def _result(search_path, strategy: str, fraction: float) -> dict:
    doc = json.loads(search_path.read_text())
    budget = int(fraction * doc["full_macs"])
    return next(
        r for r in doc["results"] if r["strategy"] == strategy and r["budget_macs"] == budget
    )


def test_extract_cli_writes_the_searched_subnet(loaded, supernet_path, search_path, tmp_path):
    sn, _ = loaded
    out = tmp_path / "sub.pt"
    argv = ["extract", str(supernet_path), "--from", str(search_path), "--strategy", "random"]
    assert main([*argv, "--budget", "0.5", "--out", str(out)]) == 0
    payload = torch.load(out, weights_only=True)  # plain data: nothing in it runs
    assert set(payload) >= SUBNET_KEYS and "module" not in payload
    assert payload["format"] == "widthsearch.subnet" and payload["version"] == 2
    result = _result(search_path, "random", 0.5)
    assert payload["widths"] == sn.space.validate(result["widths"])
    assert payload["strategy"] == "random" and payload["budget_macs"] == result["budget_macs"]
    assert payload["macs"] == result["macs"] and payload["params"] == result["params"]
    assert payload["supernet"] == str(supernet_path) and payload["meta"] == sn.meta
    assert payload["recipe"]["data"]["name"] == "synthetic"
    inh = payload["inheritance"]
    assert inh["chosen"] in inh["scores"] and len(inh["scores"]) == 4
    module = load_subnet(out)  # rebuilt from the model's name, arguments and widths
    assert type(module) is type(sn.model) and not module.training
    assert sum(p.numel() for p in module.parameters()) == payload["params"]
    for key, value in module.state_dict().items():
        assert torch.equal(value, payload["state_dict"][key])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.pt"]  # no temp files left


def test_extract_cli_from_a_widths_file(loaded, supernet_path, tmp_path, config_of):
    sn, _ = loaded
    cfg = config_of(sn, 11)
    widths = tmp_path / "w.json"
    widths.write_text(json.dumps({"widths": cfg}))
    out = tmp_path / "sub.pt"
    argv = ["extract", str(supernet_path), "--widths", str(widths), "--out", str(out)]
    assert main([*argv, "--inheritance", "left", "--inheritance", "bn"]) == 0
    payload = torch.load(out, weights_only=True)
    assert payload["widths"] == sn.space.validate(cfg) and payload["budget_macs"] is None
    assert set(payload["inheritance"]["scores"]) == {"left", "bn"}
    assert payload["macs"] == sn.macs(cfg)


def test_budget_matches_a_result_within_half_a_percent(search_path):
    doc = read_search(search_path)  # a hand-made file with only the keys the README names
    budget = _result(search_path, "uniform", 0.75)["budget_macs"]
    for given in ("0.75", "75%", str(budget), str(int(budget * 1.004)), 0.75):
        answer = find_search_result(doc, strategy="uniform", budget=given)
        assert answer.budget_macs == budget and answer.strategy == "uniform"
    wrong = int(budget * 1.01)
    with pytest.raises(ValueError) as info:
        find_search_result(doc, strategy="uniform", budget=str(wrong), source="s.json")
    full = doc.full_macs
    have = ", ".join(
        f"{format_macs(r.budget_macs)} ({r.budget_macs / full:.1%})" for r in doc.answers("uniform")
    )
    assert str(info.value) == (
        f"s.json has no 'uniform' result at budget {wrong} = {wrong} MACs (its budgets: {have})"
    )
    with pytest.raises(ValueError, match=r"no results for strategy 'peel' \(has: random, uniform"):
        find_search_result(doc, strategy="peel", budget="0.75")


def test_a_latency_budget_matches_a_result_by_milliseconds(search_path):
    doc = read_search(search_path)
    timed = dataclasses.replace(doc.results[0], budget_macs=None, budget_ms=2.5, strategy="peel")
    doc = dataclasses.replace(doc, results=(*doc.results, timed))
    for given in ("2.5ms", "2500us", "2.51ms"):
        assert find_search_result(doc, strategy="peel", budget=given).budget_ms == 2.5
    with pytest.raises(ValueError) as info:
        find_search_result(doc, strategy="peel", budget="3ms", source="s.json")
    assert str(info.value) == (
        "s.json has no 'peel' result at latency budget 3ms (its latency budgets: 2.5ms)"
    )
    with pytest.raises(ValueError, match="no 'peel' result at budget"):
        find_search_result(doc, strategy="peel", budget="0.5")


def _bad_inputs(supernet_path, search_path, tmp_path):
    misfit = tmp_path / "misfit.json"
    misfit.write_text(json.dumps({"layer1.0.conv1": 7}))
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"no_such_group": 8}))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_text("not a checkpoint")
    doc = json.loads(search_path.read_text())
    doc["results"][1]["score"] = "high"
    malformed = tmp_path / "malformed.json"
    malformed.write_text(json.dumps(doc))
    sn, search = str(supernet_path), str(search_path)
    return {
        "unknown strategy": (
            [sn, "--from", search, "--strategy", "evolution", "--budget", "0.5"],
            "no results for strategy 'evolution'",
        ),
        "unknown budget": (
            [sn, "--from", search, "--strategy", "random", "--budget", "0.3"],
            "no 'random' result at budget",
        ),
        "bad budget": (
            [sn, "--from", search, "--strategy", "random", "--budget", "half"],
            "bad budget",
        ),
        "widths misfit": ([sn, "--widths", str(misfit)], "widths do not fit the supernet"),
        "foreign widths": ([sn, "--widths", str(foreign)], "unknown group 'no_such_group'"),
        "missing supernet": (
            [
                str(tmp_path / "nope.pt"),
                "--from",
                search,
                "--strategy",
                "random",
                "--budget",
                "0.5",
            ],
            "no such file",
        ),
        "corrupt supernet": (
            [str(corrupt), "--from", search, "--strategy", "random", "--budget", "0.5"],
            "not a readable checkpoint",
        ),
        "missing search": (
            [sn, "--from", str(tmp_path / "nope.json"), "--strategy", "random", "--budget", "0.5"],
            "no such file",
        ),
        "missing widths": ([sn, "--widths", str(tmp_path / "nope.json")], "no such file"),
        "foreign search": (
            [sn, "--from", str(foreign), "--strategy", "random", "--budget", "0.5"],
            "no 'results' list (not a widthsearch search JSON)",
        ),
        "malformed search": (
            [sn, "--from", str(malformed), "--strategy", "random", "--budget", "0.5"],
            "results[1].score must be a number, got 'high'",
        ),
        "from without budget": (
            [sn, "--from", search, "--strategy", "random"],
            "--from needs --strategy and --budget",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unknown strategy",
        "unknown budget",
        "bad budget",
        "widths misfit",
        "foreign widths",
        "missing supernet",
        "corrupt supernet",
        "missing search",
        "missing widths",
        "foreign search",
        "malformed search",
        "from without budget",
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(
    case, supernet_path, search_path, tmp_path, capsys
):
    argv, message = _bad_inputs(supernet_path, search_path, tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["extract", *argv, "--out", str(out_dir / "sub.pt")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("widthsearch extract: error:"), err
    assert message in err[0]
    assert list(out_dir.iterdir()) == []


def test_subnet_file_and_export_load_without_importing_widthsearch(timm_subnet_path, tmp_path):
    """The subnet file is plain data (weights-only, no widthsearch needed to read it) and its
    TorchScript export runs without widthsearch, with the outputs of ``load_subnet``."""
    export_subnet(timm_subnet_path, tmp_path / "exp", formats=["torchscript"])
    code = (
        "import json, sys, torch\n"
        "p = torch.load(sys.argv[1], weights_only=True)\n"
        "y = torch.jit.load(sys.argv[2]).eval()(torch.ones(2, 1, 16, 16))\n"
        "bad = [n for n in sys.modules if n == 'widthsearch' or n.startswith('widthsearch.')]\n"
        "print(json.dumps({'bad': bad, 'format': p['format'], 'model': p['meta']['model'],\n"
        "                  'widths': p['widths'], 'y': y.tolist()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(timm_subnet_path), str(tmp_path / "exp/subnet.ts.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["bad"] == [] and report["format"] == "widthsearch.subnet"
    assert report["model"] == "timm:resnet18" and report["widths"]
    module = load_subnet(timm_subnet_path)
    assert type(module).__module__.startswith("timm.")
    with torch.no_grad():
        expected = module(torch.ones(2, 1, 16, 16))
    assert torch.allclose(torch.tensor(report["y"]), expected, atol=1e-5)
