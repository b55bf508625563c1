"""Accelerators: images/s of every stage, peak memory, AMP's speed-up, the BCNet step's cost.

    .venv/bin/python benchmarks/accelerator.py                  # on a CUDA machine
    .venv/bin/python benchmarks/accelerator.py --device cpu --smoke   # checks it runs (CPU)

On synthetic ImageNet-shaped data (``--size`` px, 1000 classes, batches already on the
device, so the data pipeline is not measured) for ``tv:resnet50`` and ``tv:mobilenet_v2``,
each with every ``--amp`` mode, one process on one device:

- ``pretrain``: a plain training step of the network (SGD, cross-entropy), what
  ``widthsearch pretrain`` runs;
- ``supernet``: a BCNet step of its supernet (fair sampler: left + right subnet of a pair,
  full width every third step), what ``widthsearch train`` runs; ``cost`` is its time per
  step over ``pretrain``'s (goal <= 1.3x on GPUs; BCNet trains two subnets of about half
  the MACs on most steps);
- ``search``: scoring width configs with the search evaluator (BN recalibration + held-out
  pass, both sides), in images forwarded per second;
- ``finetune``: a training step of the extracted dense subnet at the supernet's middle
  widths.

Each stage runs ``--warmup`` untimed steps, then ``--steps`` timed ones between two device
synchronisations. Peak memory is the GPU's ``max_memory_allocated`` during the stage.
Multi-GPU ``torchrun`` scaling needs a machine with several GPUs; with one GPU it is
reported as not measured. Without CUDA (and no ``--device cpu``) the script says so and
exits 0. Results go to stdout and, as JSON, to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from widthsearch.search.evaluator import SubnetEvaluator
from widthsearch.supernet import Supernet, create_model
from widthsearch.supernet.runtime import Runtime, local_runtime, resolve_device
from widthsearch.supernet.sampling import FairSampler
from widthsearch.supernet.train import bcnet_step

MODELS = ["tv:resnet50", "tv:mobilenet_v2"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: a check that it runs)")
    add("--models", nargs="+", default=MODELS)
    add("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16", "fp16"])
    add("--channels-last", action="store_true", help="channels-last memory format")
    add("--batch", type=int, default=64, help="images per step")
    add("--size", type=int, default=224, help="input side in pixels")
    add("--steps", type=int, default=100, help="timed steps per stage")
    add("--warmup", type=int, default=10, help="untimed steps per stage")
    add("--search-configs", type=int, default=8, help="configs scored in the search stage")
    add("--smoke", action="store_true", help="tiny: resnet18 at 64 px, 3 steps")
    add("--out", default="benchmarks/results/accelerator.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.size, args.batch = ["tv:resnet18"], 64, 8
        args.steps, args.warmup, args.search_configs = 3, 1, 2
    return args


def _timed(runtime: Runtime, step: Callable[[int], None], *, steps: int, warmup: int) -> float:
    """Seconds per step after ``warmup`` untimed steps (device synchronised around)."""
    for i in range(warmup):
        step(i)
    runtime.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    runtime.synchronize()
    return (time.perf_counter() - start) / steps


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)


def _train_step(model: nn.Module, runtime: Runtime, x: torch.Tensor, y: torch.Tensor):
    optimizer, scaler, criterion = _sgd(model), runtime.grad_scaler(), nn.CrossEntropyLoss()

    def step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            loss = criterion(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def measure_model(name: str, runtime: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    """Every stage of one model in one precision: seconds/step, images/s, peak memory."""
    torch.manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    x = runtime.batch(torch.randn(shape))
    y = torch.randint(0, 1000, (args.batch,), device=runtime.device)
    row: dict[str, Any] = {"model": name, "amp": runtime.amp, "batch": args.batch}

    def stage(key: str, run: Callable[[], float], images_per_step: int) -> None:
        runtime.reset_peak_memory()
        seconds = run()
        row[key] = {
            "ms_per_step": round(seconds * 1e3, 3),
            "images_per_s": round(images_per_step / seconds, 1),
            "peak_mib": (
                round(runtime.peak_memory() / 2**20, 1) if runtime.peak_memory() else None
            ),
        }

    model = runtime.module(create_model(name, num_classes=1000, in_chans=3)).train()
    plain = _train_step(model, runtime, x, y)
    steps, warmup = args.steps, args.warmup
    stage("pretrain", lambda: _timed(runtime, plain, steps=steps, warmup=warmup), 1)
    row["pretrain"]["images_per_s"] = round(args.batch * 1e3 / row["pretrain"]["ms_per_step"], 1)

    sn = Supernet.from_model(
        create_model(name, num_classes=1000, in_chans=3),
        torch.zeros(1, 3, args.size, args.size),
        bins=8,
    )
    runtime.module(sn).train()
    sampler = FairSampler(sn.space, seed=0, full_every=2)
    optimizer, scaler, criterion = _sgd(sn), runtime.grad_scaler(), nn.CrossEntropyLoss()

    def supernet_step(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        plan = sampler.plan(i)
        bcnet_step(sn, x, y, plan.cfg, criterion=criterion, runtime=runtime, scaler=scaler)
        scaler.step(optimizer)
        scaler.update()

    stage(
        "supernet", lambda: _timed(runtime, supernet_step, steps=args.steps, warmup=args.warmup), 1
    )
    row["supernet"]["images_per_s"] = round(args.batch * 1e3 / row["supernet"]["ms_per_step"], 1)
    row["supernet"]["cost_vs_pretrain"] = round(
        row["supernet"]["ms_per_step"] / row["pretrain"]["ms_per_step"], 3
    )

    sn.eval()
    heldout = torch.randn(2 * args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 1000, (2 * args.batch,))
    evaluator = SubnetEvaluator(
        sn, heldout, labels, heldout[: args.batch], batch_size=args.batch, runtime=runtime
    )
    rng = np.random.default_rng(0)
    configs = [sn.space.sample(rng) for _ in range(args.search_configs + 1)]

    def search() -> float:
        evaluator.score(configs[0])  # warm-up
        runtime.synchronize()
        start = time.perf_counter()
        for cfg in configs[1:]:
            evaluator.score(cfg)
        return (time.perf_counter() - start) / (len(configs) - 1)

    per_config = (evaluator.num_calib + evaluator.num_images) * len(evaluator.side_names)
    stage("search", search, per_config)
    row["search"]["images_per_s"] = round(per_config * 1e3 / row["search"]["ms_per_step"], 1)
    row["search"]["ms_per_config"] = row["search"].pop("ms_per_step")

    middle = sn.space.uniform(0.5)
    subnet = runtime.module(sn.extract(middle, side="left")).train()
    tune = _train_step(subnet, runtime, x, y)
    stage("finetune", lambda: _timed(runtime, tune, steps=steps, warmup=warmup), 1)
    row["finetune"]["images_per_s"] = round(args.batch * 1e3 / row["finetune"]["ms_per_step"], 1)
    row["finetune"]["macs_fraction"] = round(sn.macs(middle) / sn.macs(), 3)
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    head = "| model | amp | stage | ms/step | images/s | peak MiB | note |"
    lines = [head, "|" + "---|" * 7]
    for row in rows:
        for stage in ("pretrain", "supernet", "search", "finetune"):
            r = row[stage]
            ms = r.get("ms_per_step", r.get("ms_per_config"))
            note = ""
            if stage == "supernet":
                note = f"{r['cost_vs_pretrain']:.2f}x pretrain step"
            elif stage == "search":
                note = "ms per config (both sides)"
            elif stage == "finetune":
                note = f"subnet at {r['macs_fraction']:.0%} MACs"
            peak = "" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
            lines.append(
                f"| {row['model']} | {row['amp']} | {stage} | {ms:.1f} | "
                f"{r['images_per_s']:.0f} | {peak} | {note} |"
            )
    return "\n".join(lines)


def amp_speedups(rows: list[dict[str, Any]]) -> list[str]:
    """``model stage: amp X is N.NNx faster than off`` lines."""
    lines = []
    base = {(r["model"]): r for r in rows if r["amp"] == "off"}
    for row in rows:
        ref = base.get(row["model"])
        if row["amp"] == "off" or ref is None:
            continue
        for stage in ("pretrain", "supernet", "finetune"):
            ratio = ref[stage]["ms_per_step"] / row[stage]["ms_per_step"]
            lines.append(f"{row['model']} {stage}: amp {row['amp']} {ratio:.2f}x the speed of off")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device != "cpu" and not torch.cuda.is_available():
        print("accelerator benchmark: no CUDA device on this machine, nothing measured")
        return 0
    device = resolve_device(args.device)
    rows = []
    for name in args.models:
        for amp in args.amp:
            runtime = local_runtime(device, amp=amp, channels_last=args.channels_last)
            print(f"measuring {name}, {runtime.describe()} ...", file=sys.stderr, flush=True)
            rows.append(measure_model(name, runtime, args))
    setup = {
        "device": local_runtime(device).describe(),
        "torch": torch.__version__,
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "channels_last": args.channels_last,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torchrun": "not measured: one GPU"
        if torch.cuda.device_count() < 2
        else "not measured: run under torchrun",
        "command": " ".join(["benchmarks/accelerator.py", *(argv or sys.argv[1:])]),
    }
    doc = {"setup": setup, "rows": rows}
    print(format_table(rows))
    for line in amp_speedups(rows):
        print(line)
    costs = [r["supernet"]["cost_vs_pretrain"] for r in rows]
    print(f"BCNet step / plain step: median {statistics.median(costs):.2f}x over {len(costs)} runs")
    print(f"torchrun on several GPUs: {setup['torchrun']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
