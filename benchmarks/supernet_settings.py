"""Supernet settings by measurement: warm-started BCNet supernets that differ in one setting.

    .venv/bin/python benchmarks/supernet_settings.py --init FULL.pt --epochs 1 \
        --variant lr0.02:lr=0.02 --variant lr0.1:lr=0.1 --variant fe0:full_every=0 \
        --out benchmarks/results/supernet_settings

Each ``--variant NAME:KEY=VALUE[,KEY=VALUE...]`` overrides the default recipe's ``[train]``
section, trains a supernet from the same trained network for ``--epochs`` (resumable:
``OUT/NAME/supernet.pt``), then scores bisection's answer at 10 / 25 / 50 % of the full
MACs on each BCNet side (held-out split, BN recalibrated). One JSON line per variant and
budget; ``OUT/rows.jsonl`` collects them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from widthsearch.recipes.recipe import load_recipe
from widthsearch.search import build_evaluator, get_strategy, resolve_budgets
from widthsearch.supernet.checkpoint import load_supernet
from widthsearch.supernet.train import train_supernet

BUDGETS = (0.1, 0.25, 0.5)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition(":")
    pairs = [item.split("=", 1) for item in settings.split(",") if item]
    if not name or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME:KEY=VALUE[,...], got {text!r}")
    return name, dict(pairs)


def run_variant(args: argparse.Namespace, name: str, overrides: dict[str, str]) -> list[dict]:
    recipe = load_recipe("resnet20-fashion-mnist")
    recipe.train.init = args.init
    recipe.train.epochs = args.epochs
    recipe.search.heldout_images = args.heldout_images
    for key, value in overrides.items():
        current: Any = getattr(recipe.train, key)  # AttributeError names a wrong key
        setattr(recipe.train, key, type(current)(value))
    folder = Path(args.out) / name
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_supernet(
        recipe,
        out_dir=folder,
        resume=(folder / "supernet.pt").is_file(),
        progress=False,
        log=lambda line: print(name, line, flush=True),
    )
    seconds = time.perf_counter() - start
    sn, payload = load_supernet(folder / "supernet.pt")
    evaluator = build_evaluator(sn, payload)
    answers = get_strategy("bisection").search(
        sn, evaluator, budgets=resolve_budgets(sn, list(BUDGETS)), seed=0
    )
    rows = []
    for fraction, answer in zip(BUDGETS, answers, strict=True):
        left, right = evaluator.sides(answer.widths)
        rows.append(
            {
                "name": name,
                "epochs": args.epochs,
                "frac": fraction,
                "macs": round(sn.macs(answer.widths) / sn.macs(), 4),
                "left": left,
                "right": right,
                "mean": (left + right) / 2,
                "secs": round(seconds),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="trained network (full.pt)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variant", type=parse_variant, action="append", required=True)
    parser.add_argument("--heldout-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/supernet_settings")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rows.jsonl", "a") as rows:
        for name, overrides in args.variant:
            for row in run_variant(args, name, overrides):
                print(json.dumps(row), flush=True)
                rows.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
