"""Warm start: do subnets of a supernet started from a trained network beat the baselines?

    .venv/bin/python benchmarks/warmstart.py                      # all of Fashion-MNIST, hours
    .venv/bin/python benchmarks/warmstart.py --part pipeline      # one process per core:
    .venv/bin/python benchmarks/warmstart.py --part scratch       #   both write the same --out
    .venv/bin/python benchmarks/warmstart.py --smoke --out /tmp/warm-smoke   # ~2 min check

Per seed, on all of Fashion-MNIST (55,000 train / 5,000 held-out / 10,000 test), resnet20:

1. ``full``: the recipe's model trained plainly (``widthsearch pretrain``), the start of
   the supernet, Torch-Pruning's input and everyone's distillation teacher.
2. ``supernet``: BCNet supernet warm-started from it (importance channel order, levels
   sampling, distillation from the trained network).
3. ``search``: bisection, evolution, peel and uniform at every budget.
4. ``ft-best``: the best searched answer by supernet score at each budget, extracted with
   adaptive inheritance and fine-tuned (distilled from the trained network);
   ``ft-trained``: the same widths with the trained network's weights (L1 / BN-gamma top-k),
   the same fine-tuning.
5. ``tp``: Torch-Pruning (L1 magnitude) of the same trained network to the same budget, the
   same fine-tuning and teacher.
6. ``scratch``: the uniform-width network at the budget (any channel count, not only the
   supernet's bins), trained from scratch.
7. ``scratch-searched`` (``--part control``): the ``ft-best`` widths from random weights,
   trained like ``scratch``: does the search find better shapes, or only better weights?

Every finished cell is a JSON file under ``--out/cells`` and a rerun skips it; training
resumes per epoch. ``--part`` splits the cells between processes (``pipeline``: 1-5,
``scratch``: 6) so that two cores work at once. The table goes to stdout and
``--out/tables.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headline import (
    Cells,
    log,
    measure,
    passive_openmp,
    prune_to_budget,
    random_init_subnet,
    train_from_scratch,
)
from warmstart_tables import pct
from warmstart_tables import table as table_of
from widthsearch.evaluate import (
    extract_subnet,
    finetune_subnet,
    read_subnet,
    save_subnet,
)
from widthsearch.recipes.recipe import Recipe, load_recipe
from widthsearch.search import (
    build_evaluator,
    resolve_budgets,
    run_search,
    scoring_data,
    search_options,
)
from widthsearch.supernet import create_model, load_weights, read_state_dict
from widthsearch.supernet.checkpoint import (
    build_supernet,
    load_supernet,
    write_json_atomic,
    write_text_atomic,
)
from widthsearch.supernet.runtime import local_runtime
from widthsearch.supernet.train import pretrain_network, train_supernet

STRATEGIES = ["bisection", "evolution", "peel", "uniform"]
META = {"model": "resnet20", "num_classes": 10, "in_chans": 1, "input_size": 28}

# fine-tuning of every compressed network (not of the from-scratch baselines); not stored in
# settings.json at these values, so cells made before the options existed stay valid
FINETUNE_DEFAULTS = {"finetune_lr": 0.02, "finetune_alpha": 0.5}
UNRECORDED_DEFAULTS = {
    **FINETUNE_DEFAULTS,
    "importance": "gamma",
    "inplace": False,
    "trainer": "bcnet",
    "strategies": STRATEGIES,
}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "train_limit": 0,
        "test_limit": 0,
        "pretrain_epochs": 8,
        "supernet_epochs": 4,
        "supernet_lr": 0.02,
        "finetune_epochs": 2,
        "scratch_epochs": 10,
        "trials": 100,
        "heldout_images": 2000,
        "calib_batches": 4,
    },
    "smoke": {
        "train_limit": 1000,
        "test_limit": 500,
        "pretrain_epochs": 1,
        "supernet_epochs": 1,
        "supernet_lr": 0.02,
        "finetune_epochs": 1,
        "scratch_epochs": 1,
        "trials": 8,
        "heldout_images": 250,
        "calib_batches": 1,
    },
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--smoke", action="store_true", help="tiny preset, a couple of minutes")
    add("--out", default="benchmarks/results/warmstart", help="cells, tables, checkpoints")
    add("--part", choices=["all", "pipeline", "scratch", "control"], default="all")
    add("--report", action="store_true", help="only print the table of the finished cells")
    add("--seeds", type=int, nargs="+", default=[0, 1])
    add("--budgets", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    add("--threads", type=int, default=1, help="torch threads")
    add("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    add("--skip", nargs="*", default=[], choices=["ft-trained", "tp"], help="cells not to run")
    add("--widths-seed", type=int, help="control cells train this seed's searched widths")
    add("--channel-order", default="ends", choices=["ends", "front", "none"])
    add("--importance", default="gamma", choices=["gamma", "taylor"], help="channel importance")
    add("--trainer", default="bcnet", choices=["bcnet", "budgets"], help="supernet trainer kind")
    add("--strategies", nargs="+", default=STRATEGIES, help="search strategies")
    add(
        "--inplace",
        action="store_true",
        help="budgets trainer: train the full width too; subnets and fine-tunes distil from it",
    )
    add("--finetune-lr", type=float, default=FINETUNE_DEFAULTS["finetune_lr"])
    add("--finetune-alpha", type=float, default=FINETUNE_DEFAULTS["finetune_alpha"])
    for key, value in PRESETS["default"].items():
        add(f"--{key.replace('_', '-')}", type=type(value))
    args = parser.parse_args(argv)
    for key, value in PRESETS["smoke" if args.smoke else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build_recipe(args: argparse.Namespace, seed: int) -> Recipe:
    recipe = load_recipe("resnet20-fashion-mnist")
    recipe.data.train_limit = args.train_limit
    recipe.data.test_limit = args.test_limit
    recipe.pretrain.epochs = args.pretrain_epochs
    recipe.pretrain.seed = seed
    recipe.train.init = "pretrain"
    recipe.train.channel_order = args.channel_order
    recipe.train.trainer = args.trainer
    recipe.train.importance = args.importance
    recipe.train.epochs = args.supernet_epochs
    recipe.train.lr = args.supernet_lr
    recipe.train.distill = bool(args.inplace)
    recipe.train.seed = seed
    recipe.search.strategies = list(args.strategies)
    recipe.search.budgets = list(args.budgets)
    recipe.search.evolution_trials = args.trials
    recipe.search.heldout_images = args.heldout_images
    recipe.search.calib_batches = args.calib_batches
    recipe.finetune.epochs = args.finetune_epochs
    return recipe


class Warmstart:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.cells = Cells(self.out)
        probe = build_supernet({**META, "bins": 8, "min_bins": 1, "round_to": 1})
        self.full_macs = int(probe.macs())
        self.budgets = resolve_budgets(probe, list(args.budgets))

    def work(self, seed: int) -> Path:
        return self.out / "work" / f"s{seed}"

    def run(self) -> None:
        for seed in self.args.seeds:
            if self.args.part in ("all", "pipeline"):
                self.pipeline(seed)
            if self.args.part in ("all", "scratch"):
                for frac, budget in zip(self.args.budgets, self.budgets, strict=True):
                    self.cells.run(
                        f"scratch-{pct(frac)}-s{seed}",
                        lambda b=budget, f=frac, s=seed: self.scratch_cell(b, f, s),
                    )
            if self.args.part in ("all", "control"):
                for frac, budget in zip(self.args.budgets, self.budgets, strict=True):
                    self.cells.run(
                        f"scratch-searched-{pct(frac)}-s{seed}",
                        lambda b=budget, f=frac, s=seed: self.searched_scratch_cell(b, f, s),
                    )

    def pipeline(self, seed: int) -> None:
        recipe, cells = build_recipe(self.args, seed), self.cells
        cells.run(f"full-s{seed}", lambda: self.full_cell(recipe, seed))
        cells.run(f"supernet-s{seed}", lambda: self.supernet_cell(recipe, seed))
        if cells.run(f"search-s{seed}", lambda: self.search_cell(recipe, seed)) is None:
            return
        for frac, budget in zip(self.args.budgets, self.budgets, strict=True):
            cells.run(
                f"ft-best-{pct(frac)}-s{seed}",
                lambda b=budget, f=frac: self.finetune_cell(recipe, seed, b, f),
            )
            if "ft-trained" not in self.args.skip:
                cells.run(
                    f"ft-trained-{pct(frac)}-s{seed}",
                    lambda b=budget, f=frac: self.trained_cell(recipe, seed, b, f),
                )
            if "tp" not in self.args.skip:
                cells.run(
                    f"tp-{pct(frac)}-s{seed}",
                    lambda b=budget, f=frac: self.pruning_cell(recipe, seed, b, f),
                )

    # -- cells -----------------------------------------------------------------------------
    def full_cell(self, recipe: Recipe, seed: int) -> dict[str, Any]:
        work = self.work(seed)
        result = pretrain_network(
            recipe,
            out_dir=work,
            resume=(work / "full.pt").is_file(),
            device=self.args.device,
            progress=False,
            log=lambda line: log(f"  pretrain s{seed}: {line}"),
        )
        # the trained network as a subnet file (full widths), so `measure` can score it
        meta = {**META, "bins": 8, "min_bins": 1, "round_to": 1}
        doc = random_init_subnet(
            meta, build_supernet(meta).space.max(), recipe, seed=seed, label="full"
        )
        state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
        doc["module"].load_state_dict(state["state_dict"])
        as_subnet = work / "full-subnet.pt"
        save_subnet(doc, as_subnet)
        seconds = [float(h["seconds"]) for h in result.history]
        return {
            "kind": "full",
            "seed": seed,
            "epochs": recipe.pretrain.epochs,
            "train_seconds": round(sum(seconds), 1),
            "history": result.history,
            **measure(as_subnet, latency=False),
        }

    def supernet_cell(self, recipe: Recipe, seed: int) -> dict[str, Any]:
        work = self.work(seed)
        result = train_supernet(
            recipe,
            out_dir=work,
            resume=(work / "supernet.pt").is_file(),
            device=self.args.device,
            progress=False,
            log=lambda line: log(f"  supernet s{seed}: {line}"),
        )
        hist = [sum(x) for x in zip(*(h["macs_hist"] for h in result.history), strict=True)]
        return {
            "kind": "supernet",
            "seed": seed,
            "epochs": recipe.train.epochs,
            "lr": recipe.train.lr,
            "channel_order": recipe.train.channel_order,
            "trainer": recipe.train.trainer,
            "importance": recipe.train.importance,
            "train_seconds": round(sum(float(h["seconds"]) for h in result.history), 1),
            "macs_hist": hist,
            "history": result.history,
        }

    def search_cell(self, recipe: Recipe, seed: int) -> dict[str, Any]:
        ckpt = self.work(seed) / "supernet.pt"
        sn, payload = load_supernet(ckpt)
        settings = recipe.to_dict()["search"]
        strategies = list(recipe.search.strategies)
        doc = run_search(
            sn,
            build_evaluator(sn, payload, runtime=local_runtime(self.args.device)),
            strategies=strategies,
            budgets=self.budgets,
            seed=recipe.search.seed,
            options=search_options(settings, strategies, payload.get("loss_records")),
            supernet_path=str(ckpt),
        )
        return {"kind": "search", "seed": seed, "results": doc["results"]}

    def finetune_cell(self, recipe: Recipe, seed: int, budget: int, frac: float) -> dict[str, Any]:
        search = self.cells.get(f"search-s{seed}")
        candidates = [
            r
            for r in search["results"]
            if int(r["budget_macs"]) == budget and r["strategy"] != "uniform"
        ]
        best = max(candidates, key=lambda r: r["score"])
        uniform = next(
            r
            for r in search["results"]
            if int(r["budget_macs"]) == budget and r["strategy"] == "uniform"
        )
        work = self.work(seed)
        ckpt = work / "supernet.pt"
        extracted = work / f"best-{pct(frac)}.pt"
        tuned = work / f"best-{pct(frac)}-ft.pt"
        if not extracted.is_file():
            self.extract(load_supernet(ckpt), best, extracted, recipe.finetune.inheritance, ckpt)
        self.finetune(extracted, tuned, recipe, teacher=ckpt, seed=seed)
        return {
            "kind": "searched",
            "seed": seed,
            "fraction": frac,
            "budget_macs": budget,
            "strategy": best["strategy"],
            "score": best["score"],
            "uniform_score": uniform["score"],
            "widths": best["widths"],
            "inheritance": read_subnet(tuned).get("inheritance"),
            **measure(tuned, latency=False),
        }

    def trained_cell(self, recipe: Recipe, seed: int, budget: int, frac: float) -> dict[str, Any]:
        """The ``ft-best`` widths, inherited from the trained network instead of the supernet
        (each group's channels by L1 norm or BN gamma, the better by held-out score), then
        the same fine-tuning: do the supernet's weights matter, or only its widths?"""
        best = self.cells.get(f"ft-best-{pct(frac)}-s{seed}")
        if best is None:
            raise RuntimeError(f"ft-best-{pct(frac)}-s{seed} has not finished")
        work = self.work(seed)
        ckpt = work / "supernet.pt"
        extracted, tuned = work / f"trained-{pct(frac)}.pt", work / f"trained-{pct(frac)}-ft.pt"
        if not extracted.is_file():
            sn, payload = load_supernet(ckpt)
            trained = build_supernet(dict(sn.meta))  # same space, the trained weights
            load_weights(trained.model, payload["teacher_state_dict"], where=str(ckpt))
            self.extract((trained.eval(), payload), best, extracted, ["l1", "bn"], ckpt)
        self.finetune(extracted, tuned, recipe, teacher=ckpt, seed=seed)
        return {
            "kind": "searched-trained-weights",
            "seed": seed,
            "fraction": frac,
            "budget_macs": budget,
            "strategy": best["strategy"],
            "widths": best["widths"],
            "inheritance": read_subnet(tuned).get("inheritance"),
            **measure(tuned, latency=False),
        }

    def pruning_cell(self, recipe: Recipe, seed: int, budget: int, frac: float) -> dict[str, Any]:
        work = self.work(seed)
        pruned_path, tuned = work / f"tp-{pct(frac)}.pt", work / f"tp-{pct(frac)}-ft.pt"
        if not pruned_path.is_file():
            meta = {**META, "bins": 8, "min_bins": 1, "round_to": 1}
            trained = create_model(META["model"], num_classes=10, in_chans=1)
            load_weights(trained, read_state_dict(work / "full.pt"), where=str(work / "full.pt"))
            pruned = prune_to_budget(trained, meta, budget)
            if not pruned["verified"]:
                raise RuntimeError("pruned channels do not map onto the supernet's groups")
            doc = random_init_subnet(
                pruned["meta"], pruned["widths"], recipe, seed=seed, label="torch-pruning"
            )
            doc["module"] = pruned["module"]
            doc["inheritance"] = {"chosen": "torch-pruning-l1", "ratio": pruned["ratio"]}
            save_subnet(doc, pruned_path)
        self.finetune(pruned_path, tuned, recipe, teacher=work / "full.pt", seed=seed)
        return {
            "kind": "torch-pruning",
            "seed": seed,
            "fraction": frac,
            "budget_macs": budget,
            **measure(tuned, latency=False),
        }

    def scratch_cell(self, budget: int, frac: float, seed: int) -> dict[str, Any]:
        """The uniform-width resnet20 closest below the budget, any channel count."""
        recipe = build_recipe(self.args, seed)
        meta = {**META, "bins": 64, "min_bins": 1, "round_to": 1}
        sn = build_supernet(meta)
        lo, hi = 0.01, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sn.macs(sn.space.uniform(mid)) <= budget else (lo, mid)
        tuned = self.from_scratch(
            f"scratch-{pct(frac)}", meta, sn.space.uniform(lo), recipe, seed=seed, label="scratch"
        )
        return {
            "kind": "scratch",
            "seed": seed,
            "fraction": frac,
            "budget_macs": budget,
            "ratio": lo,
            "epochs": self.args.scratch_epochs,
            **measure(tuned, latency=False),
        }

    def searched_scratch_cell(self, budget: int, frac: float, seed: int) -> dict[str, Any]:
        """Control: the ``ft-best`` widths from random weights, trained like ``scratch``. Above
        the uniform widths, the search finds better shapes; below, only its weights help."""
        source = seed if self.args.widths_seed is None else self.args.widths_seed
        best = self.cells.get(f"ft-best-{pct(frac)}-s{source}")
        if best is None:
            raise RuntimeError(f"ft-best-{pct(frac)}-s{source} has not finished")
        meta = {**META, "bins": 8, "min_bins": 1, "round_to": 1}
        recipe = build_recipe(self.args, seed)
        tuned = self.from_scratch(
            f"scratch-searched-{pct(frac)}", meta, best["widths"], recipe, seed=seed, label="ctl"
        )
        return {
            "kind": "scratch-searched",
            "seed": seed,
            "widths_seed": source,
            "fraction": frac,
            "budget_macs": budget,
            "strategy": best["strategy"],
            "widths": best["widths"],
            "epochs": self.args.scratch_epochs,
            **measure(tuned, latency=False),
        }

    def from_scratch(
        self, name: str, meta: dict[str, Any], widths, recipe: Recipe, *, seed: int, label: str
    ) -> Path:
        """``widths`` from random initialisation trained ``--scratch-epochs`` at lr 0.1 (no
        teacher), resumable: the trained subnet file ``work/NAME.pt``."""
        work = self.work(seed)
        init, tuned = work / f"{name}-init.pt", work / f"{name}.pt"
        if not init.is_file():
            doc = random_init_subnet(meta, widths, recipe, seed=1000 + seed, label=label)
            save_subnet(doc, init)
        train_from_scratch(
            init, tuned, epochs=self.args.scratch_epochs, lr=0.1, seed=seed, eval_images=0
        )
        return tuned

    def extract(
        self, source: tuple, result: dict[str, Any], out: Path, candidates: list[str], ckpt: Path
    ) -> None:
        """Extract ``result``'s widths from ``(supernet, payload)`` (read from ``ckpt``) with
        the best of the inheritance ``candidates``."""
        sn, payload = source
        extract_subnet(
            source,
            widths=result["widths"],
            strategy=result["strategy"],
            budget=int(result["budget_macs"]),
            out=out,
            candidates=candidates,
            data=scoring_data(payload, sn.meta, where="extract"),
            supernet_path=str(ckpt),
            progress=False,
            device=self.args.device,
        )

    def finetune(self, subnet: Path, out: Path, recipe: Recipe, *, teacher: Path, seed: int):
        if out.is_file():
            return
        finetune_subnet(
            subnet,
            out=out,
            epochs=recipe.finetune.epochs,
            lr=self.args.finetune_lr,
            alpha=self.args.finetune_alpha,
            weight_decay=recipe.finetune.weight_decay,
            teacher=teacher,
            seed=seed,
            eval_images=0,
            resume=out.with_name(out.stem + ".ckpt.pt").is_file(),
            progress=False,
            log=lambda line: log(f"  {out.stem}: {line}"),
            device=self.args.device,
        )


def main(argv: list[str] | None = None) -> int:
    passive_openmp()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    bench = Warmstart(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    local = ("part", "threads", "report", "device", "skip", "widths_seed")  # not what is run
    settings = {k: v for k, v in vars(args).items() if k not in local}
    for key, default in UNRECORDED_DEFAULTS.items():
        if settings[key] == default:
            del settings[key]
    path = out / "settings.json"
    if path.is_file():  # seeds may be added later; anything else would mix settings
        saved = json.loads(path.read_text())
        if {**saved, "seeds": None} != {**settings, "seeds": None}:
            sys.exit(f"{out} holds cells made with other settings; use another --out")
    if not args.report:  # a report only reads
        write_json_atomic(settings, path)
        bench.run()
    table = table_of(bench.cells, args, bench.full_macs)
    write_text_atomic(table, out / "tables.md")
    print(table)
    return 1 if bench.cells.failed else 0


if __name__ == "__main__":
    sys.exit(main())
