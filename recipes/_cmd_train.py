"""`widthsearch train [RECIPE]`: train a recipe's supernet (BCNet or sandwich rule).

Flags override the recipe. Data-parallel with
``torchrun --nproc_per_node N -m widthsearch.recipes.cli train ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from widthsearch.recipes.recipe import DEFAULT_RECIPE, Recipe, load_recipe


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a slimmable supernet (BCNet fair sampling or the sandwich rule)",
        description=(
            "Train the supernet of RECIPE and write OUT/supernet.pt (weights, loss records, "
            "training state) and OUT/train.jsonl (one line per epoch). The checkpoint is "
            "rewritten atomically every epoch; --resume continues from it. Under torchrun "
            "the job is data-parallel (gloo on CPU, nccl with --device cuda)."
        ),
    )
    p.add_argument(
        "recipe",
        nargs="?",
        default=DEFAULT_RECIPE,
        help=f"shipped recipe name or path to a .toml file (default {DEFAULT_RECIPE})",
    )
    p.add_argument("--model", help="override [model].name (resnet20, tv:NAME, timm:NAME)")
    p.add_argument("--data", help="override [data].name (fashion-mnist, cifar10, synthetic, ...)")
    p.add_argument("--epochs", type=int, help="override [train].epochs")
    p.add_argument("--trainer", choices=["bcnet", "sandwich"], help="override [train].trainer")
    p.add_argument("--seed", type=int, help="override [train].seed")
    p.add_argument("--out", help="output folder (default runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/supernet.pt (exactly)")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="train at most N epochs now (time-limited jobs; the schedule still spans "
        "--epochs, and --resume continues)",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where to train (default cpu; cuda only if available)",
    )
    p.set_defaults(func=run)


def apply_overrides(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """Write the command-line overrides into ``recipe`` (validated like recipe values)."""
    if args.model is not None:
        recipe.model.name = args.model
    if args.data is not None:
        recipe.data.name = args.data
    if args.epochs is not None:
        if args.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
        recipe.train.epochs = args.epochs
    if args.trainer is not None:
        recipe.train.trainer = args.trainer
    if args.seed is not None:
        recipe.train.seed = args.seed
    return recipe


def run(args: argparse.Namespace) -> int:
    from widthsearch.supernet.train import train_supernet

    recipe = apply_overrides(load_recipe(args.recipe), args)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    result = train_supernet(
        recipe,
        out_dir=out,
        resume=args.resume,
        device=args.device,
        stop_after=args.stop_after,
        trust_pickle=args.trust_pickle,
        log=lambda line: print(line, flush=True),
    )
    if not result.is_main:
        return 0
    if result.epochs_run == 0 and args.resume:
        print(f"nothing to do: {result.checkpoint} already has {recipe.train.epochs} epochs")
    else:
        print(f"supernet: {result.checkpoint}  log: {result.log}", file=sys.stdout)
    return 0
