"""Shared test settings for the 2-core CI machine."""

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Before torch loads OpenMP (as the CLI does): spinning workers collapse when another
# process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# Under pytest-xdist (`make test`: one worker per core) each worker keeps to one core.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

RECIPES = Path(__file__).resolve().parent / "recipes"


@pytest.fixture(scope="session")
def train_tiny() -> Path:
    """tests/recipes/train_tiny.toml: a supernet training job of a few seconds."""
    return RECIPES / "train_tiny.toml"


@pytest.fixture(scope="session")
def run_tiny() -> Path:
    """tests/recipes/run_tiny.toml: the whole `widthsearch run` pipeline in under a minute."""
    return RECIPES / "run_tiny.toml"


@contextmanager
def _killed_after(proc: subprocess.Popen) -> Iterator[None]:
    """SIGKILL ``proc`` when the block (which waits for the moment) ends; never leave it
    running, even when the block fails."""
    try:
        yield
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="session")
def killed_after():
    """``with killed_after(proc): ...``: the process is SIGKILLed when the block ends."""
    return _killed_after


@pytest.fixture()
def one_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _synthetic_table(sn, *, threads: int = 1, batch: int = 1):
    """A latency table with made-up entries (no timing, so tests do not depend on the
    machine's load): every layer costs 10 us plus 1 us per 64 channel pairs, the same at every
    depth -- unlike MACs, which fall with the feature maps -- so latency and MACs budgets
    pick different subnets."""
    from widthsearch.search import LatencyTable, LayerLatency
    from widthsearch.search.latency import layer_groups

    choices = {g.name: list(g.choices) for g in sn.space.groups}
    layers = []
    for name, groups, _ in layer_groups(sn):
        axes = [np.asarray(choices[g], dtype=np.float64) for g in groups]
        product = axes[0] if len(axes) == 1 else np.outer(axes[0], axes[1])
        layers.append(LayerLatency(name, groups, (0.01 + product / 64e3).round(6).tolist()))
    return LatencyTable(
        device="cpu",
        threads=threads,
        batch=batch,
        torch=torch.__version__,
        model=sn.meta["model"],
        input_size=int(sn.meta.get("input_size", 28)),
        in_chans=int(sn.meta.get("in_chans", 1)),
        choices=choices,
        layers=layers,
        overhead_ms=0.05,
    )


@pytest.fixture(scope="session")
def synthetic_latency_table():
    """``make(sn, threads=1, batch=1)``: a latency table of ``sn`` with made-up entries."""
    return _synthetic_table


def _train_tiny_supernet(
    *, heldout_size: int, seed: int, train_limit: int, bins: int, full_steps: int, random_steps: int
):
    """resnet20 on 12x12 synthetic images, trained with a plain loop -- full width, then
    BCNet-style random widths on both sides -- so tests do not depend on the trainer.

    Returns ``(supernet in eval mode, loss records as the trainer writes them)``.
    """
    from widthsearch.supernet import Supernet
    from widthsearch.supernet.data import get_data, make_loader
    from widthsearch.supernet.models import create_model

    size = 12
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, in_chans=1)
    meta = {"model": "resnet20", "num_classes": 10, "in_chans": 1, "input_size": size}
    sn = Supernet.from_model(model, torch.zeros(1, 1, size, size), bins=bins, meta=meta)
    splits = get_data(
        "synthetic",
        heldout_size=heldout_size,
        seed=seed,
        train_limit=train_limit,
        synthetic_in_chans=1,
        synthetic_input_size=size,
    )
    loader = make_loader(splits.train, batch_size=64, shuffle=True, seed=0, drop_last=True)
    opt = torch.optim.Adam(sn.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    records: dict[str, dict[int, list[float]]] = {}
    step = 0
    sn.train()
    while step < full_steps + random_steps:
        for x, y in loader:
            if step >= full_steps + random_steps:
                break
            opt.zero_grad()
            if step < full_steps:
                F.cross_entropy(sn(x), y).backward()
            else:  # bilateral step on a random config
                cfg = sn.space.sample(rng)
                total = 0.0
                for side in ("left", "right"):
                    with sn.active(cfg, side):
                        loss = F.cross_entropy(sn(x), y)
                    (0.5 * loss).backward()
                    total += 0.5 * float(loss.detach())
                for g in sn.space.searchable:
                    rec = records.setdefault(g.name, {}).setdefault(cfg[g.name], [0.0, 0])
                    rec[0] += total
                    rec[1] += 1
            opt.step()
            step += 1
    return sn.eval(), records


@pytest.fixture(scope="session")
def train_tiny_supernet():
    """``train(heldout_size=, seed=, train_limit=, bins=, full_steps=, random_steps=)``: a tiny
    trained supernet and its loss records (test modules cannot import conftest)."""
    return _train_tiny_supernet
