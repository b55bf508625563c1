"""The warm-start benchmark's smoke mode (benchmarks/warmstart.py --smoke): every cell kind
on synthetic data, each at its budget, and a rerun that redoes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import warmstart

KINDS = [
    "full-s0",
    "supernet-s0",
    "search-s0",
    "ft-best-25-s0",
    "ft-second-25-s0",
    "ft-uniform-25-s0",
    "ft-trained-25-s0",
    "tp-25-s0",
    "tp-taylor-25-s0",
    "scratch-25-s0",
    "scratch-searched-25-s0",
    "supernet-random-s0",
    "search-random-s0",
    "ft-random-25-s0",
]


def test_smoke_runs_every_cell_kind_at_its_budget_and_a_rerun_redoes_nothing(
    tmp_path, one_thread, capsys
):
    out = tmp_path / "warm"
    args = ["--smoke", "--out", str(out), "--seeds", "0", "--budgets", "0.25"]
    args += ["--strategies", "bisection", "peel", "uniform"]
    assert warmstart.main(args) == 0
    cells = {name: json.loads((out / "cells" / f"{name}.json").read_text()) for name in KINDS}
    assert json.loads((out / "settings.json").read_text())["data"] == "synthetic"

    answers = {r["strategy"]: r for r in cells["search-s0"]["results"]}
    budget = cells["ft-best-25-s0"]["budget_macs"]
    assert set(answers) == {"bisection", "peel", "uniform"}
    best = max((answers["bisection"], answers["peel"]), key=lambda r: r["score"])
    assert cells["ft-best-25-s0"]["widths"] == best["widths"]
    assert cells["ft-uniform-25-s0"]["widths"] == answers["uniform"]["widths"]
    second = cells["ft-second-25-s0"]
    if "skipped" not in second:  # the other strategy, unless both found the same widths
        assert second["widths"] != best["widths"] and second["strategy"] != best["strategy"]
    assert cells["scratch-searched-25-s0"]["widths"] == best["widths"]
    assert cells["ft-trained-25-s0"]["widths"] == best["widths"]
    random = {r["strategy"]: r for r in cells["search-random-s0"]["results"]}
    best_random = max((random["bisection"], random["peel"]), key=lambda r: r["score"])
    assert cells["ft-random-25-s0"]["widths"] == best_random["widths"]
    assert cells["supernet-random-s0"]["epochs"] == 2  # pretraining's and the supernet's
    assert cells["ft-random-25-s0"]["variant"] == "random"
    for name, cell in cells.items():
        if "budget_macs" in cell and "top1" in cell:
            assert cell["macs"] <= cell["budget_macs"] == budget, name
            assert cell["macs"] == cell["macs_counted"], name  # cost model = counted
            assert 0.0 <= cell["top1"] <= 1.0, name
    assert cells["tp-taylor-25-s0"]["importance"] == "taylor"
    # size and speed: each row's network rebuilt from its widths is the one it delivered
    for name, cell in cells.items():
        if "budget_macs" in cell and "top1" in cell:
            timed = json.loads((out / "cells" / f"latency-{name}.json").read_text())
            assert (timed["macs"], timed["params"]) == (cell["macs"], cell["params"]), name
            ratio = timed["latency_ms"] / timed["full_latency_ms"]  # both rounded
            assert timed["latency_ratio"] == pytest.approx(ratio, abs=2e-4)

    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "tables.md").read_text()
    for row in ("uniform subnet", "Torch-Pruning Taylor", "control", "from random weights"):
        line = next(line for line in table.splitlines() if row in line)
        assert "n=1" in line, line
    sizes = table.split("Params and latency")[1]
    line = next(line for line in sizes.splitlines() if "uniform widths from scratch" in line)
    assert f"| {cells['scratch-25-s0']['params'] / 1e3:.1f}k, " in line

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    capsys.readouterr()
    assert warmstart.main(args) == 0
    assert "running" not in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == stamps
