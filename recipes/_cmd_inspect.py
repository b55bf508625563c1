"""`widthsearch inspect MODEL`: the groups a supernet of MODEL would have, its MACs and params;
`widthsearch inspect --all`: which of torchvision's classifiers can become a supernet."""

from __future__ import annotations

import argparse
import gc

import torch
from widthsearch.search import format_macs
from widthsearch.supernet import Supernet
from widthsearch.supernet.models import create_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show the channel groups, MACs and params of a model")
    p.add_argument("model", nargs="?", help="resnet20 | resnet32 | resnet56 | tv:NAME | timm:NAME")
    p.add_argument(
        "--all",
        action="store_true",
        help="trace every torchvision classifier instead (3 x 224 x 224 unless given): one line "
        "each, then the coverage",
    )
    p.add_argument("--in-chans", type=int, help="input channels (default 1; --all: 3)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    p.add_argument("--input-size", type=int, help="square input side (default 28; --all: 224)")
    p.add_argument("--bins", type=int, default=8, help="width steps per group (default 8)")
    p.add_argument("--min-bins", type=int, default=1, help="smallest bin (default 1)")
    p.add_argument("--round-to", type=int, default=1, help="channel multiple (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.all == bool(args.model):
        raise ValueError("give a MODEL or --all, not both")
    args.in_chans = args.in_chans or (3 if args.all else 1)
    args.input_size = args.input_size or (224 if args.all else 28)
    for flag in ("in_chans", "num_classes", "input_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.all:
        return _coverage(args)
    sn, example = _supernet(args.model, args)
    space = sn.space
    width = max(len(g.name) for g in space.groups)
    print(
        f"model {args.model}: input {tuple(example.shape[1:])}, {len(space.searchable)} "
        f"searchable groups of {len(space.groups)}"
    )
    print(f"{'group':<{width}}  {'channels':>8}  choices")
    for g in space.groups:
        choices = "fixed" if g.fixed else ", ".join(map(str, g.choices))
        if g.name in sn.frozen:  # full width where channels mix: say which op keeps it so
            choices = f"fixed: {sn.frozen[g.name]}"
        print(f"{g.name:<{width}}  {g.max_channels:>8}  {choices}")
    full, smallest = sn.macs(), sn.macs(space.min())
    params = sn.params()
    print(
        f"MACs   {full} ({format_macs(full)}); smallest subnet {smallest} ({smallest / full:.1%})"
    )
    print(f"params {params} ({format_macs(params)}); smallest subnet {sn.params(space.min())}")
    return 0


def _supernet(name: str, args: argparse.Namespace) -> tuple[Supernet, torch.Tensor]:
    model = create_model(name, num_classes=args.num_classes, in_chans=args.in_chans)
    example = torch.zeros(1, args.in_chans, args.input_size, args.input_size)
    sn = Supernet.from_model(
        model,
        example,
        bins=args.bins,
        min_bins=args.min_bins,
        round_to=args.round_to,
        meta={"model": name},
    )
    return sn, example


def _coverage(args: argparse.Namespace) -> int:
    """One line per torchvision classifier: its searchable groups, or why it is refused."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    width = max(map(len, names)) + 3
    supported = 0
    for name in names:
        try:
            sn, _ = _supernet(f"tv:{name}", args)
        except Exception as exc:  # a refusal of any kind is this line's answer
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            print(f"{'tv:' + name:<{width}}  refused   {reason}", flush=True)
        else:
            supported += 1
            space = sn.space
            frozen = f" ({len(sn.frozen)} fixed where channels mix)" if sn.frozen else ""
            print(
                f"{'tv:' + name:<{width}}  supported {len(space.searchable)} searchable groups "
                f"of {len(space.groups)}{frozen}",
                flush=True,
            )
            del sn
        gc.collect()
    share = supported / len(names) if names else 0.0
    print(f"coverage: {supported} of {len(names)} torchvision classifiers ({share:.0%})")
    return 0
