"""MACs as ``FlopCounterMode`` counts them, with attention counted too.

``FlopCounterMode`` sees the matmuls of attention only when they run as matmuls: the fused
kernels (``scaled_dot_product_attention`` on a CPU, ``nn.MultiheadAttention``'s inference
fast path) are invisible to it. Counting runs the forward in eval mode with autograd on (no
backward is taken) and the math attention backend, so that every multiply-accumulate is
counted the same way on a supernet, its extracted subnets and any other module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["counted_flops", "counted_macs"]


def counted_flops(module: nn.Module, *inputs: Any) -> FlopCounterMode:
    """The counter after one forward of ``module`` on ``inputs`` (per-module counts too)."""
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            module(*inputs)
    finally:
        module.train(was_training)
    return counter


def counted_macs(module: nn.Module, *inputs: Any) -> int:
    """MACs of one forward of ``module`` on ``inputs``: ``FlopCounterMode`` total / 2."""
    return int(counted_flops(module, *inputs).get_total_flops()) // 2
