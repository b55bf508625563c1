"""`widthsearch pretrain` and `widthsearch train`: the trained network, then the supernet.

`pretrain` trains the recipe's model plainly into ``OUT/full.pt``; `train` trains the
supernet (BCNet or sandwich rule), from scratch or warm-started from a trained network
(``--init``). Flags override the recipe. Data-parallel with
``torchrun --nproc_per_node N -m widthsearch.recipes.cli train ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from widthsearch.recipes._runtime_flags import runtime_options
from widthsearch.recipes.recipe import DEFAULT_RECIPE, Recipe, check_train, load_recipe
from widthsearch.supernet import list_trainers


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "recipe",
        nargs="?",
        default=DEFAULT_RECIPE,
        help=f"shipped recipe name or path to a .toml file (default {DEFAULT_RECIPE})",
    )
    p.add_argument("--model", help="override [model].name (resnet20, tv:NAME, timm:NAME)")
    p.add_argument("--data", help="override [data].name (fashion-mnist, cifar10, synthetic, ...)")
    p.add_argument("--out", help="output folder (default runs/<recipe name>)")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="train at most N epochs now (time-limited jobs; the schedule still spans "
        "--epochs, and --resume continues)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    pre = subparsers.add_parser(
        "pretrain",
        help="train the recipe's model plainly: the start and teacher of the supernet",
        description=(
            "Train RECIPE's model at full width with its [pretrain] settings and write "
            "OUT/full.pt (weights, training state) and OUT/pretrain.jsonl. A recipe with "
            '[train] init = "pretrain" starts its supernet from OUT/full.pt. Skip this when '
            "you already have a trained network: pass it to `train --init`."
        ),
    )
    _add_common(pre)
    pre.add_argument("--epochs", type=int, help="override [pretrain].epochs")
    pre.add_argument("--seed", type=int, help="override [pretrain].seed")
    pre.add_argument("--resume", action="store_true", help="continue from OUT/full.pt (exactly)")
    pre.set_defaults(func=run_pretrain, trainer=None, init=None)

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
    _add_common(p)
    p.add_argument("--epochs", type=int, help="override [train].epochs")
    p.add_argument(
        "--trainer",
        choices=[k for k in list_trainers() if k != "plain"],
        help="override [train].trainer (budgets: slimmable training of the search budgets)",
    )
    p.add_argument("--seed", type=int, help="override [train].seed")
    p.add_argument("--resume", action="store_true", help="continue from OUT/supernet.pt (exactly)")
    p.add_argument(
        "--init",
        metavar="FILE",
        help="start from a trained network (override [train].init): a full.pt from "
        "`pretrain`, a state_dict (.pt/.pth/.bin), a .safetensors file, 'pretrain' "
        "(OUT/full.pt) or 'scratch'",
    )
    p.set_defaults(func=run)


def apply_overrides(recipe: Recipe, args: argparse.Namespace, *, stage: str = "train") -> Recipe:
    """Write the command-line overrides into ``recipe`` (validated like recipe values).

    ``--epochs`` and ``--seed`` go to the ``stage`` section (``train`` or ``pretrain``).
    """
    section = getattr(recipe, stage)
    if args.model is not None:
        recipe.model.name = args.model
    if args.data is not None:
        recipe.data.name = args.data
    if args.epochs is not None:
        if args.epochs < 0:
            raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
        section.epochs = args.epochs
    if args.seed is not None:
        section.seed = args.seed
    if args.trainer is not None:
        recipe.train.trainer = args.trainer
    if getattr(args, "init", None) is not None:
        recipe.train.init = args.init
    check_train(recipe)
    return recipe


def run_pretrain(args: argparse.Namespace) -> int:
    return _run_stage(args, "pretrain")


def run(args: argparse.Namespace) -> int:
    return _run_stage(args, "train")


def _run_stage(args: argparse.Namespace, stage: str) -> int:
    """``pretrain`` (-> OUT/full.pt) or ``train`` (-> OUT/supernet.pt) with the overrides."""
    from widthsearch.supernet.train import pretrain_network, train_supernet

    recipe = apply_overrides(load_recipe(args.recipe), args, stage=stage)
    where = runtime_options(args, recipe.run)
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    job = pretrain_network if stage == "pretrain" else train_supernet
    result = job(
        recipe,
        out_dir=out,
        resume=args.resume,
        **where,
        stop_after=args.stop_after,
        log=lambda line: print(line, flush=True),
        trust_pickle=args.trust_pickle,
    )
    if not result.is_main:
        return 0
    epochs = getattr(recipe, stage).epochs
    if result.epochs_run == 0 and args.resume:
        print(f"nothing to do: {result.checkpoint} already has {epochs} epochs")
    else:
        what = "trained network" if stage == "pretrain" else "supernet"
        print(f"{what}: {result.checkpoint}  log: {result.log}", file=sys.stdout)
    return 0
