"""The runtime (supernet/runtime.py): device names, precision, single-process no-ops; that no
other module calls CUDA, process-group or autocast APIs; `pretrain` under a 2-process gloo
torchrun and resumed alone; bf16 supernet training on the CPU; CPU-only files."""

from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from widthsearch.recipes.cli import main
from widthsearch.supernet import WidthsearchError
from widthsearch.supernet.checkpoint import load_checkpoint, load_supernet
from widthsearch.supernet.runtime import (
    RANK_STATE_ENV,
    DeviceError,
    Runtime,
    allreduce_grads,
    average_buffers,
    barrier,
    broadcast_state,
    dump_rank_state,
    init_runtime,
    local_runtime,
    resolve_device,
    shutdown_runtime,
)

REPO = Path(__file__).resolve().parents[2]
HAS_CUDA = torch.cuda.is_available()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA, reason="CUDA is available on this machine")
CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
    ],
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _small_recipe(tiny: Path, tmp_path: Path, train_limit: int = 320) -> Path:
    """``tiny`` with fewer training images (10 batches of 32): the same recipe, faster epochs."""
    text = tiny.read_text()
    assert "train_limit = 960" in text
    path = tmp_path / "small.toml"
    path.write_text(text.replace("train_limit = 960", f"train_limit = {train_limit}"))
    return path


def _history(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _tensors(obj, where: str = "payload"):
    """Every tensor in a loaded file, with where it sits."""
    if torch.is_tensor(obj):
        yield where, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{where}[{i}]")


# ---- resolve_device, Runtime -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["cpu", "CPU ", " cpu", "Cpu", torch.device("cpu")])
def test_resolve_device_cpu_names(name):
    assert resolve_device(name) == torch.device("cpu")


@needs_no_cuda
def test_resolve_device_auto_is_the_cpu_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@needs_no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1", torch.device("cuda")])
def test_resolve_device_cuda_without_cuda_raises_naming_cuda(name):
    with pytest.raises(DeviceError, match="CUDA") as info:
        resolve_device(name)
    assert isinstance(info.value, WidthsearchError)  # so the CLI prints it as one line


@pytest.mark.parametrize("name", ["gpu", "tpu", "mps", "cuda:x", "", "cpu:cuda"])
def test_resolve_device_unknown_names_list_the_choices(name):
    if name == "":  # empty means auto
        assert resolve_device(name).type in ("cpu", "cuda")
        return
    with pytest.raises(DeviceError) as info:
        resolve_device(name)
    message = str(info.value)
    assert "auto, cpu, cuda or cuda:N" in message and repr(name.strip().lower()) in message


def test_runtime_rejects_unknown_amp():
    with pytest.raises(ValueError, match="amp must be one of off, bf16, fp16, auto, got 'fp32'"):
        Runtime(amp="fp32")
    with pytest.raises(ValueError, match="fp32"):
        init_runtime("cpu", amp="fp32")
    with pytest.raises(ValueError, match="fp32"):
        local_runtime("cpu", amp="fp32")


def test_auto_amp_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    import widthsearch.supernet.runtime as runtime_mod

    for native, expected in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr(runtime_mod, "native_bf16", lambda device, n=native: n)
        assert Runtime(amp="auto").amp == local_runtime("cpu", amp="auto").amp == expected
        assert init_runtime("cpu", amp="auto").amp == expected
    monkeypatch.undo()
    assert runtime_mod.native_bf16(torch.device("meta")) is False
    cpu = runtime_mod.native_bf16(torch.device("cpu"))
    assert Runtime(amp="auto").amp == ("bf16" if cpu else "off")


@pytest.mark.parametrize(("amp", "enabled"), [("off", False), ("bf16", False), ("fp16", True)])
def test_grad_scaler_is_enabled_only_for_fp16(amp, enabled):
    scaler = Runtime(amp=amp).grad_scaler()
    assert scaler.is_enabled() is enabled
    if not enabled:  # passes values through: callers need no branch
        loss = torch.tensor(3.0)
        assert scaler.scale(loss) is loss


def test_autocast_off_is_fp32_and_bf16_computes_in_bfloat16():
    lin = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with Runtime(amp="off").autocast():
        assert lin(x).dtype == torch.float32
    with Runtime(amp="bf16").autocast():
        assert lin(x).dtype == torch.bfloat16
    assert lin(x).dtype == torch.float32  # only inside the block
    assert lin.weight.dtype == torch.float32


def test_module_and_batch_placement_and_channels_last():
    conv = nn.Conv2d(3, 4, 3)
    rt = Runtime(channels_last=True)
    assert rt.module(conv) is conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = rt.batch(torch.randn(2, 3, 5, 5))
    assert x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last)
    flat = rt.batch(torch.randn(2, 3))  # not 4-D: left as it is
    assert flat.is_contiguous()
    plain = Runtime().batch(torch.randn(2, 3, 5, 5))
    assert plain.is_contiguous() and not Runtime().pin_memory
    assert Runtime().peak_memory() is None


