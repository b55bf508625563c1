"""Opening a file never runs its code: every loader reads weights-only, a file carrying a
pickle payload is refused (one line, exit 2, the payload never runs), ``--trust-pickle`` /
``trust_pickle=True`` opens older pickled files with one warning line, and ``widthsearch
convert`` rewrites them in the weights-only format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from widthsearch.evaluate import (
    convert_file,
    evaluate_model,
    export_subnet,
    extract_subnet,
    finetune_paths,
    finetune_subnet,
    load_subnet,
    read_subnet,
)
from widthsearch.recipes.cli import main
from widthsearch.supernet.checkpoint import load_checkpoint, load_supernet
from widthsearch.supernet.errors import CheckpointError
from widthsearch.supernet.train import train_supernet


class Payload:
    """Unpickling this creates the sentinel file: the stand-in for a shell command."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def craft(path: Path, sentinel: Path, fmt: str = "widthsearch.supernet") -> Path:
    """A file that looks like a widthsearch checkpoint and carries a pickle payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": fmt, "version": 1, "meta": {}, "x": Payload(sentinel)}, path)
    return path


class UsersOwnNet(nn.Module):
    """A module class no registry knows (a user's own): only a pickle can hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def _err_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _refused(lines: list[str], path: Path) -> None:
    assert len(lines) == 1, lines
    assert "refused" in lines[0] and str(path) in lines[0] and "--trust-pickle" in lines[0]
    assert "widthsearch convert" in lines[0]


def test_the_crafted_file_is_live(tmp_path):
    """The payload does run when unpickled: the refusals below are real."""
    sentinel = tmp_path / "sentinel"
    torch.load(craft(tmp_path / "evil.pt", sentinel), weights_only=False)
    assert sentinel.exists()


def _cli_cases(
    tmp: Path, evil: Path, supernet: Path, subnet: Path, *, train: Path, run: Path
) -> dict[str, list[str]]:
    widths = tmp / "w.json"
    widths.write_text(json.dumps({"widths": read_subnet(subnet)["widths"]}))
    out = tmp / "out"
    return {
        "search": ["search", str(evil), "--out", str(out / "s.json")],
        "extract": ["extract", str(evil), "--widths", str(widths), "--out", str(out / "x.pt")],
        "finetune subnet": ["finetune", str(evil), "--out", str(out / "f.pt")],
        "finetune teacher": [
            "finetune",
            str(subnet),
            "--teacher",
            str(evil),
            "--out",
            str(out / "f.pt"),
        ],
        "finetune resume": ["finetune", str(subnet), "--out", str(out / "f.pt"), "--resume"],
        "eval": ["eval", str(evil)],
        "eval supernet": ["eval", str(subnet), "--supernet", str(evil)],
        "train resume": ["train", str(train), "--out", str(out), "--resume"],
        "run": ["run", str(run), "--out", str(out)],
        "convert": ["convert", str(evil), "--out", str(out / "c.pt")],
    }


# where the crafted file goes when the command finds it in its output folder
_PLANTED = {
    "finetune resume": "out/f.ckpt.pt",
    "train resume": "out/supernet.pt",
    "run": "out/supernet.pt",
}
CLI_CASES = [
    "search",
    "extract",
    "finetune subnet",
    "finetune teacher",
    "finetune resume",
    "eval",
    "eval supernet",
    "train resume",
    "run",
    "convert",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_every_command_refuses_a_pickle_payload(
    case, supernet_path, subnet_path, train_tiny, run_tiny, tmp_path, capsys
):
    sentinel = tmp_path / "sentinel"
    evil = craft(tmp_path / _PLANTED.get(case, "evil.pt"), sentinel)
    cases = _cli_cases(tmp_path, evil, supernet_path, subnet_path, train=train_tiny, run=run_tiny)
    argv = cases[case]
    before = sorted(p.name for p in (tmp_path / "out").glob("*"))
    assert main(argv) == 2
    lines = _err_lines(capsys)
    _refused(lines, evil)
    assert lines[0].startswith(f"widthsearch {argv[0]}: error:")
    assert not sentinel.exists()
    assert sorted(p.name for p in (tmp_path / "out").glob("*")) == before  # nothing written


def _api_cases(evil: Path, supernet: Path, subnet: Path, tmp: Path):
    ckpt = finetune_paths(tmp / "f.pt")[1]
    return {
        "load_checkpoint": lambda: load_checkpoint(evil, kind="widthsearch.supernet"),
        "load_checkpoint any": lambda: load_checkpoint(evil, kind=None),
        "load_supernet": lambda: load_supernet(evil),
        "read_subnet": lambda: read_subnet(evil),
        "load_subnet": lambda: load_subnet(evil),
        "extract_subnet": lambda: extract_subnet(evil, widths={}, out=tmp / "x.pt"),
        "finetune_subnet": lambda: finetune_subnet(evil, out=tmp / "f.pt", log=None),
        "finetune_subnet teacher": lambda: finetune_subnet(
            subnet, out=tmp / "f.pt", teacher=evil, log=None
        ),
        "finetune_subnet resume": lambda: (
            craft(ckpt, tmp / "sentinel"),
            finetune_subnet(subnet, out=tmp / "f.pt", resume=True, log=None),
        ),
        "evaluate_model": lambda: evaluate_model(evil),
        "evaluate_model supernet": lambda: evaluate_model(subnet, supernet=evil),
        "export_subnet": lambda: export_subnet(evil, tmp / "exp"),
        "convert_file": lambda: convert_file(evil, tmp / "c.pt"),
    }


API_CASES = [
    "load_checkpoint",
    "load_checkpoint any",
    "load_supernet",
    "read_subnet",
    "load_subnet",
    "extract_subnet",
    "finetune_subnet",
    "finetune_subnet teacher",
    "finetune_subnet resume",
    "evaluate_model",
    "evaluate_model supernet",
    "export_subnet",
    "convert_file",
]


@pytest.mark.parametrize("case", API_CASES)
def test_every_python_loader_refuses_a_pickle_payload(
    case, supernet_path, subnet_path, tmp_path, capsys
):
    sentinel = tmp_path / "sentinel"
    evil = craft(tmp_path / "evil.pt", sentinel)
    call = _api_cases(evil, supernet_path, subnet_path, tmp_path)[case]
    with pytest.raises(CheckpointError, match=r"refused.*--trust-pickle"):
        call()
    assert not sentinel.exists() and not (tmp_path / "x.pt").exists()
    assert not (tmp_path / "f.pt").exists() and not (tmp_path / "c.pt").exists()
    assert _err_lines(capsys) == []  # no warning: nothing was unpickled


def test_train_supernet_refuses_a_pickle_payload(train_tiny, tmp_path):
    from widthsearch.recipes.recipe import load_recipe

    sentinel = tmp_path / "sentinel"
    craft(tmp_path / "run" / "supernet.pt", sentinel)
    with pytest.raises(CheckpointError, match="refused"):
        train_supernet(load_recipe(str(train_tiny)), out_dir=tmp_path / "run", resume=True)
    assert not sentinel.exists()


def test_refused_even_when_a_pickle_hides_in_a_plain_pickle_file(tmp_path):
    """Not only torch's zip layout: a bare pickle (or torch's legacy format) is refused too."""
    import pickle

    sentinel = tmp_path / "sentinel"
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pickle.dumps({"format": "widthsearch.subnet", "x": Payload(sentinel)}))
    legacy = tmp_path / "legacy.pt"
    doc = {"format": "widthsearch.subnet", "x": Payload(sentinel)}
    torch.save(doc, legacy, _use_new_zipfile_serialization=False)
    for path in (bare, legacy):
        with pytest.raises(CheckpointError, match="refused"):
            load_subnet(path)
    assert not sentinel.exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_subnet(garbage)


# ---- older (pickled) files: --trust-pickle and convert --------------------------------------


def _legacy_subnet(subnet_path: Path, out: Path, module: nn.Module | None = None) -> Path:
    """A subnet file as widthsearch wrote them before: the whole module pickled, version 1."""
    payload = read_subnet(subnet_path)
    if module is not None:
        payload["module"] = module
        payload["state_dict"] = module.state_dict()
    payload["version"] = 1
    torch.save(payload, out)
    return out


def test_trust_pickle_opens_a_legacy_subnet_and_warns_once(subnet_path, tmp_path, capsys):
    legacy = _legacy_subnet(subnet_path, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_subnet(legacy)
    assert _err_lines(capsys) == []
    module = load_subnet(legacy, trust_pickle=True)
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "warning" in lines[0] and str(legacy) in lines[0]
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(module(x), load_subnet(subnet_path)(x))


def test_trust_pickle_loads_a_users_own_module_class(subnet_path, tmp_path, capsys):
    own = UsersOwnNet().eval()
    legacy = _legacy_subnet(subnet_path, tmp_path / "own.pt", module=own)
    with pytest.raises(CheckpointError, match="refused"):
        load_subnet(legacy)
    module = load_subnet(legacy, trust_pickle=True)
    assert type(module) is UsersOwnNet
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(module(x), own(x))
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "warning" in lines[0] and str(legacy) in lines[0]
    # such a module cannot be rebuilt from a description: convert says so in one line
    with pytest.raises(CheckpointError, match=r"cannot be rebuilt.*--trust-pickle"):
        convert_file(legacy, tmp_path / "c.pt", trust_pickle=True)
    assert not (tmp_path / "c.pt").exists()


def test_eval_cli_with_trust_pickle_on_a_legacy_subnet(subnet_path, tmp_path, capsys):
    legacy = _legacy_subnet(subnet_path, tmp_path / "old.pt")
    argv = ["eval", str(legacy), "--no-latency", "--no-full"]
    assert main(argv) == 2
    _refused(_err_lines(capsys), legacy)
    assert main([*argv, "--trust-pickle"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(legacy) in warnings[0]
    assert (
        json.loads(captured.out)["top1"]
        == evaluate_model(subnet_path, latency=False, full=False)["top1"]
    )


def test_convert_cli_rewrites_a_legacy_subnet_weights_only(subnet_path, tmp_path, capsys):
    legacy = _legacy_subnet(subnet_path, tmp_path / "old.pt")
    new = tmp_path / "new.pt"
    assert main(["convert", str(legacy), "--out", str(new)]) == 2
    _refused(_err_lines(capsys), legacy)
    assert not new.exists()
    assert main(["convert", str(legacy), "--out", str(new), "--trust-pickle"]) == 0
    payload = torch.load(new, weights_only=True)
    assert payload["format"] == "widthsearch.subnet" and payload["version"] == 2
    assert "module" not in payload
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(load_subnet(new)(x), load_subnet(subnet_path)(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.pt", "old.pt"]


def test_finetune_writes_weights_only_state_and_output(subnet_path, tmp_path):
    out = tmp_path / "ft.pt"
    _, ckpt, _ = finetune_paths(out)
    kw = {"out": out, "epochs": 2, "train_limit": 128, "eval_images": 0, "log": None}
    finetune_subnet(subnet_path, stop_after=1, **kw)
    state = torch.load(ckpt, weights_only=True)
    assert state["format"] == "widthsearch.finetune-state" and "module" not in state
    result = finetune_subnet(subnet_path, resume=True, **kw)
    assert len(result["finetune"]["history"]) == 2
    payload = torch.load(out, weights_only=True)
    assert payload["finetune"]["epochs"] == 2 and "module" not in payload
    module = load_subnet(out)
    for key, value in result["module"].state_dict().items():
        assert torch.equal(module.state_dict()[key], value)
