"""Inherit from the trained network instead of the supernet: same widths, other weights.

    .venv/bin/python benchmarks/inherit_trained.py --seed 0 --budgets 0.25 0.5

For the best searched widths of a finished ``benchmarks/warmstart.py`` seed, extract the
subnet twice: from the warm supernet (the benchmark's ``ft-best`` cell, read back) and from
the trained network the supernet started from, keeping each group's channels by L1 norm or
BN gamma (the better by held-out score, as ``extract`` chooses), then fine-tune the latter
exactly like the former (2 epochs, distilled from the trained network) and measure it on
the test split. Prints one row per budget; ``--out`` also gets them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cells import measure
from widthsearch.evaluate import extract_subnet, finetune_subnet
from widthsearch.search import scoring_data
from widthsearch.supernet import load_weights
from widthsearch.supernet.checkpoint import build_supernet, load_supernet, write_json_atomic

CELLS = Path("benchmarks/results/warmstart/cells")
WORK = Path("benchmarks/results/warmstart/work")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="JSON file for the rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = WORK / f"s{args.seed}"
    ckpt = work / "supernet.pt"
    sn, payload = load_supernet(ckpt)
    trained = build_supernet(dict(sn.meta))  # same space, the trained network's weights
    load_weights(trained.model, payload["teacher_state_dict"], where=str(ckpt))
    trained.eval()
    data = scoring_data(payload, sn.meta, where="extract")
    rows = []
    for frac in args.budgets:
        tag = f"{round(100 * frac)}"
        cell = json.loads((CELLS / f"ft-best-{tag}-s{args.seed}.json").read_text())
        extracted = work / f"trained-{tag}.pt"
        tuned = work / f"trained-{tag}-ft.pt"
        choice = extract_subnet(
            (trained, payload),
            widths=cell["widths"],
            strategy=cell["strategy"],
            budget=cell["budget_macs"],
            out=extracted,
            candidates=["l1", "bn"],
            data=data,
            supernet_path=str(ckpt),
            progress=False,
            log=None,
        )
        finetune_subnet(
            extracted,
            out=tuned,
            epochs=args.epochs,
            teacher=ckpt,
            seed=args.seed,
            eval_images=0,
            progress=False,
            log=None,
        )
        figures = measure(tuned, latency=False)
        rows.append(
            {
                "fraction": frac,
                "strategy": cell["strategy"],
                "macs": figures["macs"],
                "from_supernet_top1": cell["top1"],
                "from_trained_top1": figures["top1"],
                "inheritance": choice.get("inheritance") if isinstance(choice, dict) else None,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        write_json_atomic({"settings": vars(args), "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
