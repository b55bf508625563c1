"""`widthsearch inspect MODEL`: the groups a supernet of MODEL would have, its MACs and params;
`widthsearch inspect --all`: which of torchvision's classifiers and of a list of timm families
can become a supernet whose subnets are exact."""

from __future__ import annotations

import argparse
import gc

import numpy as np
import torch
from widthsearch.search import format_macs
from widthsearch.supernet import Supernet, counted_macs
from widthsearch.supernet.models import create_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show the channel groups, MACs and params of a model")
    p.add_argument("model", nargs="?", help="resnet20 | resnet32 | resnet56 | tv:NAME | timm:NAME")
    p.add_argument(
        "--all",
        action="store_true",
        help="trace every torchvision classifier and a list of timm families instead (3 x 224 x "
        "224 unless given) and check one random subnet of each: one line each, then the coverage",
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
    model = create_model(
        name, num_classes=args.num_classes, in_chans=args.in_chans, input_size=args.input_size
    )
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


# timm families checked by ``inspect --all`` after torchvision's classifiers
TIMM_FAMILIES = (
    "resnet50",
    "efficientnet_b0",
    "mobilenetv3_large_100",
    "regnety_016",
    "densenet121",
    "convnext_tiny",
    "ghostnet_100",
    "mixnet_s",
    "rexnet_100",
    "vit_tiny_patch16_224",
    "deit_small_patch16_224",
    "swin_tiny_patch4_window7_224",
)


def _coverage(args: argparse.Namespace) -> int:
    """One line per torchvision classifier and timm family: its searchable groups and whether
    a random subnet is exact, or why it is refused; then the coverage of each list."""
    import torchvision

    lists = {
        "torchvision classifiers": [
            f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models)
        ],
        "timm families": [f"timm:{n}" for n in TIMM_FAMILIES],
    }
    width = max(len(n) for names in lists.values() for n in names) + 2
    for what, names in lists.items():
        supported = 0
        for name in names:
            try:
                sn, example = _supernet(name, args)
                mismatch = _inexact(sn, example)
            except Exception as exc:  # a refusal of any kind is this line's answer
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                print(f"{name:<{width}}  refused   {reason}", flush=True)
                continue
            space = sn.space
            frozen = f", {len(sn.frozen)} fixed where channels mix" if sn.frozen else ""
            status = "supported" if not mismatch else "INEXACT  "
            supported += not mismatch
            print(
                f"{name:<{width}}  {status} {len(space.searchable)} searchable groups of "
                f"{len(space.groups)}{frozen}{mismatch}",
                flush=True,
            )
            del sn
            gc.collect()
        share = supported / len(names) if names else 0.0
        print(f"coverage: {supported} of {len(names)} {what} ({share:.0%})", flush=True)
    return 0


def _inexact(sn: Supernet, example: torch.Tensor) -> str:
    """``""`` when a random subnet (right side: the last channels of every group) extracts
    to a model of the original class that computes what the supernet computes and costs
    what the cost model says; else what differs."""
    cfg = sn.space.sample(np.random.default_rng(0))
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
    sn.eval()
    with torch.no_grad(), sn.active(cfg, "right"):
        expected = sn(x)
    sub = sn.extract(cfg, "right").eval()
    with torch.no_grad():
        got = sub(x)
    scale = max(1.0, expected.abs().max().item())
    problems = []
    if type(sub) is not type(sn.model):
        problems.append(f"extracted class {type(sub).__name__}")
    if (got - expected).abs().max().item() > 1e-5 * scale:
        problems.append("outputs differ")
    if sn.macs(cfg) != counted_macs(sub, x):
        problems.append(f"MACs {sn.macs(cfg)} != counted {counted_macs(sub, x)}")
    if sn.params(cfg) != sum(p.numel() for p in sub.parameters()):
        problems.append("params differ")
    return f": {'; '.join(problems)}" if problems else ""
