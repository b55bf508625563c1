"""`widthsearch run`: the whole pipeline through the real console script on a tiny recipe."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import widthsearch.evaluate as evaluate_mod
import widthsearch.search as search_mod
from widthsearch.recipes.cli import main
from widthsearch.supernet.checkpoint import load_checkpoint, load_supernet

SCRIPT = Path(sys.executable).parent / "widthsearch"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STRATEGIES = ["bisection", "evolution", "peel", "relax", "uniform", "random"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), "run", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=ENV,
    )


def test_run_writes_report_plot_and_reuses_finished_work(run_tiny, tmp_path):
    out = tmp_path / "job"
    proc = _run(str(run_tiny), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "CUDA" not in proc.stderr, proc.stderr[-2000:]

    sn, _ = load_supernet(out / "supernet.pt")
    full = sn.macs()
    search = json.loads((out / "search.json").read_text())
    budgets = sorted({r["budget_macs"] for r in search["results"]})
    assert budgets == [int(0.4 * full), int(0.7 * full)]

    rows = json.loads((out / "results.json").read_text())
    assert sorted((r["strategy"], r["budget_macs"]) for r in rows) == sorted(
        (s, b) for s in STRATEGIES for b in budgets
    )
    for row in rows:
        assert row["macs"] <= row["budget_macs"], row
        assert 0.0 <= row["top1"] <= 1.0
        assert row["inheritance"] in ("left", "right", "l1", "bn")
        assert row["latency_ms"]["batch1"] > 0

    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ") and "%)" in line]
    assert len(table) == len(STRATEGIES) * len(budgets)
    for strategy in STRATEGIES:
        assert sum(strategy in line for line in table) == len(budgets), strategy
    assert "pareto.png" in report
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert str(out / "report.md") in proc.stdout
    # every file the run wrote is plain data: readable weights-only, nothing in it runs
    artefacts = [out / "supernet.pt", *out.glob("subnets/*.pt")]
    trained = [r for r in rows if r["same_as"] is None]  # answers of the same widths share
    assert len(artefacts) == 1 + 2 * len(trained)  # extracted and fine-tuned subnets
    for path in artefacts:
        assert torch.load(path, weights_only=True)["format"].startswith("widthsearch."), path

    # a rerun reuses the trained supernet, the search and every fine-tuned subnet
    kept = [out / "supernet.pt", out / "search.json", *out.glob("subnets/*.pt")]
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    again = _run(str(run_tiny), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "supernet: reusing" in again.stdout and "search: reusing" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rerun = json.loads((out / "results.json").read_text())
    assert [(r["strategy"], r["top1"], r["macs"]) for r in rerun] == [
        (r["strategy"], r["top1"], r["macs"]) for r in rows
    ]

    # other [search] settings search again; the seeded search gives the same widths, so the
    # fine-tuned subnets still stand
    third = _run(
        str(run_tiny), "--out", str(out), "--budget", "0.4", "--budget", "0.7", cwd=tmp_path
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "search: reusing" not in third.stdout
    assert (out / "search.json").stat().st_mtime_ns != stamps[out / "search.json"]
    subnet_files = [p for p in stamps if p.parent.name == "subnets"]
    assert {p: p.stat().st_mtime_ns for p in subnet_files} == {p: stamps[p] for p in subnet_files}


def test_run_rejects_an_unknown_strategy_before_training(run_tiny, tmp_path):
    out = tmp_path / "job"
    proc = _run(str(run_tiny), "--out", str(out), "--strategy", "annealing", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "annealing" in lines[0] and "bisection" in lines[0], lines
    assert not out.exists()


def test_run_rejects_a_missing_recipe(tmp_path):
    proc = _run(str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("widthsearch run: error:"), lines
    assert "nope.toml" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_search_is_reused_only_from_a_sound_file_of_the_same_settings(tmp_path):
    from widthsearch.recipes._cmd_run import _finished_search

    settings = {"strategies": ["uniform"], "budgets": [0.5]}
    answer = {
        "strategy": "uniform",
        "budget_macs": 100,
        "macs": 90,
        "params": 9,
        "score": 0.5,
        "widths": {"conv1": 4},
        "evaluations": 1,
        "seconds": 0.1,
    }
    path = tmp_path / "search.json"
    doc = {"supernet": "s.pt", "results": [answer], "recipe_search": settings}
    path.write_text(json.dumps(doc))
    found = _finished_search(path, settings)
    assert found is not None and found.to_dict() == doc and found.results[0].widths == {"conv1": 4}
    assert _finished_search(path, {**settings, "budgets": [0.4]}) is None  # other settings
    path.write_text(json.dumps({**doc, "results": [{**answer, "widths": None}]}))
    assert _finished_search(path, settings) is None  # malformed: search again
    path.write_text("{")
    assert _finished_search(path, settings) is None  # not JSON
    assert _finished_search(tmp_path / "none.json", settings) is None


def test_answers_of_the_same_widths_are_fine_tuned_once(run_tiny, tmp_path, monkeypatch):
    real_search, real_finetune = search_mod.search_widths, evaluate_mod.finetune_subnet
    tuned = []

    def agreeing_search(*args, **kwargs):  # bisection answers what uniform answered
        doc = real_search(*args, **kwargs)
        uniform = next(r for r in doc.results if r.strategy == "uniform")
        results = [
            dataclasses.replace(r, widths=dict(uniform.widths), macs=uniform.macs)
            if r.strategy == "bisection"
            else r
            for r in doc.results
        ]
        return dataclasses.replace(doc, results=results)

    def counting_finetune(subnet, *, out, **kwargs):
        tuned.append(Path(out).name)
        return real_finetune(subnet, out=out, **kwargs)

    monkeypatch.setattr(search_mod, "search_widths", agreeing_search)
    monkeypatch.setattr(evaluate_mod, "finetune_subnet", counting_finetune)
    out = tmp_path / "job"
    args = ["run", str(run_tiny), "--out", str(out), "--no-latency", "--budget", "0.5"]
    assert main([*args, "--strategy", "uniform", "--strategy", "bisection"]) == 0

    (budget,) = {r["budget_macs"] for r in json.loads((out / "results.json").read_text())}
    first, second = json.loads((out / "results.json").read_text())
    assert tuned == [f"uniform-{budget}-ft.pt"]  # one fine-tune for the two answers
    assert second["strategy"] == "bisection" and second["same_as"] == f"uniform-{budget}"
    for key in ("top1", "macs", "params", "inheritance"):
        assert second[key] == first[key], key
    assert not (out / "subnets" / f"bisection-{budget}-ft.pt").exists()


def test_under_torchrun_the_subnets_are_spread_over_the_ranks_and_equal_one_process(
    run_tiny, tmp_path
):
    """Search on rank 0, each distinct answer extracted and fine-tuned by one rank alone,
    measured on rank 0: the same files a single process makes from the same supernet."""
    alone, spread = tmp_path / "alone", tmp_path / "spread"
    args = ["--no-latency", "--strategy", "bisection", "--strategy", "uniform", "--budget", "0.5"]
    proc = _run(str(run_tiny), "--out", str(alone), *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spread.mkdir()
    for name in ("supernet.pt", "search.json"):  # the same supernet and answers
        (spread / name).write_bytes((alone / name).read_bytes())
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "widthsearch.recipes.cli", "run", str(run_tiny), "--out", str(spread), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "spread over 2 processes" in proc.stdout
    assert "reusing" in proc.stdout and "pretraining" not in proc.stdout
    by_rank = {line.split()[-1] for line in proc.stdout.splitlines() if "fine-tuned by" in line}
    assert by_rank == {"0", "1"}, proc.stdout
    tuned = sorted(p.name for p in (alone / "subnets").glob("*-ft.pt"))
    assert tuned == sorted(p.name for p in (spread / "subnets").glob("*-ft.pt")) and tuned
    for name in tuned:
        ours = load_checkpoint(spread / "subnets" / name, kind="widthsearch.subnet")
        theirs = load_checkpoint(alone / "subnets" / name, kind="widthsearch.subnet")
        for key, value in theirs["state_dict"].items():
            assert torch.equal(ours["state_dict"][key], value), (name, key)
    rows = json.loads((spread / "results.json").read_text())
    assert rows == json.loads((alone / "results.json").read_text())
