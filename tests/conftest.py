"""Shared test settings for the 2-core CI machine."""

import os

# Before torch loads OpenMP (as the CLI does): spinning workers collapse when another
# process shares the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

torch.set_num_threads(2)
