"""Where and how computation runs: device, ``torchrun`` processes, mixed precision, layout.

Every stage (pretraining, supernet training, search, extraction, fine-tuning, evaluation)
gets a :class:`Runtime` from :func:`init_runtime` and asks it for the device, the autocast
context, the gradient scaler and the memory format. No other module of the package calls
CUDA, process-group or autocast APIs, so this is the one place to change them.

Data parallelism under ``torchrun`` uses an explicit gradient all-reduce instead of
``DistributedDataParallel``. A BCNet step runs *two* backward passes (left and right
subnet) before one optimiser step, and the sandwich rule runs 3+. DDP reduces gradients
inside each backward through autograd hooks, so every pass but the last would need
``no_sync()``; and on the steps where the supernet's slicing hooks leave a parameter out
of the graph, DDP needs ``find_unused_parameters=True`` (a graph walk after every backward)
or fails. The supernet also swaps views into modules' ``_parameters`` during each call,
which DDP's bucket bookkeeping does not expect. All ranks draw the same widths (the
samplers are functions of ``(seed, step)``), so the simple, exact alternative is what DDP
itself computes: after the step's backward passes, one ``all_reduce`` of the flattened
gradients (plus the step's loss values, so every rank logs the same losses and stops on
the same non-finite loss) divided by the world size. Parameters start identical (broadcast
from rank 0), see identical averaged gradients, and so stay bit-identical; BN running
stats, which each rank updates from its own shard, are averaged at the end of every epoch.
Fine-tuning a plain subnet uses the same collectives, so both stages behave alike.

Everything here degrades to a no-op in a single process on the CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from .errors import WidthsearchError

__all__ = [
    "AMP_MODES",
    "DEVICE_CHOICES",
    "Runtime",
    "allreduce_grads",
    "average_buffers",
    "barrier",
    "broadcast_state",
    "cuda_rng_state",
    "dump_rank_state",
    "init_runtime",
    "launched_rank",
    "local_runtime",
    "native_bf16",
    "resolve_device",
    "set_cuda_rng_state",
    "shutdown_runtime",
]

AMP_MODES = ("off", "bf16", "fp16", "auto")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CPU = torch.device("cpu")


class DeviceError(WidthsearchError):
    """The requested device (or precision) is not available here."""


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        DeviceError: an unknown name, or CUDA (that GPU) asked for but not available.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if _has_cuda() else _CPU
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {name!r}: use {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return _CPU
    if device.type != "cuda":
        raise DeviceError(f"unsupported device {name!r}: use {DEVICE_CHOICES}")
    if not _has_cuda():
        raise DeviceError(f"--device {name} requested but CUDA is not available on this machine")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device("cuda", index)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (what ``amp = "auto"`` turns bf16 on for)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:  # oneDNN's own check: AVX512-BF16 or AMX
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _has_cuda() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where this process computes and how: device, place in a ``torchrun`` job, precision.

    Attributes:
        rank, world_size, local_rank: This process in the job (0, 1, 0 alone).
        device: Where tensors and modules live.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` autocast for forward passes (fp16 trains
            with a gradient scaler; bf16 needs none and works on the CPU too); ``"auto"``
            becomes ``"bf16"`` where the device computes it natively (a GPU with bf16, a CPU
            with AVX512-BF16 or AMX), else ``"off"`` (emulated bf16 is slower than fp32).
        channels_last: Keep 4-D weights and batches in channels-last memory format.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU
    amp: str = "off"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.amp == "auto":
            object.__setattr__(self, "amp", "bf16" if native_bf16(self.device) else "off")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def local(self) -> Runtime:
        """The same device and precision for work only this process does (rank 0's search)."""
        return dataclasses.replace(self, rank=0, world_size=1, local_rank=0)

    # -- precision -------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context for forward passes (a no-op with ``amp="off"``)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaler for fp16 training; with any other precision it passes values through
        (``scale`` returns the loss, ``step`` just steps), so callers need no branch."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    # -- placement -------------------------------------------------------------------------
    def module(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (and memory format); returns it."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def batch(self, x: Tensor) -> Tensor:
        """Move an input batch to the device (and memory format), without blocking."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def pin_memory(self) -> bool:
        """Whether DataLoaders should pin host memory (copies to a GPU overlap compute)."""
        return self.is_cuda

    def synchronize(self) -> None:
        """Wait for queued device work (timing)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> int | None:
        """Peak bytes allocated on the GPU since the last reset (``None`` on the CPU)."""
        return int(torch.cuda.max_memory_allocated(self.device)) if self.is_cuda else None

    def describe(self) -> str:
        """One line for logs: device (and GPU name), precision, layout, processes."""
        where = str(self.device)
        if self.is_cuda:
            where += f" ({torch.cuda.get_device_name(self.device)})"
        parts = [f"device {where}", f"amp {self.amp}"]
        if self.channels_last:
            parts.append("channels-last")
        if self.distributed:
            parts.append(f"{self.world_size} processes")
        return ", ".join(parts)


def init_runtime(
    device: str | torch.device | None = "auto",
    *,
    amp: str = "off",
    channels_last: bool = False,
    timeout: datetime.timedelta | None = None,
) -> Runtime:
    """The runtime of this process, joining the ``torchrun`` job in the environment if any.

    Under ``torchrun`` with CUDA each process takes GPU ``LOCAL_RANK`` (NCCL backend); on
    the CPU the backend is gloo. ``timeout``: how long a collective waits for the other
    ranks (``None``: the backend's default). Call :func:`shutdown_runtime` when done.

    Raises:
        DeviceError: unknown or unavailable device.
        ValueError: unknown ``amp``.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if world_size > 1:
            resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, **({"timeout": timeout} if timeout else {}))
    return Runtime(rank, world_size, local_rank, resolved, amp, bool(channels_last))


def launched_rank() -> int:
    """This process's rank in the ``torchrun`` job it was started in (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def local_runtime(
    device: str | torch.device | None = "auto", *, amp: str = "off", channels_last: bool = False
) -> Runtime:
    """A single-process runtime (no process group): for stages only one process runs."""
    return Runtime(device=resolve_device(device), amp=amp, channels_last=bool(channels_last))


def shutdown_runtime(runtime: Runtime) -> None:
    """Leave the process group (if this process joined one)."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def running(
    device: str | torch.device | None = "auto",
    *,
    amp: str = "off",
    channels_last: bool = False,
    timeout: datetime.timedelta | None = None,
) -> Iterator[Runtime]:
    """:func:`init_runtime` ... :func:`shutdown_runtime` as a ``with`` block."""
    runtime = init_runtime(device, amp=amp, channels_last=channels_last, timeout=timeout)
    try:
        yield runtime
    finally:
        shutdown_runtime(runtime)


# ---- collectives (no-ops in one process) --------------------------------------------------


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def broadcast_state(model: nn.Module, runtime: Runtime) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does at construction)."""
    if not runtime.distributed:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def allreduce_grads(params: list[nn.Parameter], losses: Tensor, runtime: Runtime) -> Tensor:
    """Average the gradients (in place) and ``losses`` over all ranks in one collective.

    Parameters whose ``grad`` is ``None`` are skipped: every rank trains the same widths, so
    the same parameters are unused everywhere.

    Returns:
        The averaged ``losses`` (unchanged in a single process).
    """
    if not runtime.distributed:
        return losses
    grads = [p.grad for p in params if p.grad is not None]
    flat = _flatten_dense_tensors([*grads, losses.to(grads[0] if grads else losses)])
    dist.all_reduce(flat)
    flat /= runtime.world_size
    *new_grads, new_losses = _unflatten_dense_tensors(flat, [*grads, losses])
    for grad, new in zip(grads, new_grads, strict=True):
        grad.copy_(new)
    return new_losses.to(losses.dtype)


def average_buffers(model: nn.Module, runtime: Runtime) -> None:
    """Average floating-point buffers (BN running stats) over ranks; integer ones agree."""
    if not runtime.distributed:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    with torch.no_grad():
        flat = _flatten_dense_tensors([b.data for b in buffers])
        dist.all_reduce(flat)
        flat /= runtime.world_size
        for buf, new in zip(buffers, _unflatten_dense_tensors(flat, buffers), strict=True):
            buf.copy_(new)


RANK_STATE_ENV = "WIDTHSEARCH_RANK_STATE_DIR"  # a folder: every rank saves its final weights


def dump_rank_state(model: nn.Module, runtime: Runtime) -> None:
    """With ``$WIDTHSEARCH_RANK_STATE_DIR`` set, save this rank's weights (replica checks)."""
    folder = os.environ.get(RANK_STATE_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        torch.save(model.state_dict(), os.path.join(folder, f"rank{runtime.rank}.pt"))


# ---- RNG state of the GPUs (exact resume) --------------------------------------------------


def cuda_rng_state() -> list[Tensor] | None:
    """Every GPU's RNG state (``None`` without CUDA)."""
    return torch.cuda.get_rng_state_all() if _has_cuda() else None


def set_cuda_rng_state(states: list[Tensor] | None) -> None:
    """Restore :func:`cuda_rng_state` output when this machine has GPUs (else ignored)."""
    if states is not None and _has_cuda():
        torch.cuda.set_rng_state_all(states)
