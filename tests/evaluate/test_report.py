"""The report: one table line per (strategy, budget), baseline first, and a real PNG."""

from __future__ import annotations

import pytest
from widthsearch.evaluate import write_report

FULL = {
    "top1": 0.92,
    "macs": 40_000_000,
    "params": 270_000,
    "latency_ms": {"batch1": 2.0, "batch64": 40.0},
}


def _rows():
    rows = []
    for budget, base in ((10_000_000, 0.80), (20_000_000, 0.86)):
        for k, strategy in enumerate(["evolution", "bisection", "uniform"]):
            rows.append(
                {
                    "strategy": strategy,
                    "budget_macs": budget,
                    "score": base - 0.05 + 0.01 * k,
                    "top1": base + 0.01 * (2 - k),  # uniform (k = 2) is the base
                    "macs": budget - 1000 * (k + 1),
                    "params": 100_000 + budget // 1000,
                    "latency_ms": {"batch1": 1.0 + k, "batch64": 20.0 + k},
                }
            )
    return rows


def _table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_report_has_one_line_per_strategy_and_budget_and_a_png(tmp_path):
    paths = write_report(_rows(), out_dir=tmp_path / "r", title="tiny", full=FULL)
    text = paths["report"].read_text()
    assert text.startswith("# tiny") and "pareto.png" in text
    table = _table(text)
    assert table[0][:2] == ["full", "*full model*"] and table[0][3] == "0.9200"
    body = table[1:]
    assert len(body) == 6
    pairs = {(row[0], row[1].strip("*")) for row in body}
    assert pairs == {
        (b, s)
        for b in ("10.00M (25%)", "20.00M (50%)")
        for s in ("evolution", "bisection", "uniform")
    }
    # the uniform baseline leads each budget, the others show their gain over it
    assert [row[1] for row in body] == ["**uniform**", "evolution", "bisection"] * 2
    assert body[1][4] == "+2.00 pt" and body[2][4] == "+1.00 pt" and body[0][4] == "baseline"
    assert body[1][7] == "1.000" and body[1][8] == "20.000"
    assert body[1][5] == "10.00M (100% of budget)"  # MACs: how much of the budget is used
    png = paths["pareto"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["pareto.png", "report.md"]
    # a warm start's reference row is the trained network it began from
    warm = write_report(_rows(), out_dir=tmp_path / "w", full={**FULL, "network": "trained"})
    assert _table(warm["report"].read_text())[0][:2] == ["full", "*trained network*"]


def test_the_macs_column_shows_a_uniform_answer_short_of_its_budget(tmp_path):
    """Uniform widths often stop well below the budget: the row says so, so that its Δ is not
    read as a comparison at equal MACs."""
    rows = _rows()
    assert rows[2]["strategy"] == "uniform" and rows[2]["budget_macs"] == 10_000_000
    rows[2]["macs"] = 5_700_000
    body = _table(write_report(rows, out_dir=tmp_path, full=FULL)["report"].read_text())[1:]
    assert body[0][1] == "**uniform**" and body[0][5] == "5.70M (57% of budget)"


def test_report_with_missing_values_and_no_baseline(tmp_path):
    rows = [{"strategy": "peel", "budget_macs": 5, "score": 0.5, "macs": 4, "params": 3}]
    paths = write_report(rows, out_dir=tmp_path)
    (row,) = _table(paths["report"].read_text())
    assert row[1] == "peel" and row[3] == "—" and row[4] == "—" and row[7] == "—"
    assert paths["pareto"].stat().st_size > 0  # plotted from the supernet score
    with pytest.raises(ValueError, match="no rows"):
        write_report([], out_dir=tmp_path)


def test_latency_budget_rows_are_labelled_and_grouped_in_milliseconds(tmp_path):
    rows = []
    for budget_ms in (1.5, 3.0):
        for strategy, top1 in (("uniform", 0.8), ("peel", 0.82)):
            rows.append(
                {
                    "strategy": strategy,
                    "budget_macs": None,
                    "budget_ms": budget_ms,
                    "score": top1,
                    "top1": top1 + budget_ms / 100,
                    "macs": 1_000_000,
                    "params": 50_000,
                }
            )
    body = _table(write_report(rows, out_dir=tmp_path)["report"].read_text())
    assert [(row[0], row[1].strip("*")) for row in body] == [
        ("1.500 ms", "uniform"),
        ("1.500 ms", "peel"),
        ("3.000 ms", "uniform"),
        ("3.000 ms", "peel"),
    ]
    assert body[1][4] == "+2.00 pt" and body[3][4] == "+2.00 pt"
