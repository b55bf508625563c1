"""Shared test settings for the 2-core CI machine."""

import os

# Before torch loads OpenMP (as the CLI does): spinning workers collapse when another
# process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


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
