"""Fine-tune settings by measurement: lr x distillation weight x batch size on one extracted subnet.

    .venv/bin/python benchmarks/finetune_settings.py SUBNET.pt --teacher FULL.pt \
        [--lr 0.01 0.02 0.05] [--alpha 0.0 0.5 0.9] [--batch-size 128] [--epochs 2] \
        [--train-limit N]

Every combination fine-tunes the same extracted subnet with the same data order and teacher
and is scored on the held-out split (never the test set: this picks defaults). Prints one
table, best first; ``--out`` also gets the rows as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch
from widthsearch.evaluate import finetune_subnet
from widthsearch.supernet.checkpoint import write_json_atomic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("subnet", help="an extracted subnet file")
    parser.add_argument("--teacher", required=True, help="full.pt or supernet.pt")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.01, 0.02, 0.05])
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    parser.add_argument(
        "--batch-size", type=int, nargs="+", default=[None], help="default: the recipe's"
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for lr, alpha, batch in itertools.product(args.lr, args.alpha, args.batch_size):
        with tempfile.TemporaryDirectory() as tmp:
            result = finetune_subnet(
                args.subnet,
                out=Path(tmp) / "ft.pt",
                epochs=args.epochs,
                lr=lr,
                alpha=alpha,
                batch_size=batch,
                teacher=args.teacher if alpha > 0 else None,
                train_limit=args.train_limit,
                eval_images=args.eval_images,
                progress=False,
                log=None,
            )
        history = result["finetune"]["history"]
        rows.append(
            {
                "lr": lr,
                "alpha": alpha,
                "batch_size": batch,
                "heldout_top1": history[-1]["heldout_top1"],
                "seconds": round(sum(h["seconds"] for h in history), 1),
            }
        )
        print(rows[-1], flush=True)
    rows.sort(key=lambda r: -r["heldout_top1"])
    print("\n| lr | alpha | batch | held-out top-1 | seconds |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        batch = r["batch_size"] or "recipe"
        print(f"| {r['lr']} | {r['alpha']} | {batch} | {r['heldout_top1']:.4f} | {r['seconds']} |")
    if args.out:
        write_json_atomic({"settings": vars(args), "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
