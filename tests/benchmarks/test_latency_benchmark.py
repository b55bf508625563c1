"""`benchmarks/latency.py`: an error cell and its sampling cell on resnet20 with a fake
timer (the figures' arithmetic, not this machine's speed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
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


def test_sampling_at_every_choice_is_the_table_and_at_the_ends_an_interpolation(
    finished, monkeypatch
):
    """Cut to all its 8 choices the table predicts as before; cut to the ends of every group
    the fake timer's costs (weights in * out: bilinear per layer) come back exactly too.
    A table of curved costs then shows that the cut is real: its predictions move."""
    for sample in ("8", "2"):
        latency.main(["--part", "sampling", "--sample-widths", sample, "--out", str(finished)])
        cell = Cells(finished).get(f"sampling-resnet20-b1-t1-s{sample}")
        assert cell["max_change"] < 1e-4, sample
        assert cell["sampled_table"] == cell["full_table"]
    table_path = finished / "tables" / "resnet20-b1-t1.json"
    doc = json.loads(table_path.read_text())
    for layer in doc["layers"]:
        layer["ms"] = (np.asarray(layer["ms"]) ** 2).tolist()  # convex: above its chords
    table_path.write_text(json.dumps(doc))
    latency.main(["--part", "sampling", "--sample-widths", "3", "--out", str(finished)])
    curved = Cells(finished).get("sampling-resnet20-b1-t1-s3")
    assert curved["median_change"] > 0 and curved["rho_full_vs_sampled"] > 0.8
