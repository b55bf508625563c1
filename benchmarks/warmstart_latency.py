"""The warm-start benchmark's size and speed cells (``--part latency``): every finished row's
network, rebuilt from its widths (weights do not change timing), timed against the full
network in the same cell: batch ``BATCH``, one thread, the fastest of ``ROUNDS`` rounds over
the pair (a burst of load elsewhere then slows a round, not the figure). A mixin of
:class:`warmstart.Warmstart`, like :class:`warmstart_baselines.BaselineCells`."""

from __future__ import annotations

from typing import Any

import torch
from warmstart_settings import build_recipe
from warmstart_tables import ROWS, pct
from widthsearch.evaluate import read_subnet
from widthsearch.evaluate.measure import measure_latency
from widthsearch.supernet import Supernet

BATCH = 32
ROUNDS = 3
PRUNING = {"tp": "l1", "tp-taylor": "taylor"}


class LatencyCells:
    def latency_part(self, seed: int) -> None:
        """Every finished row's network timed against the full network (size and speed)."""
        for frac, budget in zip(self.args.budgets, self.budgets, strict=True):
            for _, prefix in ROWS[1:]:
                row = self.cells.get(f"{prefix}-{pct(frac)}-s{seed}")
                if row is not None and "top1" in row:  # not a skipped cell
                    self.cells.run(
                        f"latency-{prefix}-{pct(frac)}-s{seed}",
                        lambda p=prefix, f=frac, b=budget: self.latency_cell(p, f, b, seed),
                    )

    def latency_cell(self, prefix: str, frac: float, budget: int, seed: int) -> dict[str, Any]:
        sn, widths = self.row_widths(prefix, frac, budget, seed)
        cfg = sn.space.validate(widths)
        pair = (sn.extract(sn.space.max()).eval(), sn.extract(cfg).eval())
        side = int(sn.meta["input_size"])
        example = torch.randn(BATCH, int(sn.meta["in_chans"]), side, side)
        seconds = 0.01 if self.args.smoke else 0.2  # per network and round
        rounds = [
            [measure_latency(m, example, min_run_time=seconds, threads=1) for m in pair]
            for _ in range(ROUNDS)
        ]
        full_ms, ms = (min(column) for column in zip(*rounds, strict=True))
        return {
            "kind": "latency",
            "row": prefix,
            "seed": seed,
            "fraction": frac,
            "batch": BATCH,
            "threads": 1,
            "macs": int(sn.macs(cfg)),
            "params": int(sn.params(cfg)),
            "latency_ms": round(ms, 4),
            "full_latency_ms": round(full_ms, 4),
            "latency_ratio": round(ms / full_ms, 4),
        }

    def row_widths(
        self, prefix: str, frac: float, budget: int, seed: int
    ) -> tuple[Supernet, dict[str, int]]:
        """The supernet (random weights) and widths that rebuild a finished row's network."""
        cell = self.cells.get(f"{prefix}-{pct(frac)}-s{seed}")
        if prefix == "scratch":  # any channel count, uniform at the cell's ratio
            sn = self.any_width_probe
            return sn, dict(sn.space.uniform(cell["ratio"]))
        if prefix in PRUNING:
            if "widths" in cell:
                return self.any_width_probe, cell["widths"]
            # cells made before they kept their widths: the pruned file (remade if missing:
            # pruning is deterministic given the trained network and the seed's batches)
            recipe = build_recipe(self.args, seed)
            path = self.pruned_file(recipe, seed, budget, frac, importance=PRUNING[prefix])
            return self.any_width_probe, dict(read_subnet(path)["widths"])
        return self.probe, cell["widths"]
