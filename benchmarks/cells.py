"""Resumable benchmark cells, and the stage calls every cell makes (train, fine-tune, measure).

A *cell* is one finished unit of work (one training, one search, one fine-tune and
evaluation, ...), saved as JSON under ``OUT/cells`` (atomically); a rerun reads it instead of
redoing the work. Used by ``headline.py``, ``warmstart.py`` and ``inherit_trained.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from widthsearch.evaluate import evaluate_model, finetune_subnet, read_subnet
from widthsearch.recipes.recipe import Recipe
from widthsearch.supernet.checkpoint import write_json_atomic
from widthsearch.supernet.train import train_supernet

_STARTED = time.perf_counter()


def log(message: str) -> None:
    """One progress line with the elapsed wall time (the background run's log)."""
    minutes = (time.perf_counter() - _STARTED) / 60
    print(f"[{minutes:6.1f} min] {message}", flush=True)


def passive_openmp() -> None:
    """Re-execute this script with ``OMP_WAIT_POLICY=PASSIVE`` unless it is set.

    The variable is read when OpenMP loads (with torch), so it cannot be set afterwards.
    Spinning waits collapse throughput when another job shares the 2 cores.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.argv])


class Cells:
    """One JSON file per finished unit of work; a rerun reads it instead of redoing the work."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "cells"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.failed: list[str] = []

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The cell's figures: from its file, else computed, saved and returned.

        A failing cell is logged and skipped (``None``), so one broken baseline does not cost
        the rest of an hour-long run; the run exits non-zero at the end.
        """
        done = self.get(name)
        if done is not None:
            log(f"{name}: done before, skipped")
            return done
        log(f"{name}: running")
        start = time.perf_counter()
        try:
            doc = work()
        except Exception:
            log(f"{name}: FAILED\n{traceback.format_exc()}")
            self.failed.append(name)
            return None
        doc = {"cell": name, "wall_seconds": round(time.perf_counter() - start, 2), **doc}
        write_json_atomic(doc, self.folder / f"{name}.json")
        log(f"{name}: done in {doc['wall_seconds']:.0f} s")
        return doc


class Lazy:
    """Loaded supernets, evaluators and held-out batches, built once per process on demand."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


# ---- the stage calls -----------------------------------------------------------------------


def train_cell(recipe: Recipe, folder: Path) -> dict[str, Any]:
    """Train (or finish training) a supernet; its training seconds exclude per-epoch evals."""
    ckpt = folder / "supernet.pt"
    result = train_supernet(
        recipe,
        out_dir=folder,
        resume=ckpt.is_file(),
        progress=False,
        log=lambda line: log(f"  {recipe.train.trainer} {line}"),
    )
    history = result.history
    seconds = [float(h["seconds"]) for h in history]
    return {
        "trainer": recipe.train.trainer,
        "checkpoint": str(ckpt),
        "epochs": len(history),
        "train_seconds": round(sum(seconds), 2),
        "seconds_per_epoch": round(statistics.median(seconds), 2) if seconds else None,
        "train_images": int(recipe.data.train_limit),
        "history": history,
    }


def finetune_seconds(payload: Mapping[str, Any]) -> float:
    """Training seconds of a fine-tune (the sum of its epochs, resumes included)."""
    return round(sum(float(h["seconds"]) for h in payload["finetune"]["history"]), 2)


def tuned_figures(path: Path, payload: Mapping[str, Any]) -> dict[str, Any]:
    """What every fine-tuned cell reports: fine-tune time and log, then the measurements."""
    return {
        "finetune_seconds": finetune_seconds(payload),
        "finetune_history": payload["finetune"]["history"],
        **measure(path),
    }


def measure(path: Path, *, latency: bool = True) -> dict[str, Any]:
    """Test top-1, MACs, params and latency (ratio to the full width, timed in the same call).

    The full model is rebuilt untrained (``supernet`` dropped from the payload): its latency,
    MACs and params do not depend on the weights, and its top-1 comes from its own cell.
    """
    payload = read_subnet(path)
    payload["supernet"] = None
    figures = evaluate_model(payload, latency=latency, full=latency, progress=False)
    keep = ("top1", "macs", "macs_counted", "params", "latency_ms", "test_images", "ratios")
    out = {k: figures.get(k) for k in keep}
    if latency:
        full = figures["full"]
        out["full"] = {k: full.get(k) for k in ("macs", "params", "latency_ms")}
    return out


def finetune(subnet: Path, out: Path, recipe: Recipe, *, teacher: Path | None, seed: int):
    """The one fine-tune every compressed network gets (recipe epochs, lr, distillation)."""
    ckpt = out.with_name(out.stem + ".ckpt.pt")
    return finetune_subnet(
        subnet,
        out=out,
        epochs=recipe.finetune.epochs,
        lr=recipe.finetune.lr,
        weight_decay=recipe.finetune.weight_decay,
        teacher=teacher if recipe.finetune.distill else None,
        seed=seed,
        resume=ckpt.is_file(),
        progress=False,
        log=lambda line: log(f"  {out.stem}: {line}"),
    )
