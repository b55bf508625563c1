"""Interrupted writes leave the previous file whole: a failing rename, a failing writer, and a
process killed in the middle of writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from widthsearch.evaluate import report as report_module
from widthsearch.supernet import checkpoint


def _save(path: Path, value: int) -> None:
    checkpoint.atomic_save({"value": value, "weights": torch.arange(1000) * value}, path)


def _load(path: Path):
    return torch.load(path, weights_only=True)["value"]


def _writers():
    """(name, write(path, version), read(path) -> version) for every atomic writer."""

    def text(path, v):
        checkpoint.write_text_atomic(f"version {v}\n", path)

    def jsonl(path, v):
        checkpoint.write_jsonl_atomic([{"version": v}, {"version": v}], path)

    def any_writer(path, v):  # the helper all of them use, as exporters use it (a path)
        with checkpoint.atomic_path(path) as tmp:
            tmp.write_text(f"version {v}\n")

    def plot(path, v):
        report_module.plot_pareto([{"strategy": "s", "macs": 10 * v, "score": 0.5}], path)

    return [
        ("torch", _save, _load),
        ("text", text, lambda p: int(p.read_text().split()[1])),
        (
            "json",
            lambda p, v: checkpoint.write_json_atomic({"v": v}, p),
            lambda p: json.load(open(p))["v"],
        ),
        ("jsonl", jsonl, lambda p: json.loads(p.read_text().splitlines()[1])["version"]),
        ("path", any_writer, lambda p: int(p.read_text().split()[1])),
        ("plot", plot, lambda p: p.read_bytes()),
    ]


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


@pytest.mark.parametrize(("name", "write", "read"), _writers(), ids=[w[0] for w in _writers()])
def test_a_failing_rename_keeps_the_old_file_and_no_temp(name, write, read, tmp_path, monkeypatch):
    path = tmp_path / f"out.{name}"
    write(path, 1)
    before, old_bytes = read(path), path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write(path, 2)
    assert path.read_bytes() == old_bytes and read(path) == before
    assert _leftovers(tmp_path, path.name) == []


def test_a_writer_failing_half_way_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    _save(path, 1)
    old = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the new bytes are in the temp file ...
        raise RuntimeError("writer failed half-way")  # ... then the writer fails

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="half-way"):
        checkpoint.atomic_save({"weights": torch.zeros(100_000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == old and _load(path) == 1
    assert _leftovers(tmp_path, path.name) == []


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path, killed_after):
    """The child writes half of the new file, says so, and is killed there: the destination
    still holds the previous version; only a hidden temp file remains (the trainer removes
    those of its own files when it next runs)."""
    path = tmp_path / "ckpt.pt"
    _save(path, 1)
    old = path.read_bytes()
    child = textwrap.dedent(
        f"""
        import sys, time
        from widthsearch.supernet import checkpoint

        def write(f):
            f.write(b"x" * 100_000)
            f.flush()
            print("half", flush=True)
            time.sleep(60)

        with checkpoint.atomic_path({str(path)!r}) as tmp, open(tmp, "wb") as f:
            write(f)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    with killed_after(proc):
        assert proc.stdout.readline().strip() == "half"
        (temp,) = [p for p in tmp_path.iterdir() if p.name != path.name]
        assert temp.stat().st_size == 100_000  # the new bytes really were being written
    assert path.read_bytes() == old and _load(path) == 1
    (left,) = _leftovers(tmp_path, path.name)
    assert left.startswith(".ckpt.pt.") and left.endswith(".tmp")


@pytest.mark.parametrize(("name", "write", "read"), _writers(), ids=[w[0] for w in _writers()])
def test_a_written_file_has_the_permissions_of_a_plain_write(name, write, read, tmp_path):
    """The temp file is private while written; the result is readable as any other file."""
    plain = tmp_path / "plain"
    plain.write_text("x")
    path = tmp_path / f"out.{name}"
    write(path, 1)
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
