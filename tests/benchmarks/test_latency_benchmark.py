"""`benchmarks/latency.py`: an error cell and its sampling cell on resnet20 with a fake
timer (the figures' arithmetic, not this machine's speed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import latency
from cells import Cells
from widthsearch.evaluate import profile


def _fake_timer(module, example, **_):
    """Milliseconds that grow with the parameters and the input: exact, so rounds agree."""
    return 0.01 + sum(p.numel() for p in module.parameters()) / 1e5 + example.numel() / 1e6


@pytest.fixture
def finished(tmp_path, monkeypatch):
    monkeypatch.setattr(profile, "measure_latency", _fake_timer)
    monkeypatch.setattr(latency, "measure_latency", _fake_timer)
    argv = ["--part", "error", "--models", "resnet20", "--batches", "1", "--threads", "1"]
    argv += ["--subnets", "6", "--rounds", "2", "--out", str(tmp_path)]
    assert latency.main(argv) == 0
    return tmp_path


def test_error_cell_figures_follow_its_rows(finished):
    cell = Cells(finished).get("error-resnet20-b1-t1")
    rows = cell["subnets"]
    assert len(rows) == 6 and all(len(r["rounds_ms"]) == 2 for r in rows)
    assert all(r["measured_ms"] == min(r["rounds_ms"]) for r in rows)
    assert cell["round_spread"] == 0.0 and cell["rounds_rho"] == pytest.approx(1.0)
    assert (cell["rounds"], cell["sample_widths"]) == (2, 0)
    assert cell["timed_entries"] == cell["table_entries"]
    assert {k: cell[k] for k in latency.error_figures(rows)} == latency.error_figures(rows)


def test_sampling_keeps_a_bilinear_table_whatever_it_cuts(finished):
    """The fake timer's cost is bilinear in a layer's widths (weights in * out, inputs in), so
    the table cut to the ends of every group and filled back predicts every subnet as the
    full table does; cut to all its choices the table is the same by construction."""
    for sample in ("8", "2"):
        latency.main(["--part", "sampling", "--sample-widths", sample, "--out", str(finished)])
        cell = Cells(finished).get(f"sampling-resnet20-b1-t1-s{sample}")
        assert cell["max_change"] < 1e-4, sample
        assert cell["sampled_table"] == cell["full_table"]
    assert Cells(finished).get("sampling-resnet20-b1-t1-s2")["sample_widths"] == 2
