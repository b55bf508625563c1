"""Every strategy's answers on one supernet, as JSON (for before/after comparisons).

.venv/bin/python benchmarks/results/refactor_check/answers.py SUPERNET.pt
"""

import json
import sys

import torch
from widthsearch.search import build_evaluator, list_strategies, run_search
from widthsearch.supernet.checkpoint import load_supernet

OPTIONS = {
    "evolution": {"trials": 12},
    "relax": {"steps": 6},
    "random": {"samples": 4},
    "peel": {"moves": 2},
}


def main() -> None:
    torch.set_num_threads(1)
    sn, payload = load_supernet(sys.argv[1])
    ev = build_evaluator(sn, payload, heldout_images=256, calib_batches=1, seed=0)
    doc = run_search(
        sn, ev, strategies=list_strategies(), budgets=[0.25, 0.5], seed=0, options=OPTIONS
    )
    rows = [
        (r["strategy"], r["budget_macs"], r["widths"], round(r["score"], 6)) for r in doc["results"]
    ]
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
