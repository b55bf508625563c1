"""Warm start: do subnets of a supernet started from a trained network beat the baselines?

    .venv/bin/python benchmarks/warmstart.py                      # all of Fashion-MNIST, hours
    .venv/bin/python benchmarks/warmstart.py --part pipeline      # one process per core:
    .venv/bin/python benchmarks/warmstart.py --part scratch       #   both write the same --out
    .venv/bin/python benchmarks/warmstart.py --smoke --out /tmp/warm-smoke   # ~2 min check

Per seed, on all of Fashion-MNIST (55,000 train / 5,000 held-out / 10,000 test), resnet20
(``--model`` another network at 28x28):

1. ``full``: the recipe's model trained plainly (``widthsearch pretrain``), the start of
   the supernet, Torch-Pruning's input and everyone's distillation teacher.
2. ``supernet``: BCNet supernet warm-started from it (importance channel order, levels
   sampling, distillation from the trained network).
3. ``search``: bisection, evolution, peel and uniform at every budget.
4. ``ft-best``: the best searched answer by supernet score at each budget, extracted with
   adaptive inheritance and fine-tuned (distilled from the trained network); ``ft-second``:
   the next best answer with other widths, ``ft-uniform``: the uniform answer, the same way;
   ``ft-trained``: the ``ft-best`` widths with the trained network's weights (L1 / BN-gamma
   top-k), the same fine-tuning.
5. ``tp``: Torch-Pruning (L1 magnitude) of the same trained network to the same budget, the
   same fine-tuning and teacher (every group loses the same share, so the MACs stop in steps
   below the budget); ``tp-taylor``: Taylor importance (|weight x gradient| per dependency
   group, gradients from 16 training batches) ranked globally, nearer the budget.
6. ``scratch``: the uniform-width network at the budget (any channel count, not only the
   supernet's bins), trained from scratch.
7. ``scratch-searched`` (``--part control``): the ``ft-best`` widths from random weights,
   trained like ``scratch``: does the search find better shapes, or only better weights?
8. ``supernet-random``, ``search-random``, ``ft-random`` (``--part random``): the BCNet
   supernet from random weights (pretraining's epochs and lr plus the warm supernet's
   epochs), searched, its best answer fine-tuned with the same teacher: the path without
   a warm start.

Every finished cell is a JSON file under ``--out/cells`` and a rerun skips it; training
resumes per epoch. ``--part`` splits the cells between processes (``pipeline``: 1-5,
``scratch``: 6, ``control``: 7, ``random``: 8) so that two cores work at once; ``latency``
times every finished row's network against the full one (params and latency ratio, batch 32,
one thread: give it the machine). The tables go to stdout and ``--out/tables.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headline import (
    Cells,
    log,
    measure,
    passive_openmp,
    random_init_subnet,
)
from warmstart_baselines import BaselineCells
from warmstart_latency import LatencyCells
from warmstart_settings import (
    UNRECORDED_DEFAULTS,
    build_recipe,
    model_meta,
    parse_args,
    random_supernet_recipe,
)
from warmstart_tables import pareto, pct
from warmstart_tables import table as table_of
from widthsearch.evaluate import (
    extract_subnet,
    finetune_subnet,
    read_subnet,
    save_subnet,
)
from widthsearch.recipes.recipe import Recipe
from widthsearch.search import (
    build_evaluator,
    resolve_budgets,
    run_search,
    scoring_data,
    search_options,
)
from widthsearch.supernet import load_weights
from widthsearch.supernet.checkpoint import (
    build_supernet,
    load_supernet,
    write_json_atomic,
    write_text_atomic,
)
from widthsearch.supernet.runtime import local_runtime
from widthsearch.supernet.train import pretrain_network, train_supernet


class Warmstart(BaselineCells, LatencyCells):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.cells = Cells(self.out)
        # the network as a supernet of random weights: costs, and networks rebuilt from widths
        self.probe = build_supernet(model_meta(self.args))
        self.full_macs = int(self.probe.macs())
        self.budgets = resolve_budgets(self.probe, list(args.budgets))

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
            if self.args.part in ("all", "random"):
                self.random_path(seed)
            if self.args.part in ("all", "latency"):
                self.latency_part(seed)

    def supernet_dir(self, seed: int, variant: str) -> Path:
        """Where the ``warm`` or ``random`` supernet of a seed, its extractions and fine-tunes
        live."""
        return self.work(seed) if variant == "warm" else self.work(seed) / variant

    def random_path(self, seed: int) -> None:
        """The supernet from random weights, searched, its best answer fine-tuned with the
        same teacher (the seed's trained network): what the warm start adds."""
        cells = self.cells
        if cells.get(f"full-s{seed}") is None:
            raise SystemExit(f"full-s{seed} has not finished: run --part pipeline first")
        recipe = random_supernet_recipe(self.args, seed)
        cells.run(
            f"supernet-random-s{seed}",
            lambda: self.supernet_cell(recipe, seed, variant="random"),
        )
        if (
            cells.run(
                f"search-random-s{seed}", lambda: self.search_cell(recipe, seed, variant="random")
            )
            is None
        ):
            return
        for frac, budget in zip(self.args.budgets, self.budgets, strict=True):
            cells.run(
                f"ft-random-{pct(frac)}-s{seed}",
                lambda b=budget, f=frac: self.finetune_cell(recipe, seed, b, f, variant="random"),
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
            for pick in ("second", "uniform"):
                if f"ft-{pick}" not in self.args.skip:
                    cells.run(
                        f"ft-{pick}-{pct(frac)}-s{seed}",
                        lambda b=budget, f=frac, p=pick: self.finetune_cell(
                            recipe, seed, b, f, pick=p
                        ),
                    )
            if "ft-trained" not in self.args.skip:
                cells.run(
                    f"ft-trained-{pct(frac)}-s{seed}",
                    lambda b=budget, f=frac: self.trained_cell(recipe, seed, b, f),
                )
            for kind, importance in (("tp", "l1"), ("tp-taylor", "taylor")):
                if kind not in self.args.skip:
                    cells.run(
                        f"{kind}-{pct(frac)}-s{seed}",
                        lambda b=budget, f=frac, i=importance: self.pruning_cell(
                            recipe, seed, b, f, importance=i
                        ),
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
        meta = model_meta(self.args)
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

    def supernet_cell(self, recipe: Recipe, seed: int, *, variant: str = "warm") -> dict[str, Any]:
        work = self.supernet_dir(seed, variant)
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
            "variant": variant,
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

    def search_cell(self, recipe: Recipe, seed: int, *, variant: str = "warm") -> dict[str, Any]:
        ckpt = self.supernet_dir(seed, variant) / "supernet.pt"
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
        return {"kind": "search", "variant": variant, "seed": seed, "results": doc["results"]}

    def finetune_cell(
        self,
        recipe: Recipe,
        seed: int,
        budget: int,
        frac: float,
        *,
        pick: str = "best",
        variant: str = "warm",
    ) -> dict[str, Any]:
        """One search answer at the budget, extracted and fine-tuned (distilled from the
        seed's trained network): ``pick`` ``"best"`` by supernet score, ``"second"`` (the
        best whose widths differ from the best's) or ``"uniform"``; from the ``warm`` or the
        ``random`` supernet."""
        search = f"search-s{seed}" if variant == "warm" else f"search-{variant}-s{seed}"
        answers = [r for r in self.cells.get(search)["results"] if int(r["budget_macs"]) == budget]
        uniform = next(r for r in answers if r["strategy"] == "uniform")
        ranked = sorted(
            (r for r in answers if r["strategy"] != "uniform"), key=lambda r: -r["score"]
        )
        chosen = {"best": ranked[0], "uniform": uniform}.get(pick)
        if pick == "second":
            chosen = next((r for r in ranked if r["widths"] != ranked[0]["widths"]), None)
            if chosen is None:
                return {"kind": "searched-second", "skipped": "every answer has the best's widths"}
        work = self.supernet_dir(seed, variant)
        ckpt = work / "supernet.pt"
        extracted = work / f"{pick}-{pct(frac)}.pt"
        tuned = work / f"{pick}-{pct(frac)}-ft.pt"
        if not extracted.is_file():
            self.extract(load_supernet(ckpt), chosen, extracted, recipe.finetune.inheritance, ckpt)
        # the warm supernet carries the trained network; the random one has none
        teacher = ckpt if variant == "warm" else self.work(seed) / "full.pt"
        self.finetune(extracted, tuned, recipe, teacher=teacher, seed=seed)
        return {
            "kind": "searched" if pick == "best" else f"searched-{pick}",
            "variant": variant,
            "seed": seed,
            "fraction": frac,
            "budget_macs": budget,
            "strategy": chosen["strategy"],
            "score": chosen["score"],
            "uniform_score": uniform["score"],
            "widths": chosen["widths"],
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
    args = parse_args(argv, description=__doc__.splitlines()[0])
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
    pareto(bench.cells, args, bench.full_macs, out / "pareto.png")
    print(table)
    return 1 if bench.cells.failed else 0


if __name__ == "__main__":
    sys.exit(main())
