"""`widthsearch search`: the real console script end to end, flags, and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from widthsearch.recipes.cli import main
from widthsearch.supernet.checkpoint import load_supernet

SCRIPT = Path(sys.executable).parent / "widthsearch"


def _validate(doc: dict, checkpoint: Path, strategies: list[str], n_budgets: int) -> None:
    sn, _ = load_supernet(checkpoint)
    assert doc["supernet"] == str(checkpoint)
    assert doc["model"] == "resnet20" and doc["full_macs"] == sn.macs()
    assert len(doc["budgets"]) == n_budgets
    assert [r["strategy"] for r in doc["results"]] == [
        s for s in strategies for _ in range(n_budgets)
    ]
    for r in doc["results"]:
        assert set(r) >= {
            "strategy",
            "budget_macs",
            "macs",
            "params",
            "score",
            "widths",
            "evaluations",
            "seconds",
        }
        assert r["macs"] <= r["budget_macs"]
        assert sn.space.validate(r["widths"]) == r["widths"]
        assert sn.macs(r["widths"]) == r["macs"] and sn.params(r["widths"]) == r["params"]
        assert 0.0 <= r["score"] <= 1.0


def _search_argv(
    checkpoint: Path, out: Path, strategies: list[str], budgets: list[str], *flags: str
) -> list[str]:
    """``search CHECKPOINT --strategy S ... --budget B ... FLAGS --out OUT``, scoring on 32
    held-out images and one calibration batch (fast)."""
    return [
        "search",
        str(checkpoint),
        *(word for s in strategies for word in ("--strategy", s)),
        *(word for b in budgets for word in ("--budget", b)),
        *flags,
        *("--heldout-images", "32", "--calib-batches", "1", "--out", str(out)),
    ]


def test_console_script_end_to_end(tiny_checkpoint, tmp_path):
    out = tmp_path / "search.json"
    argv = _search_argv(
        tiny_checkpoint, out, ["bisection", "uniform"], ["0.5", "2M"], "--seed", "0"
    )
    cmd = [str(SCRIPT), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    _validate(doc, tiny_checkpoint, ["bisection", "uniform"], 2)
    assert 2_000_000 in doc["budgets"]
    assert doc["evaluator"]["heldout_images"] == 32
    assert "strategy" in proc.stdout and f"wrote {out}" in proc.stdout
    assert not list(tmp_path.glob(".search.json.*"))  # no temp file left behind

    bad = subprocess.run(
        [*cmd[:3], "--strategy", "nope", "--budget", "0.5", "--out", str(tmp_path / "bad.json")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown strategy 'nope'" in lines[0] and "bisection" in lines[0]
    assert not (tmp_path / "bad.json").exists()


def _one_line_error(capsys, argv: list[str], out: Path) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert not out.exists()
    return err[0]


def test_bad_inputs_exit_2_with_one_line_and_no_file(tiny_checkpoint, tmp_path, capsys):
    sn, _ = load_supernet(tiny_checkpoint)
    out = tmp_path / "out.json"
    base = ["search", str(tiny_checkpoint), "--out", str(out)]
    msg = _one_line_error(capsys, [*base, "--strategy", "annealing", "--budget", "0.5"], out)
    assert "known: bisection, evolution, peel, random, relax, uniform" in msg
    smallest = sn.macs(sn.space.min())
    msg = _one_line_error(capsys, [*base, "--strategy", "uniform", "--budget", "1000"], out)
    assert str(smallest) in msg and "smallest reachable" in msg
    msg = _one_line_error(capsys, [*base, "--strategy", "uniform", "--budget", "1G"], out)
    assert "above the full model" in msg
    msg = _one_line_error(capsys, [*base, "--strategy", "uniform", "--budget", "1.5"], out)
    assert "fraction" in msg
    msg = _one_line_error(capsys, [*base, "--budget", "0.5", "--trials", "0"], out)
    assert "--trials" in msg
    for name, content in (("junk.pt", b"not a checkpoint"), ("other.pt", None)):
        path = tmp_path / name
        if content is None:
            torch.save({"format": "widthsearch.subnet", "version": 1}, path)
        else:
            path.write_bytes(content)
        msg = _one_line_error(
            capsys,
            ["search", str(path), "--strategy", "uniform", "--budget", "0.5", "--out", str(out)],
            out,
        )
        assert str(path) in msg
    msg = _one_line_error(
        capsys, ["search", str(tmp_path / "missing.pt"), "--budget", "0.5", "--out", str(out)], out
    )
    assert "no such file" in msg


def test_storage_flag_makes_evolution_resumable(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "evo.json"
    journal = tmp_path / "evo.journal"
    argv = _search_argv(
        tiny_checkpoint, out, ["evolution"], ["0.4", "0.6"], "--storage", str(journal)
    )
    assert main([*argv, "--trials", "6"]) == 0
    assert main([*argv, "--trials", "9"]) == 0
    capsys.readouterr()
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    (name,) = optuna.get_all_study_names(storage=storage)
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 9
    doc = json.loads(out.read_text())
    _validate(doc, tiny_checkpoint, ["evolution"], 2)
    assert doc["calls"][0]["evaluations"] <= 3  # the second run evaluated only new trials


@pytest.mark.parametrize("flag", ["--relax-steps", "--samples"])
def test_strategy_flags_reach_the_strategies(tiny_checkpoint, tmp_path, capsys, flag, monkeypatch):
    out = tmp_path / "s.json"
    strategy = "relax" if flag == "--relax-steps" else "random"
    from widthsearch.search import relax
    from widthsearch.search.base import get_strategy

    cls = type(get_strategy(strategy))
    received: list[dict] = []
    steps: list[int] = []
    original_search, original_train = cls.search, relax._LogitTrainer.train

    def spy_search(self, *args, **kwargs):
        received.append(kwargs)
        return original_search(self, *args, **kwargs)

    def spy_train(self, budget, n, start):
        steps.append(n)
        return original_train(self, budget, n, start)

    monkeypatch.setattr(cls, "search", spy_search)
    monkeypatch.setattr(relax._LogitTrainer, "train", spy_train)
    assert main(_search_argv(tiny_checkpoint, out, [strategy], ["0.5"], flag, "2")) == 0
    capsys.readouterr()
    doc = json.loads(out.read_text())
    _validate(doc, tiny_checkpoint, [strategy], 1)
    (options,) = received
    if strategy == "random":
        assert options["samples"] == 2 and "steps" not in options
        assert doc["results"][0]["evaluations"] <= 2
    else:
        assert options["steps"] == 2 and "samples" not in options
        assert steps == [2]  # the one budget's logits were trained for exactly 2 steps


def test_profile_writes_a_table_that_search_reads(tmp_path, capsys):
    """`profile` on a small supernet: the table round-trips, records where it was measured,
    and predicts the calibration subnets as the plain sum of its entries."""
    from widthsearch.search import LatencyTable
    from widthsearch.supernet import Supernet
    from widthsearch.supernet.checkpoint import save_supernet
    from widthsearch.supernet.models import create_model

    model = create_model("resnet20", num_classes=10, in_chans=1)
    meta = {"model": "resnet20", "num_classes": 10, "in_chans": 1, "input_size": 8}
    sn = Supernet.from_model(model, torch.zeros(1, 1, 8, 8), bins=2, meta=meta)
    path = tmp_path / "small.pt"
    save_supernet(path, sn)
    out = tmp_path / "lat.json"
    argv = ["profile", str(path), "--device", "cpu", "--batch", "2", "--seconds", "0.0001"]
    assert main([*argv, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    table = LatencyTable.from_dict(doc)
    assert table.to_dict() == doc
    assert (table.device, table.threads, table.batch, table.model) == ("cpu", 1, 2, "resnet20")
    assert table.torch == torch.__version__ and table.input_size == 8
    assert {t.name for t in table.layers} == {e.layer.name for e in sn.layers}
    bound = table.bind(sn)
    by_label = {row["config"]: row["predicted_ms"] for row in doc["calibration"]}
    full = doc["overhead_ms"] + sum(
        np.asarray(layer["ms"]).reshape(-1)[-1] for layer in doc["layers"]
    )
    assert bound.predict(sn.widths_vector(sn.space.max())) == pytest.approx(full, abs=1e-6)
    assert by_label["full"] == pytest.approx(full, abs=1e-5)
    assert not list(tmp_path.glob(".lat.json.*"))
    msg = _one_line_error(
        capsys, [*argv, "--threads", "0", "--out", str(tmp_path / "x.json")], tmp_path / "x.json"
    )
    assert "--threads" in msg
    msg = _one_line_error(
        capsys,
        [*argv, "--sample-widths", "1", "--out", str(tmp_path / "x.json")],
        tmp_path / "x.json",
    )
    assert "--sample-widths" in msg and "both ends" in msg
    # 4 bins, 2 of them timed per group; the 2-bin supernet above has nothing to leave out
    wider = tmp_path / "wider.pt"
    save_supernet(wider, Supernet.from_model(model, torch.zeros(1, 1, 8, 8), bins=4, meta=meta))
    sampled = tmp_path / "lat-sampled.json"
    assert (
        main([*argv[:1], str(wider), *argv[2:], "--sample-widths", "2", "--out", str(sampled)]) == 0
    )
    assert "2 choices per group timed" in capsys.readouterr().out
    again = LatencyTable.from_dict(json.loads(sampled.read_text()))
    assert again.sample_widths == 2 and max(len(c) for c in again.choices.values()) > 2
    assert main([*argv, "--sample-widths", "2", "--out", str(sampled)]) == 0
    assert "interpolated" not in capsys.readouterr().out
    assert LatencyTable.from_dict(json.loads(sampled.read_text())).sample_widths == 0


def test_latency_budget_and_limits_from_the_command_line(
    tiny_checkpoint, latency_table, latency_table_path, tmp_path, capsys
):
    sn, _ = load_supernet(tiny_checkpoint)
    full_ms = latency_table.predict_config(sn)
    out = tmp_path / "lat-search.json"
    budget = f"{0.7 * full_ms:.4f}ms"
    limits = ("--max-params", "0.5", "--latency-table", str(latency_table_path))
    argv = _search_argv(
        tiny_checkpoint, out, ["bisection", "uniform"], [budget], *limits, "--latency-threads", "1"
    )
    assert main(argv) == 0
    assert "latency" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["constraints"]["measure"] == "latency"
    assert doc["constraints"]["latency_table"]["threads"] == 1
    assert doc["full_latency_ms"] == pytest.approx(full_ms)
    for r in doc["results"]:
        assert r["budget_macs"] is None and r["latency_ms"] <= r["budget_ms"]
        assert r["latency_ms"] == pytest.approx(latency_table.predict_config(sn, r["widths"]))
        assert r["params"] <= doc["constraints"]["max_params"] == int(0.5 * sn.params())
        assert sn.macs(r["widths"]) == r["macs"]


def test_bad_latency_inputs_exit_2_with_one_line(
    tiny_checkpoint, latency_table_path, tmp_path, capsys
):
    out = tmp_path / "out.json"
    base = ["search", str(tiny_checkpoint), "--strategy", "uniform", "--out", str(out)]
    table = ["--latency-table", str(latency_table_path)]
    msg = _one_line_error(capsys, [*base, "--budget", "12xs", *table], out)
    assert "12xs" in msg
    msg = _one_line_error(capsys, [*base, "--budget", "3ms"], out)
    assert "latency table" in msg
    for flag, value in (("--latency-threads", "2"), ("--latency-batch", "8")):
        msg = _one_line_error(capsys, [*base, "--budget", "1ms", *table, flag, value], out)
        assert "profile again" in msg and flag.split("-")[-1] in msg
    msg = _one_line_error(
        capsys, [*base, "--budget", "1ms", *table, "--latency-device", "cuda"], out
    )
    assert "device" in msg
    msg = _one_line_error(capsys, [*base, "--budget", "0.5", *table, "--max-latency", "8"], out)
    assert "--max-latency" in msg
    msg = _one_line_error(capsys, [*base, "--budget", "0.5", "--budget", "1ms", *table], out)
    assert "mix" in msg
    msg = _one_line_error(
        capsys, [*base, "--budget", "1ms", "--latency-table", str(tmp_path / "no.json")], out
    )
    assert "not found" in msg
