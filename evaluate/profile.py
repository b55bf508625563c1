"""Measure a supernet's latency table on this machine (``widthsearch profile``).

What is measured: every slimmable layer (conv, linear, BN, LayerNorm, attention without its
output projection, which is a layer of its own) alone, as the dense layer an extracted
subnet would have, at every combination of the width choices of the
groups it touches, on its own input shape at batch ``batch`` (its channels on the dimension
its handler found when tracing: 1, or the last for ConvNeXt's channels-last LayerNorm and
Linear) -- ``torch.utils.benchmark`` medians, ``threads`` intra-op threads, no autograd.
What is not: activations, residual adds, pooling, a per-channel tensor that its owner's
forward uses directly (ConvNeXt's layer scale: no module of its own, its entries are 0),
memory traffic between layers and the framework's per-call overhead.
With ``sample_widths=K`` only K evenly spaced choices per group (both ends) are timed and the
rest of each layer's table is interpolated linearly in the widths (bilinear on a dense
layer's two axes: exact for ``a + b*w_in + c*w_out + d*w_in*w_out``), for models whose full
table would take too long (224x224 at batch 32).
Those are folded in afterwards by timing whole extracted subnets (narrowest, uniform, full
and a few random ones) and fitting ``measured = overhead + scale * sum of layer entries +
activation * sum of layer output elements`` (non-negative least squares); the table stores
each layer's entries with its share of the last two terms folded in, and the overhead, so a
prediction is a plain sum of table entries.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from scipy import optimize
from torch import nn
from tqdm.auto import tqdm
from widthsearch.search.latency import LatencyTable, LayerLatency, layer_groups, monotone
from widthsearch.supernet import Supernet
from widthsearch.supernet.checkpoint import build_supernet
from widthsearch.supernet.runtime import Runtime
from widthsearch.supernet.supernet import slice_layer

from ._common import model_input, read_subnet
from .measure import measure_latency

__all__ = [
    "CALIBRATION_RATIOS",
    "fit_latency",
    "interpolate_grid",
    "latency_check",
    "profile_latency",
    "sample_indices",
]

# uniform width ratios of the whole subnets that fit the overhead and scale (besides the
# narrowest and the full network)
CALIBRATION_RATIOS = (0.25, 0.5, 0.75)


@torch.no_grad()
def profile_latency(
    sn: Supernet,
    *,
    threads: int = 1,
    batch: int = 1,
    seconds: float = 0.05,
    calibration: int = 8,
    sample_widths: int | None = None,
    runtime: Runtime | None = None,
    progress: bool | None = None,
) -> LatencyTable:
    """Measure ``sn``'s latency table on ``runtime``'s device (default: the CPU).

    Args:
        sn: The supernet (its weights do not matter for timing, its shapes do).
        threads: Intra-op threads while timing.
        batch: Batch size of every timed forward.
        seconds: Minimum measuring time per table entry and per whole subnet.
        calibration: Random whole subnets timed for the fit, besides the narrowest, the
            uniform ones and the full network.
        sample_widths: Time only this many evenly spaced choices per group (>= 2, both
            ends included) and interpolate the rest (``None``: time every choice).
        runtime: Device and precision to time on.
        progress: tqdm bar (``None``: only on a terminal).
    """
    if threads < 1 or batch < 1 or seconds <= 0 or calibration < 0:
        raise ValueError(
            "profile: threads and batch must be >= 1, seconds > 0 and calibration >= 0"
        )
    if sample_widths is not None and sample_widths < 2:
        raise ValueError(f"profile: sample_widths must be >= 2 (both ends), got {sample_widths}")
    runtime = runtime or Runtime()
    start = time.perf_counter()
    meta = sn.meta
    example = model_input(meta, batch)
    shapes, per_channel = _layer_shapes(sn, example)
    full = sn.extract(sn.space.max()).eval()  # plain modules: no supernet hooks
    modules = dict(full.named_modules())
    choices = {g.name: list(g.choices) for g in sn.space.groups}
    timed_at = {g: sample_indices(len(c), sample_widths) for g, c in choices.items()}
    entries = {entry.layer.name: entry for entry in sn.layers}
    plan = layer_groups(sn)
    cells = sum(int(np.prod([len(timed_at[g]) for g in groups])) for _, groups, _ in plan)
    bar = tqdm(total=cells, desc="profile", unit="entry", disable=_quiet(progress))

    def timed(module: nn.Module, x: torch.Tensor) -> float:
        return measure_latency(
            runtime.module(module),
            runtime.batch(x),
            min_run_time=seconds,
            threads=threads,
            runtime=runtime,
        )

    layers = []
    for name, groups, follows in plan:
        layer, (in_g,), _ = entries[name]  # one group each: layer_groups checked it
        in_full = sn.space.groups[in_g].max_channels
        axes = [choices[g] for g in groups]
        grid = [timed_at[g] for g in groups]
        ms = np.zeros([len(a) for a in axes])
        if name not in shapes:  # a tensor its owner reads: nothing to time alone
            bar.update(int(np.prod([len(i) for i in grid])))
            layers.append(LayerLatency(name, list(groups), ms))
            continue
        inputs: dict[tuple[tuple[int, ...], int], torch.Tensor] = {}  # this layer's, reused
        for cell in itertools.product(*grid):
            widths = [axes[k][i] for k, i in enumerate(cell)]
            w_in, w_out = (widths[0], widths[0]) if follows else (widths[0], widths[1])
            module = _alone(modules[name], layer)
            slice_layer(module, layer, torch.arange(w_in), torch.arange(w_out))
            for shape in shapes[name]:  # at batch 32 drawing an input costs more than timing
                if (shape, w_in) not in inputs:
                    inputs[shape, w_in] = _input(shape, w_in, in_full, dim=layer.in_dim)
            ms[cell] = sum(timed(module, inputs[shape, w_in]) for shape in shapes[name])
            bar.update(1)
        layers.append(LayerLatency(name, list(groups), interpolate_grid(ms, axes, grid)))
    bar.close()

    table = LatencyTable(
        device=str(runtime.device),
        threads=int(threads),
        batch=int(batch),
        torch=torch.__version__,
        model=str(meta.get("model", "")),
        input_size=int(meta.get("input_size", example.shape[-1])),
        in_chans=int(meta.get("in_chans", example.shape[1])),
        choices=choices,
        layers=layers,
        # 0 when every choice was timed (no group has more than sample_widths choices)
        sample_widths=0
        if all(len(timed_at[g]) == len(c) for g, c in choices.items())
        else int(sample_widths),
    )
    # what the layer entries miss grows with each layer's output: a second table of output
    # elements (millions), fitted together with the constant on whole subnets
    elements = dataclasses.replace(
        table,
        layers=[
            LayerLatency(t.name, t.groups, _output_elements(t, choices, per_channel.get(t.name, 0)))
            for t in layers
        ],
    )
    configs = _calibration_configs(sn, random=calibration)
    measured = [timed(sn.extract(cfg).eval(), example) for _, cfg in configs]
    vectors = np.stack([sn.widths_vector(cfg) for _, cfg in configs])
    sums = table.bind(sn).predict(vectors).tolist()
    mega = elements.bind(sn).predict(vectors).tolist()
    overhead, scale, activation = fit_latency(sums, mega, measured)
    table.layers = [
        LayerLatency(
            t.name,
            t.groups,
            np.round(
                monotone(np.asarray(t.ms) * scale + np.asarray(e.ms) * activation), 6
            ).tolist(),
        )
        for t, e in zip(layers, elements.layers, strict=True)
    ]
    table.overhead_ms = round(overhead, 6)
    table.scale = round(scale, 6)
    table.activation_ms = round(activation, 6)
    model = table.bind(sn)
    table.calibration = [
        {"config": label, "measured_ms": round(ms, 6), "predicted_ms": round(float(p), 6)}
        for (label, _), ms, p in zip(configs, measured, model.predict(vectors), strict=True)
    ]
    table.seconds = time.perf_counter() - start
    return table


def fit_latency(
    layer_sums: list[float], mega_elements: list[float], measured: list[float]
) -> tuple[float, float, float]:
    """``(overhead, scale, activation)`` >= 0 with ``measured ~ overhead + scale * layer_sum +
    activation * mega_elements`` (non-negative least squares on the *relative* error, so a
    narrow subnet's milliseconds count as much as the full network's: budgets are relative;
    ``scale`` 1 and the rest 0 when there is too little to fit)."""
    s = np.asarray(layer_sums, dtype=np.float64)
    e = np.asarray(mega_elements, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if len(m) < 3 or np.ptp(s) <= 1e-12:
        return float(max(0.0, np.mean(m - s))), 1.0, 0.0
    weight = 1.0 / np.maximum(m, 1e-9)
    coef, _ = optimize.nnls(np.stack([np.ones_like(s), s, e], axis=1) * weight[:, None], m * weight)
    if coef[1] <= 0:  # the layers must count: fall back to layers and constant alone
        coef = np.array([max(0.0, float(np.mean(m - s))), 1.0, 0.0])
    return float(coef[0]), float(coef[1]), float(coef[2])


def sample_indices(count: int, sample: int | None) -> list[int]:
    """Indices of ``sample`` evenly spaced choices out of ``count``, both ends included
    (every index when ``sample`` is ``None`` or not smaller)."""
    if sample is None or sample >= count:
        return list(range(count))
    return sorted({round(float(i)) for i in np.linspace(0, count - 1, sample)})


def interpolate_grid(ms: np.ndarray, axes: list[list[int]], grid: list[list[int]]) -> np.ndarray:
    """``ms`` filled off the timed grid: along each axis in turn, linear in that axis's widths
    between the timed indices ``grid`` (separable, so bilinear on two axes)."""
    out = np.asarray(ms, dtype=np.float64)
    for axis, (widths, timed) in enumerate(zip(axes, grid, strict=True)):
        if len(timed) == len(widths):
            continue
        x = np.asarray(widths, dtype=np.float64)
        out = np.apply_along_axis(lambda v, t=timed, x=x: np.interp(x, x[t], v[t]), axis, out)
    return out


def _calibration_configs(sn: Supernet, *, random: int) -> list[tuple[str, dict[str, int]]]:
    """Whole subnets the fit is made on: narrowest, uniform ratios, full, and ``random``
    random ones (fixed seed): mixed widths are what searches return."""
    out = [("narrowest", sn.space.min()), ("full", sn.space.max())]
    for r in CALIBRATION_RATIOS:
        cfg = sn.space.uniform(r)
        if all(cfg != c for _, c in out):
            out.insert(-1, (f"uniform {r:g}", cfg))
    rng = np.random.default_rng(0)
    for i in range(random):
        out.append((f"random {i}", sn.space.sample(rng)))
    return out


def _output_elements(
    layer: LayerLatency, choices: Mapping[str, list[int]], per_channel: int
) -> list:
    """Millions of output elements of ``layer`` at each cell of its table (the output width
    is the table's last axis)."""
    shape = [len(choices[g]) for g in layer.groups]
    widths = np.asarray(choices[layer.groups[-1]], dtype=np.float64)
    return np.broadcast_to(widths * per_channel / 1e6, shape).tolist()


def _layer_shapes(
    sn: Supernet, example: torch.Tensor
) -> tuple[dict[str, list[tuple[int, ...]]], dict[str, int]]:
    """Per slimmable layer that owns its module's output, at full width: the input shape of
    each of its calls, and its output elements per output channel (summed over calls)."""
    shapes: dict[str, list[tuple[int, ...]]] = {}
    per_channel: dict[str, int] = {}
    handles = []

    def hook(name: str, dim: int | None) -> Callable[..., None]:
        def record(_module: nn.Module, args: Any, output: torch.Tensor) -> None:
            shapes.setdefault(name, []).append(tuple(args[0].shape))
            if dim is not None:
                per_channel[name] = per_channel.get(name, 0) + output.numel() // output.shape[dim]

        return record

    was_training = sn.training
    try:
        for entry in sn.layers:
            layer, handler = entry.layer, entry.layer.handler
            # the channel dimension as tracing found it; a layer whose channels stay inside
            # its module (attention's heads) is timed on its input, its output is its child's
            if handler.owns_output or handler.output_layer(layer) is not None:
                dim = layer.out_dim if handler.owns_output else None
                handles.append(layer.module.register_forward_hook(hook(layer.name, dim)))
        with sn.active(None):
            sn.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
        sn.train(was_training)
    return shapes, per_channel


def _alone(module: nn.Module, layer: Any) -> nn.Module:
    """A copy of the layer's module to time alone: without the child that reads its inner
    channels (attention's output projection, a layer of the table itself)."""
    module = copy.deepcopy(module)
    inner = layer.handler.output_layer(layer)
    if inner is not None:
        parent, _, child = inner[0].rpartition(".")
        setattr(module.get_submodule(parent) if parent else module, child, nn.Identity())
    return module


def _input(shape: tuple[int, ...], width: int, full: int, *, dim: int) -> torch.Tensor:
    """A random input of ``shape`` with its channel dimension ``dim`` cut from ``full`` to
    ``width`` channels (a linear layer's features are channels times a per-channel factor)."""
    shape = list(shape)
    shape[dim] = shape[dim] // full * width
    return torch.randn(shape)


def _quiet(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


@torch.no_grad()
def latency_check(
    subnet: str | os.PathLike[str] | Mapping[str, Any],
    table: LatencyTable,
    *,
    seconds: float = 0.2,
    runtime: Runtime | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """The table's predicted latency of a subnet file next to its measured latency, at the
    table's batch and threads on ``runtime``'s device (which must be the table's).

    Returns:
        ``{"predicted_ms", "measured_ms", "ratio" (measured / predicted), "device",
        "threads", "batch"}``.

    Raises:
        ValueError: the table was made for another model, width space or device.
        CheckpointError: see :func:`~widthsearch.evaluate.read_subnet`.
    """
    runtime = runtime or Runtime()
    payload = (
        dict(subnet)
        if isinstance(subnet, Mapping)
        else read_subnet(subnet, trust_pickle=trust_pickle)
    )
    meta = payload["meta"]
    table.check(device=str(runtime.device), model=str(meta.get("model", "")) or None)
    with torch.random.fork_rng(devices=[]):
        sn = build_supernet(dict(meta))
    predicted = float(table.bind(sn).predict(sn.widths_vector(payload["widths"])))
    measured = measure_latency(
        runtime.module(payload["module"]),
        runtime.batch(model_input(meta, table.batch)),
        min_run_time=seconds,
        threads=table.threads,
        runtime=runtime,
    )
    return {
        "predicted_ms": round(predicted, 6),
        "measured_ms": round(measured, 6),
        "ratio": round(measured / predicted, 4) if predicted > 0 else None,
        "device": table.device,
        "threads": table.threads,
        "batch": table.batch,
    }
