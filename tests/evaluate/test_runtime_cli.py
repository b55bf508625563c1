"""`--device` on every computing command: `--device cpu` does the command's job; a device this
machine lacks is one line on stderr, exit status 2 and nothing written, before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from widthsearch.evaluate import read_subnet
from widthsearch.recipes._runtime_flags import RUNTIME_COMMANDS
from widthsearch.recipes.cli import main
from widthsearch.supernet.checkpoint import atomic_save, load_checkpoint, load_supernet

SCRIPT = Path(sys.executable).parent / "widthsearch"

COMMANDS = ("pretrain", "train", "profile", "search", "extract", "finetune", "eval", "run")


@pytest.fixture()
def argv_of(run_tiny, train_tiny, supernet_path, search_path, subnet_path):
    """``argv_of(command, out_dir)``: the command on the tiny setup, writing into ``out_dir``
    (eval writes nothing), with its output file."""

    def make(command: str, out: Path) -> tuple[list[str], Path | None]:
        quick = ["--epochs", "1"]
        if command == "pretrain":
            return ["pretrain", str(train_tiny), *quick, "--out", str(out)], out / "full.pt"
        if command == "train":
            return ["train", str(train_tiny), *quick, "--out", str(out)], out / "supernet.pt"
        if command == "profile":
            args = ["profile", str(supernet_path), "--seconds", "0.0001"]
            return [*args, "--out", str(out / "lat.json")], out / "lat.json"
        if command == "search":
            args = ["search", str(supernet_path), "--strategy", "uniform", "--budget", "0.5"]
            return [*args, "--out", str(out / "search.json")], out / "search.json"
        if command == "extract":
            args = ["extract", str(supernet_path), "--from", str(search_path)]
            args += ["--strategy", "random", "--budget", "0.5", "--inheritance", "left"]
            return [*args, "--out", str(out / "sub.pt")], out / "sub.pt"
        if command == "finetune":
            args = ["finetune", str(subnet_path), *quick, "--train-limit", "128"]
            return [*args, "--out", str(out / "ft.pt")], out / "ft.pt"
        if command == "eval":
            return ["eval", str(subnet_path), "--latency-seconds", "0.01", "--no-full"], None
        assert command == "run"
        args = ["run", str(run_tiny), *quick, "--finetune-epochs", "0", "--no-latency"]
        args += ["--strategy", "uniform", "--budget", "0.5"]
        return [*args, "--out", str(out)], out / "results.json"

    return make


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_every_computing_command_has_the_runtime_flags(capsys):
    assert set(RUNTIME_COMMANDS) == set(COMMANDS)
    for command in COMMANDS:
        text = _help(command, capsys)
        for flag in ("--device DEVICE", "--amp {off,bf16,fp16,auto}", "--channels-last"):
            assert flag in text, (command, flag)
    assert "--device" not in _help("inspect", capsys)


@pytest.mark.parametrize("command", COMMANDS)
def test_device_cpu_does_the_job(command, argv_of, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv, produced = argv_of(command, out)
    assert main([*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    if command == "pretrain":
        payload = load_checkpoint(produced, kind="widthsearch.full")
        assert payload["train_state"]["epoch"] == 1
        assert "device cpu" in stdout
    elif command == "train":
        _, payload = load_supernet(produced)
        assert payload["train_state"]["epoch"] == 1
        assert "device cpu" in stdout
    elif command == "profile":
        table = json.loads(produced.read_text())
        assert table["device"] == "cpu" and table["layers"]
    elif command == "search":
        doc = json.loads(produced.read_text())
        assert [r["strategy"] for r in doc["results"]] == ["uniform"]
    elif command == "extract":
        assert read_subnet(produced)["strategy"] == "random"
    elif command == "finetune":
        assert len(read_subnet(produced)["finetune"]["history"]) == 1
    elif command == "eval":
        result = json.loads(stdout.strip().splitlines()[-1])
        assert 0.0 <= result["top1"] <= 1.0 and result["latency_device"] == "cpu"
    else:
        (row,) = json.loads(produced.read_text())
        assert row["strategy"] == "uniform" and (out / "report.md").is_file()
    if produced is not None:
        assert produced.is_file()
    # nothing else written where the command ran (no runs/ folder, no stray files)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if produced else [])


def _absent(device: str) -> bool:
    """Whether this machine lacks ``device`` (the error cases need one it lacks)."""
    if device == "tpu":
        return True
    if not torch.cuda.is_available():
        return True
    index = int(device.partition(":")[2] or 0)
    return index >= torch.cuda.device_count()


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "tpu"])
@pytest.mark.parametrize("command", COMMANDS)
def test_absent_device_is_one_line_exit_2_and_nothing_written(
    command, device, argv_of, tmp_path, monkeypatch, capsys
):
    if not _absent(device):
        pytest.skip(f"this machine has {device}")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    argv, _ = argv_of(command, out / "job" if command in ("pretrain", "train", "run") else out)
    capsys.readouterr()
    assert main([*argv, "--device", device]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"widthsearch {command}: error:"), lines
    if device == "tpu":
        assert "'tpu'" in lines[0] and "auto, cpu, cuda or cuda:N" in lines[0]
    else:
        assert "CUDA" in lines[0] and device in lines[0]
    assert captured.out == ""
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available on this machine")
def test_console_script_device_cuda_without_cuda(train_tiny, tmp_path):
    out = tmp_path / "job"
    proc = subprocess.run(
        [str(SCRIPT), "train", str(train_tiny), "--out", str(out), "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("widthsearch train: error:"), lines
    assert "CUDA is not available" in lines[0]
    assert list(tmp_path.iterdir()) == []


def _recipe_with_run(tiny: Path, tmp_path: Path, run: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(tiny.read_text() + f"\n[run]\n{run}\n")
    return path


def test_recipe_run_device_is_checked_and_the_flag_overrides_it(
    train_tiny, tmp_path, capsys, one_thread
):
    recipe = _recipe_with_run(train_tiny, tmp_path, 'device = "tpu"')
    out = tmp_path / "job"
    assert main(["pretrain", str(recipe), "--epochs", "0", "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'tpu'" in lines[0] and not out.exists()
    # --device wins over the recipe's [run].device
    assert (
        main(["pretrain", str(recipe), "--epochs", "0", "--out", str(out), "--device", "cpu"]) == 0
    )
    assert (out / "full.pt").is_file()


def test_recipe_rejects_an_unknown_amp(train_tiny, tmp_path, capsys):
    recipe = _recipe_with_run(train_tiny, tmp_path, 'amp = "fp32"')
    assert main(["train", str(recipe), "--out", str(tmp_path / "job")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "fp32" in lines[0] and not (tmp_path / "job").exists()


def test_a_stored_recipe_device_is_not_where_the_file_is_used(supernet_path, tmp_path, capsys):
    """A supernet trained with ``[run] device = "cuda:1"`` is searched here on the CPU."""
    payload = load_checkpoint(supernet_path, kind="widthsearch.supernet")
    payload["recipe"]["run"] = {"device": "cuda:1", "amp": "off", "channels_last": False}
    gpu_made = tmp_path / "supernet.pt"
    atomic_save(payload, gpu_made)
    out = tmp_path / "search.json"
    argv = ["search", str(gpu_made), "--strategy", "uniform", "--budget", "0.5"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    assert json.loads(out.read_text())["results"][0]["strategy"] == "uniform"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_extract_on_cuda_gives_the_cpu_subnet(supernet_path, search_path, tmp_path):
    args = ["extract", str(supernet_path), "--from", str(search_path), "--strategy", "random"]
    args += ["--budget", "0.5", "--inheritance", "left"]
    assert main([*args, "--out", str(tmp_path / "cpu.pt"), "--device", "cpu"]) == 0
    assert main([*args, "--out", str(tmp_path / "gpu.pt"), "--device", "cuda"]) == 0
    cpu, gpu = read_subnet(tmp_path / "cpu.pt"), read_subnet(tmp_path / "gpu.pt")
    assert cpu["widths"] == gpu["widths"]
    for key, value in gpu["state_dict"].items():
        assert value.device.type == "cpu", key
        torch.testing.assert_close(value, cpu["state_dict"][key], rtol=1e-4, atol=1e-5)
