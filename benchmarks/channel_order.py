"""Which channel arrangement should a warm-started BCNet supernet start from?

    .venv/bin/python benchmarks/channel_order.py --init FULL.pt [--epochs 1] [--train-limit N]

For each arrangement (``ends``: most important channels at both ends, ``front``: sorted
most important first, ``none``: the trained order), the supernet is warm-started from the
same trained network and trained for ``--epochs``, and the widest uniform subnets under 10 /
25 / 50 % of the MACs are scored on the held-out split, on each BCNet side separately (BN
recalibrated), at 0 epochs (the start itself) and after training. Prints one table;
``--out`` also gets the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from widthsearch.recipes.recipe import load_recipe
from widthsearch.search import build_evaluator, get_strategy, resolve_budgets
from widthsearch.supernet.checkpoint import load_supernet, write_json_atomic
from widthsearch.supernet.train import train_supernet

ORDERS = ("ends", "front", "none")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="trained network (full.pt)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--train-limit", type=int, default=12000)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--heldout-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for order in ORDERS:
        for epochs in sorted({0, args.epochs}):
            recipe = load_recipe("resnet20-fashion-mnist")
            recipe.data.train_limit = args.train_limit
            recipe.train.init = args.init
            recipe.train.channel_order = order
            recipe.train.epochs = epochs
            recipe.train.lr = args.lr
            recipe.search.heldout_images = args.heldout_images
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                train_supernet(recipe, out_dir=tmp, progress=False, log=lambda line: None)
                seconds = time.perf_counter() - start
                sn, payload = load_supernet(Path(tmp) / "supernet.pt")
            evaluator = build_evaluator(sn, payload)
            budgets = resolve_budgets(sn, list(args.budgets))
            answers = get_strategy("uniform").search(sn, evaluator, budgets=budgets, seed=0)
            for frac, answer in zip(args.budgets, answers, strict=True):
                cfg = answer.widths
                left, right = evaluator.sides(cfg)
                rows.append(
                    {
                        "order": order,
                        "epochs": epochs,
                        "fraction": frac,
                        "macs": sn.macs(cfg) / sn.macs(),
                        "left": left,
                        "right": right,
                        "mean": (left + right) / 2,
                        "train_seconds": round(seconds, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    header = " | ".join(f"{round(100 * f)} % (left / right)" for f in args.budgets)
    print(f"\n| order | epochs | {header} |")
    print("|---|---:" + "|---:" * len(args.budgets) + "|")
    for order in ORDERS:
        for epochs in sorted({0, args.epochs}):
            cells = [
                f"{r['left']:.4f} / {r['right']:.4f}"
                for r in rows
                if r["order"] == order and r["epochs"] == epochs
            ]
            print(f"| {order} | {epochs} | " + " | ".join(cells) + " |")
    if args.out:
        write_json_atomic({"settings": vars(args), "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
