"""Seconds per epoch of the supernet trainers, relative to plain full-width training.

    .venv/bin/python benchmarks/train_overhead.py [--train-limit 2560] [--repeats 3]

resnet20 on Fashion-MNIST (a seeded subset of ``--train-limit`` training images, batch 128,
SGD), all in one process on the same data order:

- ``plain``: the unwrapped model (no supernet hooks), one forward/backward per batch;
- ``bcnet``: BCNet steps (left + right subnet of a fair pair, full width every third step);
- ``bcnet+distill``: the same with in-place distillation (one extra full-width forward on
  sampled steps);
- ``sandwich``: max + min + 2 random widths per step, distilled from the max.

Modes run interleaved in every repeat (so load changes hit all alike) and the table reports
medians; ``ratio`` is the median over ``plain``'s. A BCNet step runs two subnet passes, so its
cost depends on how large the sampled subnets are. ``analytic compute/step`` predicts the
ratio from MACs: the subnets trained per step (forward + backward, about 3 forward passes
each) plus distillation's gradient-free forward, over one full-width training pass.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.data import Subset
from widthsearch.recipes.recipe import load_recipe
from widthsearch.supernet.models import create_model
from widthsearch.supernet.sampling import FairSampler, SandwichSampler
from widthsearch.supernet.train import SupernetTrainer, build_training, epoch_loader


def plain_epoch(model: nn.Module, dataset, train, *, batch_size: int) -> float:
    """One epoch of ordinary training of ``model`` (same optimiser and data order)."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
    )
    criterion = nn.CrossEntropyLoss()
    model.train()
    loader = epoch_loader(
        dataset, epoch=1, seed=train.seed, batch_size=batch_size, workers=0, runtime=_single()
    )
    start = time.perf_counter()
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - start


def fresh_supernet(like):
    """A new supernet with ``like``'s weights (deep copies would share its slicing hooks)."""
    from widthsearch.supernet import Supernet

    model = create_model("resnet20", num_classes=10, in_chans=1)
    model.load_state_dict(like.model.state_dict())
    space = like.meta
    return Supernet.from_model(
        model,
        torch.zeros(1, 1, 28, 28),
        bins=space["bins"],
        min_bins=space["min_bins"],
        round_to=space["round_to"],
        meta=dict(like.meta),
    )


def _single():
    from widthsearch.supernet.runtime import Runtime

    return Runtime()


def macs_per_step(sn, mode: str, steps: int, train) -> float:
    """Predicted cost of a step over one full-width training step, from analytic MACs."""
    full = sn.macs()
    total = 0
    if mode.startswith("bcnet"):
        sampler = FairSampler(sn.space, seed=train.seed, full_every=train.full_every)
        for t in range(steps):
            cfg = sampler.plan(t).cfg
            total += full if cfg is None else 2 * sn.macs(cfg)
            if cfg is not None and mode.endswith("distill"):
                total += full / 3  # a forward without backward: about a third of a step
    else:
        sampler = SandwichSampler(sn.space, seed=train.seed, n_random=train.sandwich_random)
        total = sum(sn.macs(c) for t in range(steps) for c in sampler.plan(t))
    return total / steps / full


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=2560)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)

    recipe = load_recipe("quick")
    recipe.data.train_limit = args.train_limit
    recipe.data.heldout_size = 1000
    recipe.data.batch_size = args.batch_size
    splits, sn0, _ = build_training(recipe)
    plain0 = create_model("resnet20", num_classes=10, in_chans=1)
    plain0.load_state_dict(sn0.model.state_dict())
    modes = ["plain", "bcnet", "bcnet+distill", "sandwich"]

    def epoch_seconds(mode: str, dataset) -> float:
        if mode == "plain":
            model = copy.deepcopy(plain0)
            return plain_epoch(model, dataset, recipe.train, batch_size=args.batch_size)
        train = copy.deepcopy(recipe.train)
        train.trainer = "sandwich" if mode == "sandwich" else "bcnet"
        train.distill = mode == "bcnet+distill"
        trainer = SupernetTrainer(
            fresh_supernet(sn0), dataset, None, train, batch_size=args.batch_size, progress=False
        )
        return trainer.train_epoch()["seconds"]

    warmup = Subset(splits.train, range(3 * args.batch_size))
    for mode in modes:  # first calls build kernels and grow the allocator: not timed
        epoch_seconds(mode, warmup)
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    steps = len(splits.train) // args.batch_size
    for _ in range(args.repeats):  # interleaved: load changes hit every mode alike
        for mode in modes:
            seconds[mode].append(epoch_seconds(mode, splits.train))
    base = statistics.median(seconds["plain"])
    print(
        "Supernet training overhead: resnet20 / Fashion-MNIST, "
        f"{len(splits.train)} images, batch {args.batch_size}, {steps} steps/epoch, "
        f"{torch.get_num_threads()} CPU threads, median of {args.repeats}\n"
    )
    print("| trainer | s/epoch (median) | runs | ratio to plain | analytic compute/step |")
    print("|---|---:|---|---:|---:|")
    for mode in modes:
        med = statistics.median(seconds[mode])
        runs = ", ".join(f"{s:.2f}" for s in seconds[mode])
        work = 1.0 if mode == "plain" else macs_per_step(sn0, mode, steps, recipe.train)
        print(f"| {mode} | {med:.2f} | {runs} | {med / base:.2f}x | {work:.2f}x |")
    print(
        "\nCommand: .venv/bin/python benchmarks/train_overhead.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
