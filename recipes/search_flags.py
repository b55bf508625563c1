"""The strategy and scoring flags of `widthsearch search`, turned into what a search needs.

Public so that a script with the same flags (``benchmarks/search.py``) gets the options and
the evaluator that `widthsearch search` would, from the same recipe fallbacks.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from widthsearch.search import SubnetEvaluator, build_evaluator, search_options
from widthsearch.supernet import Supernet
from widthsearch.supernet.runtime import Runtime

__all__ = ["search_inputs"]


def search_inputs(
    sn: Supernet,
    payload: Mapping[str, Any],
    args: argparse.Namespace,
    *,
    strategies: list[str],
    search: dict[str, Any],
    seed: int,
    runtime: Runtime | None = None,
) -> tuple[dict[str, dict[str, Any]], SubnetEvaluator]:
    """The per-strategy options and the evaluator that ``--trials``, ``--samples``,
    ``--relax-steps``, ``--heldout-images``, ``--calib-batches`` and ``--batch-size`` ask for.

    A flag that is ``None``, or that ``args`` does not have, falls back to the checkpoint's
    recipe: its ``search`` table (options) or ``payload["recipe"]`` (scoring sizes).
    """

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    options = search_options(
        search,
        strategies,
        payload.get("loss_records"),
        trials=flag("trials"),
        samples=flag("samples"),
        relax_steps=flag("relax_steps"),
    )
    evaluator = build_evaluator(
        sn,
        payload,
        heldout_images=flag("heldout_images"),
        calib_batches=flag("calib_batches"),
        batch_size=flag("batch_size"),
        seed=seed,
        runtime=runtime,
    )
    return options, evaluator
