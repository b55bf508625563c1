"""Running several strategies over many budgets, and building the evaluator from a checkpoint.

:func:`search_widths` returns the :class:`~widthsearch.search.SearchDocument` that
``widthsearch search`` writes (``search.json``; :func:`run_search` returns it as the JSON dict);
:func:`build_evaluator` rebuilds the held-out split the supernet's training held out, from
the recipe stored in its checkpoint -- never the test split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from widthsearch.supernet import CheckpointError, Supernet, trained_network
from widthsearch.supernet.checkpoint import write_json_atomic
from widthsearch.supernet.recipe import stored_recipe
from widthsearch.supernet.runtime import Runtime

from .base import Timer, get_strategy
from .budgets import resolve_budgets
from .constraints import Constraints
from .evaluator import SubnetEvaluator
from .result import SearchAnswer, SearchDocument
from .scoring import ScoringSizes, scoring_data

__all__ = [
    "build_evaluator",
    "run_search",
    "search_options",
    "search_widths",
    "write_json_atomic",
]


def build_evaluator(
    supernet: Supernet,
    payload: Mapping[str, Any],
    *,
    heldout_images: int | None = None,
    calib_batches: int | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    metric: str | None = None,
    runtime: Runtime | None = None,
) -> SubnetEvaluator:
    """The evaluator for a loaded checkpoint: its held-out split, settings from its recipe.

    Dataset, held-out size and split seed come from ``payload["recipe"]["data"]`` so the
    held-out images are exactly those training never saw; scoring sizes come from
    ``payload["recipe"]["search"]`` unless given (``metric``: its ``score``). Calibration
    batches are drawn from the (un-augmented) training split, so they never overlap the
    scored images. ``metric="kd"`` scores against the trained network a warm-started
    supernet carries. ``runtime`` (default: the CPU, full precision) is where the supernet is
    moved and scored.

    Raises:
        CheckpointError: the checkpoint carries no recipe data settings, or they do not fit
            the model.
        DataError: the dataset is missing, or training held nothing out.
    """
    recipe = payload.get("recipe")
    data = scoring_data(
        payload,
        supernet.meta,
        sizes=ScoringSizes.from_recipe(
            recipe,
            heldout_images=heldout_images,
            calib_batches=calib_batches,
            batch_size=batch_size,
            seed=seed,
        ),
        fit=True,  # relax fits its width logits on data: its own images, never the scored ones
        where="search",
    )
    metric = metric or stored_recipe(payload, where="search").search.score
    teacher = None
    if metric == "kd":
        state = payload.get("teacher_state_dict")
        if state is None:
            raise CheckpointError(
                "score 'kd' needs the trained network a warm-started supernet carries; this "
                "supernet was trained from scratch: use score 'top1' or 'ce'"
            )
        teacher = trained_network(supernet.meta, state, where="the supernet's teacher")
        teacher.to(next(supernet.parameters()).device)
    if runtime is not None:
        runtime.module(supernet)
        if teacher is not None:
            runtime.module(teacher)
    return SubnetEvaluator.from_scoring(
        supernet, data, metric=metric, teacher=teacher, runtime=runtime
    )


def search_options(
    search: dict[str, Any],
    strategies: list[str],
    loss_records: dict[str, Any] | None,
    *,
    trials: int | None = None,
    samples: int | None = None,
    relax_steps: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-strategy options from a recipe's ``[search]`` table, the arguments taking precedence.

    Only the strategies in ``strategies`` get an entry; evolution also gets the loss records
    of the supernet's training (its prior population), when the checkpoint has them.
    """
    options: dict[str, dict[str, Any]] = {
        "evolution": {"trials": trials or int(search.get("evolution_trials", 150))},
        "random": {"samples": samples or int(search.get("random_samples", 40))},
        "relax": {
            "steps": relax_steps if relax_steps is not None else int(search.get("relax_steps", 200))
        },
    }
    if loss_records:
        options["evolution"]["loss_records"] = loss_records
    return {k: v for k, v in options.items() if k in strategies}


def search_widths(
    supernet: Supernet,
    evaluator: SubnetEvaluator,
    *,
    strategies: Sequence[str],
    budgets: Sequence[int | float | str],
    seed: int = 0,
    storage: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    supernet_path: str = "",
    share_cache: bool = False,
    constraints: Constraints | None = None,
) -> SearchDocument:
    """Run each strategy once over all budgets; return the search document.

    Args:
        supernet: The supernet.
        evaluator: Its evaluator.
        strategies: Registered names, run in this order.
        budgets: Fractions (``0.5``), strings (``"20M"``) or absolute ints; latencies
            (``"12ms"``) when ``constraints.measure`` is ``"latency"``.
        seed: Seeds every strategy.
        storage: Optuna storage for ``evolution`` (resumable / multi-process).
        options: Per-strategy keyword options, ``{"evolution": {"trials": 60}, ...}``.
        supernet_path: Recorded in the document.
        share_cache: Keep evaluator scores across strategies. Off by default, so each
            strategy's evaluation count does not depend on which strategies ran before it.
        constraints: The budgets' measure and further limits (MACs, params, predicted
            latency) every answer keeps; default: MACs budgets, no further limit.

    Raises:
        ValueError: unknown strategy or option, bad or unreachable budget (before any work).
    """
    options = dict(options or {})
    instances = [get_strategy(name) for name in strategies]
    if not instances:
        raise ValueError("no strategy given")
    for name in options:
        get_strategy(name)  # an option for an unknown strategy is a typo
    absolute = resolve_budgets(supernet, budgets, constraints=constraints)
    results: list[SearchAnswer] = []
    calls: list[dict[str, Any]] = []
    for strategy in instances:
        if not share_cache:
            evaluator.clear_cache()
        opts = dict(options.get(strategy.name, {}))
        if strategy.name == "evolution" and storage:
            opts.setdefault("storage", storage)
        before, seconds = evaluator.evaluations, evaluator.seconds
        with Timer() as timer:
            answers = strategy.search(
                supernet, evaluator, budgets=absolute, seed=seed, constraints=constraints, **opts
            )
        calls.append(
            {
                "strategy": strategy.name,
                "evaluations": evaluator.evaluations - before,
                "evaluation_seconds": round(evaluator.seconds - seconds, 3),
                "seconds": round(timer.seconds, 3),
            }
        )
        results.extend(answer.as_written() for answer in answers)
    recorded, full_ms = None, None
    if constraints is not None and (constraints.limited or constraints.latency is not None):
        recorded = constraints.to_dict()
        if constraints.latency is not None:
            full = supernet.widths_vector(supernet.space.max())
            full_ms = round(float(constraints.latency.predict(full)), 6)
    return SearchDocument(
        supernet=str(supernet_path),
        model=supernet.meta.get("model", ""),
        full_macs=int(supernet.macs()),
        min_macs=int(supernet.macs(supernet.space.min())),
        full_params=int(supernet.params()),
        seed=int(seed),
        budgets=tuple(absolute),
        evaluator=evaluator.stats(),
        calls=tuple(calls),
        results=tuple(results),
        constraints=recorded,
        full_latency_ms=full_ms,
    )


def run_search(supernet: Supernet, evaluator: SubnetEvaluator, **arguments: Any) -> dict[str, Any]:
    """:func:`search_widths` (same keyword arguments), its document as the JSON dict written."""
    return search_widths(supernet, evaluator, **arguments).to_dict()
