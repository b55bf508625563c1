"""`widthsearch inspect MODEL`: the groups a supernet of MODEL would have, its MACs and params."""

from __future__ import annotations

import argparse

import torch
from widthsearch.search import format_macs
from widthsearch.supernet import Supernet
from widthsearch.supernet.models import create_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show the channel groups, MACs and params of a model")
    p.add_argument("model", help="resnet20 | resnet32 | resnet56 | tv:NAME | timm:NAME")
    p.add_argument("--in-chans", type=int, default=1, help="input channels (default 1)")
    p.add_argument("--num-classes", type=int, default=10, help="classifier outputs (default 10)")
    p.add_argument("--input-size", type=int, default=28, help="square input side (default 28)")
    p.add_argument("--bins", type=int, default=8, help="width steps per group (default 8)")
    p.add_argument("--min-bins", type=int, default=1, help="smallest bin (default 1)")
    p.add_argument("--round-to", type=int, default=1, help="channel multiple (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag in ("in_chans", "num_classes", "input_size"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1")
    model = create_model(args.model, num_classes=args.num_classes, in_chans=args.in_chans)
    example = torch.zeros(1, args.in_chans, args.input_size, args.input_size)
    sn = Supernet.from_model(
        model,
        example,
        bins=args.bins,
        min_bins=args.min_bins,
        round_to=args.round_to,
        meta={"model": args.model},
    )
    space = sn.space
    width = max(len(g.name) for g in space.groups)
    print(
        f"model {args.model}: input {tuple(example.shape[1:])}, {len(space.searchable)} "
        f"searchable groups of {len(space.groups)}"
    )
    print(f"{'group':<{width}}  {'channels':>8}  choices")
    for g in space.groups:
        choices = "fixed" if g.fixed else ", ".join(map(str, g.choices))
        print(f"{g.name:<{width}}  {g.max_channels:>8}  {choices}")
    full, smallest = sn.macs(), sn.macs(space.min())
    params = sn.params()
    print(
        f"MACs   {full} ({format_macs(full)}); smallest subnet {smallest} ({smallest / full:.1%})"
    )
    print(f"params {params} ({format_macs(params)}); smallest subnet {sn.params(space.min())}")
    return 0
