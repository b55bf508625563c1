"""Shared test settings for the 2-core CI machine."""

import os

# Before torch loads OpenMP (as the CLI does): spinning workers collapse when another
# process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