def test_single_process_runtime_and_collectives_are_no_ops(monkeypatch, tmp_path):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", RANK_STATE_ENV):
        monkeypatch.delenv(var, raising=False)
    rt = init_runtime("cpu", amp="bf16", channels_last=True)
    assert (rt.rank, rt.world_size, rt.local_rank) == (0, 1, 0)
    assert rt.is_main and not rt.distributed and rt.device == torch.device("cpu")
    assert rt.describe() == "device cpu, amp bf16, channels-last"
    assert not torch.distributed.is_initialized()
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model(torch.randn(4, 3)).sum().backward()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    losses = torch.tensor([1.0, 2.0])
    broadcast_state(model, rt)
    average_buffers(model, rt)
    barrier(rt)
    assert allreduce_grads(list(model.parameters()), losses, rt) is losses
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)
    dump_rank_state(model, rt)  # no folder in the environment: writes nothing
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(RANK_STATE_ENV, str(tmp_path / "ranks"))
    dump_rank_state(model, rt)
    saved = torch.load(tmp_path / "ranks" / "rank0.pt", weights_only=True)
    assert saved.keys() == before.keys()
    shutdown_runtime(rt)
    assert rt.local() == rt


# ---- only runtime.py calls CUDA, process-group and autocast APIs ------------------------------

PACKAGES = ("supernet", "search", "evaluate", "recipes")
ALLOWED = REPO / "supernet" / "runtime.py"


def _dotted(node: ast.AST) -> str | None:
    """``torch.cuda.synchronize`` for an Attribute chain ending in a Name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside a type annotation (allowed: ``torch.amp.GradScaler | None``)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            roots += [a.annotation for a in every if a is not None and a.annotation is not None]
            if node.returns is not None:
                roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(n) for root in roots for n in ast.walk(root)}


def runtime_api_uses(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for every use in code of the APIs only the runtime may call."""
    tree = ast.parse(source)
    skip = _annotation_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if "torch.distributed" in a.name]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = {a.name for a in node.names}
            if module.startswith("torch.distributed") or (
                module == "torch" and names & {"distributed", "autocast", "cuda"}
            ):
                found.append((node.lineno, f"from {module} import {', '.join(sorted(names))}"))
            if names & {"GradScaler", "autocast", "init_process_group"}:
                found.append((node.lineno, f"from {module} import {', '.join(sorted(names))}"))
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name and (
                name.startswith(("torch.cuda.", "torch.distributed")) or name == "torch.cuda"
            ):
                found.append((node.lineno, name))
        elif isinstance(node, ast.Call):
            func = node.func
            name = _dotted(func) or (func.id if isinstance(func, ast.Name) else "")
            last = name.rsplit(".", 1)[-1]
            if (
                name.startswith("dist.")
                or last in ("init_process_group", "GradScaler")
                or (last == "autocast" and name.startswith("torch."))
            ):
                found.append((node.lineno, f"{name}()"))
    return sorted(set(found))


def test_the_source_check_finds_calls_and_ignores_comments_and_annotations():
    bad = (
        "import torch\n"
        "import torch.distributed as dist\n"  # 2
        "from torch.amp import GradScaler\n"  # 3
        "def f(s: torch.amp.GradScaler | None = None) -> torch.amp.GradScaler:\n"
        "    # torch.cuda.synchronize(); dist.all_reduce(x); torch.autocast('cpu')\n"
        "    '''torch.cuda.is_available() in a docstring'''\n"
        "    x: torch.amp.GradScaler = None\n"
        "    torch.cuda.synchronize()\n"  # 8
        "    dist.all_reduce(x)\n"  # 9
        "    with torch.autocast('cpu'):\n"  # 10
        "        pass\n"
        "    torch.amp.GradScaler('cpu')\n"  # 12
        "    init_process_group('gloo')\n"  # 13
        "    with runtime.autocast(), autocast():\n"  # the runtime's context: allowed
        "        return self.runtime.autocast\n"
    )
    lines = [line for line, _ in runtime_api_uses(bad)]
    assert sorted(set(lines)) == [2, 3, 8, 9, 10, 12, 13]


def test_no_module_but_runtime_calls_cuda_process_group_or_autocast_apis():
    files = [p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))]
    assert ALLOWED in files and len(files) > 20
    offences = {
        str(p.relative_to(REPO)): uses
        for p in files
        if p != ALLOWED and (uses := runtime_api_uses(p.read_text()))
    }
    assert offences == {}
    assert runtime_api_uses(ALLOWED.read_text())  # the check does see the runtime's own calls


# ---- pretrain under torchrun, resumed in one process -------------------------------------------


