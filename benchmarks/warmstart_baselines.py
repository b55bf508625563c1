"""The warm-start benchmark's baseline cells (``benchmarks/warmstart.py``): Torch-Pruning of
the trained network, and networks trained from random weights (uniform widths, and the
searched widths as a control). A mixin of :class:`warmstart.Warmstart`, which provides
``args``, ``cells``, ``budgets``, ``work`` and ``finetune``."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any

import torch
from baselines import any_width
from headline import measure, prune_to_budget, random_init_subnet, train_from_scratch
from warmstart_settings import TAYLOR_BATCHES, build_recipe, model_meta
from warmstart_tables import pct
from widthsearch.evaluate import read_subnet, save_subnet
from widthsearch.recipes.recipe import Recipe
from widthsearch.supernet import Supernet, create_model, load_weights, read_state_dict
from widthsearch.supernet.checkpoint import build_supernet
from widthsearch.supernet.data import get_data


class BaselineCells:
    @functools.cached_property
    def any_width_probe(self) -> Supernet:
        """The network as a supernet of random weights where every channel count is a valid
        width (uniform widths from scratch, Torch-Pruning's widths)."""
        return build_supernet(any_width(model_meta(self.args)))

    def pruning_cell(
        self, recipe: Recipe, seed: int, budget: int, frac: float, *, importance: str = "l1"
    ) -> dict[str, Any]:
        pruned_path = self.pruned_file(recipe, seed, budget, frac, importance=importance)
        tuned = pruned_path.with_name(pruned_path.stem + "-ft.pt")
        self.finetune(pruned_path, tuned, recipe, teacher=self.work(seed) / "full.pt", seed=seed)
        return {
            "kind": "torch-pruning",
            "importance": importance,
            "seed": seed,
            "fraction": frac,
            "budget_macs": budget,
            "widths": read_subnet(pruned_path)["widths"],
            **measure(tuned, latency=False),
        }

    def pruned_file(
        self, recipe: Recipe, seed: int, budget: int, frac: float, *, importance: str
    ) -> Path:
        """The seed's trained network pruned by Torch-Pruning to the budget (before
        fine-tuning), made once: ``work/tp[-IMPORTANCE]-PCT.pt``."""
        work = self.work(seed)
        name = "tp" if importance == "l1" else f"tp-{importance}"
        pruned_path = work / f"{name}-{pct(frac)}.pt"
        if not pruned_path.is_file():
            meta = model_meta(self.args)
            trained = create_model(self.args.model, num_classes=10, in_chans=1)
            load_weights(trained, read_state_dict(work / "full.pt"), where=str(work / "full.pt"))
            pruned = prune_to_budget(
                trained,
                meta,
                budget,
                importance=importance,
                batches=self.training_batches(recipe, seed) if importance == "taylor" else (),
                global_ranking=importance == "taylor",
            )
            if not pruned["verified"]:
                raise RuntimeError("pruned channels do not map onto the supernet's groups")
            doc = random_init_subnet(
                pruned["meta"], pruned["widths"], recipe, seed=seed, label="torch-pruning"
            )
            doc["module"] = pruned["module"]
            doc["inheritance"] = {"chosen": f"torch-pruning-{importance}", "ratio": pruned["ratio"]}
            save_subnet(doc, pruned_path)
        return pruned_path

    def training_batches(self, recipe: Recipe, seed: int) -> list[tuple[torch.Tensor, ...]]:
        """``TAYLOR_BATCHES`` seeded batches of the training split (Taylor importance)."""
        d = recipe.data
        splits = get_data(
            d.name, heldout_size=d.heldout_size, seed=d.seed, train_limit=d.train_limit or None
        )
        loader = torch.utils.data.DataLoader(
            splits.train,
            batch_size=d.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        return list(itertools.islice(loader, TAYLOR_BATCHES))

    def scratch_cell(self, budget: int, frac: float, seed: int) -> dict[str, Any]:
        """The uniform-width network closest below the budget, any channel count."""
        recipe = build_recipe(self.args, seed)
        sn = self.any_width_probe
        lo, hi = 0.01, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sn.macs(sn.space.uniform(mid)) <= budget else (lo, mid)
        widths, name = sn.space.uniform(lo), f"scratch-{pct(frac)}"
        tuned = self.from_scratch(name, sn.meta, widths, recipe, seed=seed, label="scratch")
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
        meta = model_meta(self.args)
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
