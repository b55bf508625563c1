"""Measurement: test top-1, MACs (analytic and counted), parameters, CPU latency.

Every figure of a subnet comes with the same figure of the full model and their ratio, so
a report line reads "0.48x the MACs, 0.61x the latency, -1.2 points top-1".
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from widthsearch.search import calibration_batches, recipe_splits
from widthsearch.supernet import counted_macs
from widthsearch.supernet.bn import recalibrate_bn
from widthsearch.supernet.checkpoint import build_supernet, load_supernet
from widthsearch.supernet.data import make_loader
from widthsearch.supernet.errors import CheckpointError
from widthsearch.supernet.recipe import stored_recipe
from widthsearch.supernet.runtime import Runtime, local_runtime

from ._common import (
    count_params,
    model_input,
    read_subnet,
    top1,
)
from .teacher import load_teacher

__all__ = ["LATENCY_BATCHES", "counted_macs", "dataset_top1", "evaluate_model", "measure_latency"]

LATENCY_BATCHES = (1, 64)
_BLOCKS = 10  # blocks a measurement aims for
_MIN_BLOCKS = 3  # and never fewer (a slow forward runs once per block)
_SLOW = 0.05  # seconds per call from which blocks are single calls timed back to back
_META_KEYS = ("model", "num_classes", "in_chans", "input_size", "bins", "min_bins", "round_to")


def measure_latency(
    module: nn.Module,
    example: torch.Tensor,
    *,
    min_run_time: float = 0.5,
    threads: int = 1,
    runtime: Runtime | None = None,
) -> float:
    """Median latency in milliseconds (``torch.utils.benchmark``, no autograd), on the
    device of ``module`` and ``example`` (the timer synchronises a GPU).

    ``threads`` is fixed (default 1) so CPU figures compare across models and machines'
    loads; ``runtime`` adds its mixed precision.
    """
    runtime = runtime or Runtime()
    # torch.utils.benchmark pulls in cpp_extension, whose import warns "No CUDA runtime is
    # found" on CPU machines with a CUDA_HOME: irrelevant to CPU timing, so kept off stderr
    cpp_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_logger.level
    cpp_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        cpp_logger.setLevel(level)

    module = module.eval()

    def call() -> None:
        with torch.inference_mode(), runtime.autocast():
            module(example)

    start = time.perf_counter()
    call()  # warm-up outside the measurement
    warm_up = time.perf_counter() - start
    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=threads)
    if warm_up >= _SLOW:
        # a slow forward (a 224x224 network at batch 32): blocked_autorange times single calls
        # back to back, where each timeit() below would add two warm-up calls of its own
        target = 0.9 * max(min_run_time, _MIN_BLOCKS * warm_up)
        return timer.blocked_autorange(min_run_time=target).median * 1e3
    # blocks of about min_run_time / _BLOCKS each, sized from one timed call: the median of
    # their means, as blocked_autorange, without its block-size estimation (which costs a
    # latency table of thousands of microsecond-sized entries minutes)
    once = timer.timeit(1).mean
    number = max(1, int(min_run_time / _BLOCKS / max(once, 1e-7)))
    means: list[float] = []
    spent = 0.0
    while len(means) < _MIN_BLOCKS or spent < min_run_time:
        block = timer.timeit(number).mean
        means.append(block)
        spent += block * number
    return statistics.median(means) * 1e3


def dataset_top1(
    module: nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 256,
    resize: Any = None,
    progress: bool | None = None,
    desc: str = "test",
    runtime: Runtime | None = None,
) -> float:
    """Top-1 of ``module`` on a whole split (on ``runtime``'s device and precision)."""
    runtime = runtime or Runtime(device=next(module.parameters()).device)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, pin_memory=runtime.is_cuda)
    bar = tqdm(loader, desc=desc, unit="batch", disable=None if progress is None else not progress)
    batches = ((resize(runtime.batch(x)) if resize else x, y) for x, y in bar)
    return top1(module, batches, runtime=runtime)


def _figures(
    module: nn.Module,
    meta: Mapping[str, Any],
    *,
    macs: int,
    latency: bool,
    latency_seconds: float,
    threads: int,
    runtime: Runtime,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "macs": int(macs),
        "macs_counted": counted_macs(module, runtime.batch(model_input(meta, 1))),
        "params": count_params(module),
        "latency_ms": None,
    }
    if latency:
        out["latency_ms"] = {
            f"batch{b}": round(
                measure_latency(
                    module,
                    runtime.batch(model_input(meta, b)),
                    min_run_time=latency_seconds,
                    threads=threads,
                    runtime=runtime,
                ),
                4,
            )
            for b in LATENCY_BATCHES
        }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(float(a) / float(b), 4)


