import json, sys, torch
torch.set_num_threads(1)
from widthsearch.search import build_evaluator, run_search, list_strategies
from widthsearch.supernet.checkpoint import load_supernet
sn, payload = load_supernet(sys.argv[1])
ev = build_evaluator(sn, payload, heldout_images=256, calib_batches=1, seed=0)
opts = {"evolution": {"trials": 12}, "relax": {"steps": 6}, "random": {"samples": 4}, "peel": {"moves": 2}}
doc = run_search(sn, ev, strategies=list_strategies(), budgets=[0.25, 0.5], seed=0, options=opts)
print(json.dumps([(r["strategy"], r["budget_macs"], r["widths"], round(r["score"], 6)) for r in doc["results"]]))