@pytest.fixture(scope="module")
def two_then_one(tmp_path_factory, train_tiny) -> SimpleNamespace:
    """`pretrain` of 2 epochs under a 2-process gloo torchrun stopped after epoch 1, then
    resumed by one process: what each step left."""
    tmp = tmp_path_factory.mktemp("torchrun-pretrain")
    out = tmp / "run"
    env = {**os.environ, RANK_STATE_ENV: str(tmp / "ranks"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "widthsearch.recipes.cli", "pretrain", str(train_tiny),
        "--epochs", "2", "--stop-after", "1", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    after_two = load_checkpoint(out / "full.pt", kind="widthsearch.full")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["pretrain", str(train_tiny), "--epochs", "2", "--resume", "--device", "cpu"]
        assert main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    resumed = load_checkpoint(out / "full.pt", kind="widthsearch.full")
    return SimpleNamespace(
        out=out, stdout=proc.stdout, ranks=ranks, after_two=after_two, resumed=resumed
    )


def test_torchrun_pretrain_keeps_bit_identical_replicas_equal_to_the_file(two_then_one):
    rank0, rank1 = two_then_one.ranks
    payload = two_then_one.after_two
    assert "2 processes" in two_then_one.stdout
    assert rank0.keys() == rank1.keys() == payload["state_dict"].keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], payload["state_dict"][key]), key
    state = payload["train_state"]
    # each rank trained its half of the 960 images: 15 batches of 32, one epoch of two
    assert (state["world_size"], state["epoch"], state["step"]) == (2, 1, 15)
    assert [h["epoch"] for h in payload["history"]] == [1]


def test_one_process_resumes_the_two_process_checkpoint(two_then_one):
    payload = two_then_one.resumed
    assert payload["train_state"]["world_size"] == 1 and payload["train_state"]["epoch"] == 2
    history = payload["history"]
    logged = _history(two_then_one.out / "pretrain.jsonl")
    assert [h["epoch"] for h in history] == [1, 2] == [h["epoch"] for h in logged]
    assert history[0] == two_then_one.after_two["history"][0]  # epoch 1 kept as it was
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["loss_full"]) for h in history)
    rank0 = two_then_one.ranks[0]
    changed = 0
    for key, value in payload["state_dict"].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), key
            changed += not torch.equal(value, rank0[key])
    assert changed > 10  # epoch 2 did train


def test_one_process_resume_ends_the_cosine_schedule_at_zero(two_then_one):
    history = two_then_one.resumed["history"]
    assert history[0]["lr"] == pytest.approx(0.05)  # half-way through the 2-epoch cosine
    assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # as an uninterrupted run ends


# ---- bf16 on the CPU, files on the CPU ----------------------------------------------------------


def test_bf16_training_on_the_cpu_gives_finite_losses_and_exact_fp32_extraction(
    train_tiny, tmp_path, capsys
):
    recipe = _small_recipe(train_tiny, tmp_path)
    argv = ["train", str(recipe), "--epochs", "1", "--device", "cpu"]
    assert main([*argv, "--amp", "bf16", "--out", str(tmp_path / "bf16")]) == 0
    assert "device cpu, amp bf16" in capsys.readouterr().out
    assert main([*argv, "--amp", "off", "--out", str(tmp_path / "fp32")]) == 0
    assert "device cpu, amp off" in capsys.readouterr().out
    (entry,) = _history(tmp_path / "bf16" / "train.jsonl")
    (plain,) = _history(tmp_path / "fp32" / "train.jsonl")
    losses = {k: v for k, v in entry.items() if k.startswith("loss")}
    assert {"loss", "loss_full", "loss_left", "loss_right"} <= losses.keys()
    assert all(math.isfinite(v) and 0 < v < 10 for v in losses.values()), losses
    assert entry["loss"] != plain["loss"]  # the forward passes really ran in bf16

    sn, payload = load_supernet(tmp_path / "bf16" / "supernet.pt")
    assert payload["recipe"]["run"]["amp"] == "off"  # the flag, not the recipe, chose bf16
    for key, value in payload["state_dict"].items():
        if value.is_floating_point():  # weights stay fp32 (autocast only casts activations)
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    for cfg in (sn.space.sample(rng), sn.space.sample(rng), sn.space.uniform(0.5)):
        for side in ("left", "right"):
            with torch.no_grad(), sn.active(cfg, side):
                expected = sn(x)
            sub = sn.extract(cfg, side=side).eval()
            with torch.no_grad():
                got = sub(x)
            assert got.dtype == expected.dtype == torch.float32
            assert (got - expected).abs().max().item() <= 1e-5, (side, cfg)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(("command", "name"), [("pretrain", "full.pt"), ("train", "supernet.pt")])
def test_training_files_hold_only_cpu_tensors(train_tiny, tmp_path, command, name, device):
    out = tmp_path / "run"
    argv = [command, str(_small_recipe(train_tiny, tmp_path)), "--epochs", "1", "--device", device]
    assert main([*argv, "--out", str(out)]) == 0
    payload = torch.load(out / name, weights_only=True)
    tensors = dict(_tensors(payload))
    assert len(tensors) > 50
    on_device = {where: str(t.device) for where, t in tensors.items() if t.device.type != "cpu"}
    assert on_device == {}