def evaluate_model(
    model: str | os.PathLike[str] | Mapping[str, Any],
    *,
    data: str | None = None,
    latency: bool | None = None,
    latency_seconds: float | None = None,
    threads: int = 1,
    batch_size: int = 256,
    test_limit: int | None = None,
    full: bool = True,
    supernet: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    trust_pickle: bool = False,
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
) -> dict[str, Any]:
    """Measure a subnet file (``extract`` or ``finetune`` output) and the full model.

    Args:
        model: Subnet file path, or its loaded payload.
        data: Evaluate on this dataset's test split instead of the recipe's.
        latency: Measure CPU latency (batch 1 and 64); default: the recipe's
            ``[eval].latency``, else True.
        latency_seconds: Minimum measuring time per latency figure (default: the recipe's
            ``[eval].latency_seconds``, else 0.5).
        threads: Torch threads while timing.
        batch_size: Batch size of the test pass.
        test_limit: Test images (default: the recipe's ``[data].test_limit``; 0 = all).
        full: Also measure the full model: the trained network a warm-started supernet
            carries (``"network": "trained"``), else the supernet at full width, weights from
            the recorded supernet file when it exists, else untrained (top-1 then ``None``).
        supernet: Supernet file for the full model (default: the one recorded).
        progress: tqdm bars (``None``: only on a terminal).
        trust_pickle: Accept subnet and supernet files that need unpickling (older files).
        device, amp, channels_last: Where and how the test passes and latency run
            (``latency_device`` in the result says where latency was measured).

    Returns:
        ``{"top1", "macs", "macs_counted", "params", "latency_ms": {"batch1", "batch64"},
        "full": {same + "top1"}, "ratios": {"macs", "params", "latency_batch1",
        "latency_batch64"}, ...}``; ``macs`` is analytic (the supernet cost model on the saved
        widths), ``macs_counted`` is ``FlopCounterMode`` total / 2 on the module at batch 1.

    Raises:
        CheckpointError: missing/corrupt/foreign file, or a dataset that does not fit.
        ValueError: the saved widths do not fit the model's supernet.
    """
    path = None if isinstance(model, Mapping) else str(model)
    payload = (
        dict(model) if isinstance(model, Mapping) else read_subnet(model, trust_pickle=trust_pickle)
    )
    meta = dict(payload["meta"])
    recipe = payload.get("recipe") if isinstance(payload.get("recipe"), Mapping) else {}
    settings = stored_recipe(payload, where=path or "subnet").eval
    if latency is None:
        latency = settings.latency
    if latency_seconds is None:
        latency_seconds = float(settings.latency_seconds)
    if latency_seconds <= 0:
        raise ValueError(f"latency_seconds must be > 0, got {latency_seconds}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    runtime = local_runtime(device, amp=amp, channels_last=channels_last)

    # the cost model: the supernet with trained weights when we have it, else untrained
    sn, trained = None, False
    sn_path = supernet or payload.get("supernet")
    if sn_path and Path(sn_path).is_file():
        sn, _ = load_supernet(sn_path, trust_pickle=trust_pickle)
        if any(sn.meta.get(k) != meta.get(k) for k in _META_KEYS):
            if supernet is not None:
                raise CheckpointError(
                    f"{sn_path}: supernet of another model than {path or 'the subnet'}"
                )
            sn = None  # the recorded supernet was replaced by another one: do not use it
        else:
            trained = True
    elif supernet is not None:
        raise CheckpointError(f"{supernet}: no such file")
    if sn is None:
        sn = build_supernet(meta)
    try:
        widths = sn.space.validate(payload["widths"])
    except ValueError as exc:
        raise ValueError(f"saved widths do not fit the model's supernet: {exc}") from None

    module = runtime.module(payload["module"]).eval()
    splits, resize = recipe_splits(
        recipe, meta, data=data, test_limit=test_limit, where=path or "subnet"
    )
    result: dict[str, Any] = {
        "model": path,
        "model_name": meta.get("model"),
        "strategy": payload.get("strategy"),
        "budget_macs": payload.get("budget_macs"),
        "inheritance": (payload.get("inheritance") or {}).get("chosen"),
        "finetuned": "finetune" in payload,
        "dataset": splits.spec.name,
        "test_images": len(splits.test),
        "top1": dataset_top1(
            module,
            splits.test,
            batch_size=batch_size,
            resize=resize,
            progress=progress,
            runtime=runtime,
        ),
    }
    result.update(
        _figures(
            module,
            meta,
            macs=sn.macs(widths),
            latency=latency,
            latency_seconds=latency_seconds,
            threads=threads,
            runtime=runtime,
        )
    )
    result["latency_threads"] = threads if latency else None
    result["latency_device"] = str(runtime.device) if latency else None
    if full:
        reference, recalibrate = sn.extract(sn.space.max(), side="left"), trained
        if trained:  # the trained network a warm start carries is the model the user had
            reference, recalibrate = load_teacher(sn_path, meta, trust_pickle=trust_pickle)
        full_module = runtime.module(reference).eval()
        if recalibrate and len(splits.train):
            # like the subnet at extraction: BN statistics of this width, not the supernet's
            # running mix of every width it trained
            recalibrate_bn(full_module, calibration_batches(splits.train, recipe, resize=resize))
        ref: dict[str, Any] = {
            "top1": dataset_top1(
                full_module,
                splits.test,
                batch_size=batch_size,
                resize=resize,
                progress=progress,
                desc="test (full)",
                runtime=runtime,
            )
            if trained
            else None,
            "weights": str(sn_path) if trained else None,
            "network": "trained" if trained and not recalibrate else "supernet",
            "bn_recalibrated": bool(recalibrate and len(splits.train)),
        }
        ref.update(
            _figures(
                full_module,
                meta,
                macs=sn.macs(),
                latency=latency,
                latency_seconds=latency_seconds,
                threads=threads,
                runtime=runtime,
            )
        )
        result["full"] = ref
        lat, ref_lat = result["latency_ms"] or {}, ref["latency_ms"] or {}
        result["ratios"] = {
            "macs": _ratio(result["macs"], ref["macs"]),
            "params": _ratio(result["params"], ref["params"]),
            **{
                f"latency_batch{b}": _ratio(lat.get(f"batch{b}"), ref_lat.get(f"batch{b}"))
                for b in LATENCY_BATCHES
            },
        }
    return result
