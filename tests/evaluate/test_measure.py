"""`widthsearch eval`: one JSON object whose figures are consistent with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from widthsearch.evaluate import counted_macs, dataset_top1, evaluate_model, read_subnet
from widthsearch.recipes.cli import main
from widthsearch.search import recipe_splits
from widthsearch.supernet.checkpoint import load_supernet, save_supernet, write_json_atomic


def test_eval_cli_prints_one_json_object_with_consistent_figures(
    subnet_path, supernet_path, capsys
):
    assert main(["eval", str(subnet_path), "--latency-seconds", "0.01"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    payload = read_subnet(subnet_path)
    sn, _ = load_supernet(supernet_path)
    # MACs: the analytic cost model equals FlopCounterMode on the module, for both models
    assert result["macs"] == result["macs_counted"] == sn.macs(payload["widths"])
    assert result["params"] == sum(p.numel() for p in payload["module"].parameters())
    full = result["full"]
    assert full["macs"] == full["macs_counted"] == sn.macs()
    assert full["params"] == sn.params() and full["weights"] == str(supernet_path)
    assert result["ratios"]["macs"] == pytest.approx(result["macs"] / full["macs"], abs=1e-4)
    assert result["ratios"]["params"] == pytest.approx(result["params"] / full["params"], abs=1e-4)
    for fig in (result, full):
        assert set(fig["latency_ms"]) == {"batch1", "batch64"}
        assert all(v > 0 for v in fig["latency_ms"].values())
        assert 0.0 <= fig["top1"] <= 1.0
    assert result["ratios"]["latency_batch1"] == pytest.approx(
        result["latency_ms"]["batch1"] / full["latency_ms"]["batch1"], rel=1e-2
    )
    # top-1 is on the TEST split of the recipe's data
    splits, _ = recipe_splits(payload["recipe"], payload["meta"])
    assert result["test_images"] == len(splits.test) == payload["recipe"]["data"]["test_limit"]
    assert result["top1"] == pytest.approx(dataset_top1(payload["module"], splits.test))


def test_evaluate_model_without_latency_or_full(subnet_path):
    result = evaluate_model(subnet_path, latency=False, full=False, test_limit=50)
    assert result["latency_ms"] is None and "full" not in result
    assert result["test_images"] == 50 and result["macs"] == result["macs_counted"]


def test_counted_macs_of_a_conv_and_a_linear():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3)
    )
    assert counted_macs(model, torch.zeros(1, 2, 5, 5)) == 4 * 2 * 9 * 25 + 100 * 3


def test_eval_bad_inputs(subnet_path, supernet_path, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nope.pt")], "no such file"),
        ([str(supernet_path)], "expected 'widthsearch.subnet'"),
        ([str(subnet_path), "--data", "cifar100"], "in_chans=1"),
        ([str(subnet_path), "--data", "no-such-data"], "unknown dataset"),
    ]
    for argv, message in cases:
        assert main(["eval", *argv, "--no-latency"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def test_console_script_eval(subnet_path, tmp_path):
    script = Path(sys.executable).parent / "widthsearch"
    proc = subprocess.run(
        [str(script), "eval", str(subnet_path), "--latency-seconds", "0.01", "--test-limit", "64"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["macs"] == result["macs_counted"] > 0
    assert result["full"]["macs"] == result["full"]["macs_counted"] > result["macs"]
    assert result["test_images"] == 64


def test_eval_prints_predicted_and_measured_latency(
    subnet_path, supernet_path, synthetic_latency_table, tmp_path, capsys
):
    sn, _ = load_supernet(supernet_path)
    table = synthetic_latency_table(sn, batch=2)
    lat = tmp_path / "lat.json"
    write_json_atomic(table.to_dict(), lat)
    argv = ["eval", str(subnet_path), "--no-latency", "--no-full", "--test-limit", "16"]
    assert main([*argv, "--latency-table", str(lat)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    check = result["latency_check"]
    widths = read_subnet(subnet_path)["widths"]
    assert check["predicted_ms"] == pytest.approx(table.predict_config(sn, widths), abs=1e-6)
    assert check["measured_ms"] > 0 and (check["batch"], check["threads"]) == (2, 1)
    assert "predicted" in captured.err and "measured" in captured.err
    table.model = "resnet56"
    write_json_atomic(table.to_dict(), lat)
    assert main([*argv, "--latency-table", str(lat)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet56" in err[0] and "profile again" in err[0]


def test_the_full_row_of_a_warm_started_supernet_is_the_trained_network(
    subnet_path, supernet_path, tmp_path
):
    """A warm start's report compares the subnets with the network the user trained (the one
    the supernet carries), not with the supernet's full width, which the budgets trainer
    never trains."""
    from widthsearch.evaluate.teacher import load_teacher

    sn, payload = load_supernet(supernet_path)
    trained = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in sn.model.state_dict().items()
    }
    warm = tmp_path / "warm.pt"
    save_supernet(warm, sn, recipe=payload["recipe"], epoch=1, teacher_state_dict=trained)
    result = evaluate_model(subnet_path, supernet=warm, latency=False, test_limit=64)
    full = result["full"]
    assert full["network"] == "trained" and full["bn_recalibrated"] is False
    splits, _ = recipe_splits(payload["recipe"], payload["meta"], test_limit=64)
    teacher, recalibrate = load_teacher(warm, payload["meta"])
    assert recalibrate is False
    assert full["top1"] == pytest.approx(dataset_top1(teacher, splits.test))
    assert full["macs"] == full["macs_counted"] == sn.macs()
    plain = evaluate_model(subnet_path, supernet=supernet_path, latency=False, test_limit=64)
    assert plain["full"]["network"] == "supernet" and plain["full"]["bn_recalibrated"] is True


def test_a_slow_forward_is_timed_in_single_calls_without_extra_warm_ups():
    """A forward slower than 50 ms (224x224 at batch 32) is timed in about three single
    calls after one warm-up and one block-size probe, not three per block."""
    from widthsearch.evaluate.measure import _MIN_BLOCKS, measure_latency

    calls = []

    class Slow(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            time.sleep(0.06)
            return x

    ms = measure_latency(Slow(), torch.zeros(1), min_run_time=0.01)
    assert 60 <= ms < 120
    assert _MIN_BLOCKS + 2 <= len(calls) <= _MIN_BLOCKS + 3  # warm-up, probe, blocks
