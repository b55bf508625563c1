"""Data parallelism for supernet training under ``torchrun``, with explicit gradient all-reduce.

Why not wrap the model in ``DistributedDataParallel``: a BCNet step runs *two* backward
passes (left and right subnet) before one optimiser step, and the sandwich rule runs 3+.
DDP reduces gradients inside each backward through autograd hooks, so every pass but the
last would need ``no_sync()``; and on the steps where the supernet's slicing hooks leave a
parameter out of the graph, DDP needs ``find_unused_parameters=True`` (a graph walk after
every backward) or fails. The supernet also swaps views into modules' ``_parameters`` during
each call, which DDP's bucket bookkeeping does not expect. All ranks draw the same widths
(the samplers are functions of ``(seed, step)``), so the simple, exact alternative is what
DDP itself computes: after the step's backward passes, one ``all_reduce`` of the flattened
gradients (plus the step's loss values, so every rank logs the same losses and stops on the
same non-finite loss) divided by the world size. Parameters start identical (broadcast from
rank 0), see identical averaged gradients, and so stay bit-identical; BN running stats,
which each rank updates from its own shard, are averaged at the end of every epoch.

Everything here degrades to a no-op in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = [
    "DistInfo",
    "allreduce_grads",
    "average_buffers",
    "barrier",
    "broadcast_state",
    "init_distributed",
    "shutdown_distributed",
]


_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the ``torchrun`` job described by the environment, if any.

    Args:
        device: ``"cpu"`` or ``"cuda"``; CUDA is used only when asked for, and each process
            then takes GPU ``LOCAL_RANK`` with the NCCL backend (gloo on CPU).

    Raises:
        ValueError: CUDA requested but not available, or an unknown device.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def shutdown_distributed(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_state(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does at construction)."""
    if not info.distributed:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def allreduce_grads(
    params: list[nn.Parameter], losses: torch.Tensor, info: DistInfo
) -> torch.Tensor:
    """Average the gradients (in place) and ``losses`` over all ranks in one collective.

    Parameters whose ``grad`` is ``None`` are skipped: every rank trains the same widths, so
    the same parameters are unused everywhere.

    Returns:
        The averaged ``losses`` (unchanged in a single process).
    """
    if not info.distributed:
        return losses
    grads = [p.grad for p in params if p.grad is not None]
    flat = _flatten_dense_tensors([*grads, losses.to(grads[0] if grads else losses)])
    dist.all_reduce(flat)
    flat /= info.world_size
    *new_grads, new_losses = _unflatten_dense_tensors(flat, [*grads, losses])
    for grad, new in zip(grads, new_grads, strict=True):
        grad.copy_(new)
    return new_losses.to(losses.dtype)


def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (BN running stats) over ranks; integer ones agree."""
    if not info.distributed:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    with torch.no_grad():
        flat = _flatten_dense_tensors([b.data for b in buffers])
        dist.all_reduce(flat)
        flat /= info.world_size
        for buf, new in zip(buffers, _unflatten_dense_tensors(flat, buffers), strict=True):
            buf.copy_(new)
