"""``evolution`` (BCNet search) with Optuna's NSGA-II: one study answers every budget.

Each searchable group is an integer parameter (its choice index). Objectives: score
(maximise) and MACs (minimise). Every trial works for one budget (seeds for the budget
they were made for, the others in turn), and before it is evaluated its config is
*repaired* into ``[window * budget, budget]`` with the cost model: widened or narrowed one
group at a time, in a random order drawn from the trial's number (Baldwinian repair: the
study keeps the sampled genotype, the evaluation and the answer use the repaired config,
stored in the trial's ``user_attrs``). So every evaluation is a candidate answer for a
budget; none is spent on configs far under every budget or over all of them. For each
budget the answer is the best-scoring trial in its window, and its notes say when no
evolved trial beat the seeds.

The first generation is seeded with ``enqueue_trial``: per budget the bisection answer,
the widest uniform config and that config topped up to the budget, plus -- when the
checkpoint carries per-(group, width) training losses -- ``prior_samples`` samples of
BCNet's prior population.

``storage`` (``sqlite:///file.db``, or a path ending in ``.log``/``.journal`` for a journal
file) plus a stable study name makes the search resumable and shareable: ``trials`` is the
study's total, a restart runs only what is missing, and several processes may work on one
study at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import torch
from widthsearch.supernet import Supernet

from ._space import IndexSpace
from .base import SearchCall, Strategy, Timer, register_strategy
from .bisection import bisection_configs
from .constraints import Constraints
from .evaluator import SubnetEvaluator
from .result import SearchAnswer

__all__ = ["Evolution", "make_storage", "prior_population", "repair", "study_name_for"]

_HAS_SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")
_DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def make_storage(storage: str | None) -> optuna.storages.BaseStorage | str | None:
    """``sqlite:///...`` (any RDB URL) as is; ``*.log`` / ``*.journal`` -> a journal file."""
    if storage is None or storage == "":
        return None
    if storage.endswith((".log", ".journal")):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(storage))
    if "://" not in storage:
        raise ValueError(
            f"storage {storage!r}: use sqlite:///FILE.db (or another database URL) or a "
            "journal file path ending in .log or .journal"
        )
    try:  # open it now: a bad URL is one clear line, not a traceback from inside a search
        return optuna.storages.RDBStorage(storage)
    except Exception as exc:  # sqlalchemy and driver errors of many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"storage {storage!r} cannot be opened ({first}); use sqlite:///FILE.db, another "
            "database URL whose driver is installed, or a .log/.journal file"
        ) from None


def study_name_for(
    sn: Supernet,
    evaluator: SubnetEvaluator,
    *,
    budgets: Sequence[int],
    seed: int,
    constraints: Constraints | None = None,
) -> str:
    """A name that is the same exactly when the trials' meaning is the same.

    It hashes the supernet's weights and width space, the evaluator's settings, the
    budgets (trials are repaired into them), the constraints beyond plain MACs (the latency
    table's predictions included) and the seed, so a resumed search never mixes in scores
    of another supernet, another held-out set or other limits.
    """
    digest = hashlib.sha1()
    for key, value in sorted(sn.model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    facts = {
        "groups": [(g.name, list(g.choices)) for g in sn.space.groups],
        "eval": [evaluator.num_images, evaluator.num_calib, evaluator.batch_size],
        "budgets": sorted(int(b) for b in budgets),
        "seed": int(seed),
    }
    if constraints is not None and constraints != Constraints():
        facts["constraints"] = constraints.to_dict()
        if constraints.latency is not None:
            facts["latency"] = constraints.latency.table.to_dict()["layers"]
    digest.update(json.dumps(facts, sort_keys=True).encode())
    return f"widthsearch-evolution-{digest.hexdigest()[:16]}"


def prior_population(
    space: IndexSpace,
    loss_records: Mapping[str, Mapping[Any, Sequence[float]]],
    budget: int,
    *,
    count: int,
    rng: np.random.Generator,
    temperature: float = 0.1,
) -> list[np.ndarray]:
    """BCNet's prior population: configs sampled from per-group width distributions.

    For group ``g``, ``p(w) ∝ exp(-loss_g(w) / T - beta * dMACs_g(w) / budget)``, where
    ``loss_g(w)`` is the mean training loss recorded at width ``w`` (interpolated between
    recorded widths) and ``dMACs_g(w)`` is what width ``w`` adds to the widest uniform config
    under the budget. ``beta >= 0`` is the smallest penalty whose expected MACs (exact,
    widths independent) fit the budget. Returns up to ``count`` distinct samples under it.
    (MACs: the space's cost -- predicted latency under a latency budget.)
    """
    ref = space.largest_uniform_under(budget)
    ref = space.min_index() if ref is None else ref
    ref_macs = float(space.cost(ref))
    losses, extra = [], []
    for g, (name, choices) in enumerate(zip(space.names, space.choices, strict=True)):
        losses.append(_group_losses(loss_records.get(name, {}), choices))
        rows = np.repeat(ref[None, :], len(choices), axis=0)
        rows[:, g] = np.arange(len(choices))
        extra.append((space.cost(rows) - ref_macs) / budget)

    def probs(beta: float) -> list[np.ndarray]:
        out = []
        for loss, add in zip(losses, extra, strict=True):
            logit = -loss / temperature - beta * add
            p = np.exp(logit - logit.max())
            out.append(p / p.sum())
        return out

    def expected(ps: list[np.ndarray]) -> float:
        return float(space.expected_cost([torch.as_tensor(p) for p in ps]))

    lo, hi = 0.0, 1.0
    if expected(probs(0.0)) > budget:
        while expected(probs(hi)) > budget and hi < 1e6:
            hi *= 2
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if expected(probs(mid)) <= budget else (mid, hi)
        beta = hi
    else:
        beta = 0.0
    ps = probs(beta)
    seen: set[tuple[int, ...]] = set()
    out: list[np.ndarray] = []
    for _ in range(20 * count):
        idx = np.array([rng.choice(len(p), p=p) for p in ps], dtype=np.int64)
        key = tuple(idx.tolist())
        if key in seen or space.cost(idx) > budget:
            continue
        seen.add(key)
        out.append(idx)
        if len(out) >= count:
            break
    return out


def _group_losses(records: Mapping[Any, Sequence[float]], choices: np.ndarray) -> np.ndarray:
    """Mean recorded loss at each choice (linear interpolation; zeros when nothing recorded)."""
    points = []
    for width, value in records.items():
        total, count = float(value[0]), float(value[1])
        if count > 0:
            points.append((int(width), total / count))
    if not points:
        return np.zeros(len(choices))
    points.sort()
    xs, ys = zip(*points, strict=True)
    return np.interp(choices.astype(np.float64), xs, ys)


@register_strategy("evolution")
class Evolution(Strategy):
    """NSGA-II over per-group choice indices; one Optuna study serves all budgets.

    Options:
        trials: Total trials of the study (resumed studies run only the missing ones).
        population: NSGA-II population size (default ``clip(trials // 5, 8, 50)``).
        storage: Optuna storage URL or journal path (resumable, multi-process).
        study_name: Override the stable default name (:func:`study_name_for`).
        loss_records: ``{group: {width: [loss_sum, count]}}`` for the prior population.
        prior_samples: Prior-population seeds per budget (default 8).
        prior_temperature: ``T`` of the prior (default 0.1, loss units).
        window: Trials are repaired into ``[window * budget, budget]`` (default 0.97).
        progress: Show Optuna's progress bar (default: when stderr is a terminal).
    """

    @dataclass(frozen=True)
    class Options:
        trials: int = 150
        population: int | None = None
        storage: str | None = None
        study_name: str | None = None
        loss_records: Mapping[str, Mapping[Any, Sequence[float]]] | None = None
        prior_samples: int = 8
        prior_temperature: float = 0.1
        window: float = 0.97
        progress: bool | None = None

        def __post_init__(self) -> None:
            if self.trials < 1:
                raise ValueError(f"evolution: trials must be >= 1, got {self.trials}")
            if not 0 < self.window <= 1:
                raise ValueError(f"evolution: window must be in (0, 1], got {self.window}")

    def run(self, call: SearchCall) -> list[SearchAnswer]:
        space, evaluator, budgets, seed = call.space, call.evaluator, call.budgets, call.seed
        opts, supernet, constraints = call.options, call.space.sn, call.space.constraints
        trials, window = opts.trials, opts.window
        before = evaluator.evaluations
        with Timer() as timer:
            study = self._study(
                supernet,
                evaluator,
                budgets,
                seed,
                opts.population or _population(trials),
                opts.storage,
                opts.study_name,
                constraints,
            )
            # seed the first generation; on a resumed study only seeds it lacks, and never
            # beyond ``trials`` in total (so the study ends with exactly ``trials`` trials)
            existing = study.get_trials(deepcopy=False)
            have = {
                tuple(t.system_attrs.get("fixed_params", t.params).get(n) for n in space.names)
                for t in existing
            }
            room = trials - len(existing)
            for idx, target in self._seeds(
                space, budgets, seed, opts.loss_records, opts.prior_samples, opts.prior_temperature
            ):
                key = tuple(int(i) for i in idx)
                if room <= 0:
                    break
                if key not in have:
                    study.enqueue_trial(_params(space, idx), user_attrs={"target": target})
                    have.add(key)
                    room -= 1
            done = sum(t.state in _DONE for t in study.get_trials(deepcopy=False))
            if done < trials:
                objective = _Objective(space, evaluator, budgets, window, seed)
                with _quiet_optuna():
                    study.optimize(
                        objective,
                        n_trials=trials - done,
                        show_progress_bar=(
                            sys.stderr.isatty() if opts.progress is None else opts.progress
                        ),
                        callbacks=[optuna.study.MaxTrialsCallback(trials, states=_DONE)],
                    )
            finished = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("evaluated")
            ]
        spent = evaluator.evaluations - before
        note = (
            f"one study of {len(study.trials)} trials ({len(finished)} evaluated) shared by "
            f"{len(budgets)} budget(s); evaluations and seconds are the call's"
        )
        results = []
        for budget in budgets:
            best = _best_under(finished, budget, window)
            seeded = [t for t in finished if "fixed_params" in t.system_attrs]
            best_seed = _best_under(seeded, budget, window)
            notes, score = [note], None
            if best is None:  # nothing evaluated fits: fall back to the bisection answer
                idx = bisection_configs(supernet, [budget], constraints=constraints)[0]
                notes.append("no evaluated trial under the budget: bisection answer")
            else:
                idx, score = np.array(best.user_attrs["idx"], dtype=np.int64), float(best.values[0])
                if best_seed is not None and best.number == best_seed.number:
                    notes.append("no evolved trial beat the seeds (bisection, uniform, prior)")
            results.append(
                self.result(
                    space,
                    evaluator,
                    idx,
                    budget,
                    evaluations=spent,
                    seconds=timer.seconds,
                    score=score,
                    notes=notes,
                )
            )
        return results

    # -- pieces ----------------------------------------------------------------------------
    def _study(self, sn, evaluator, budgets, seed, population, storage, study_name, constraints):
        # Optuna >= 5 reads constraints set on the trial (``constraints_func`` is deprecated
        # there); older versions need the callback.
        legacy = {} if _HAS_SET_CONSTRAINT else {"constraints_func": _constraints}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed, **legacy)
        name = study_name or study_name_for(
            sn, evaluator, budgets=budgets, seed=seed, constraints=constraints
        )
        with _quiet_optuna():
            study = optuna.create_study(
                directions=["maximize", "minimize"],
                sampler=sampler,
                storage=make_storage(storage),
                study_name=name,
                load_if_exists=True,
            )
        return study

    def _seeds(self, space, budgets, seed, loss_records, prior_samples, temperature):
        """Per-budget ``(seed, budget)`` pairs, most useful first: bisection answers, uniform
        configs topped up to the budget, BCNet prior samples, then the plain uniform configs."""
        tiers: list[list[tuple[np.ndarray, int]]] = [[], [], [], []]
        rng = np.random.default_rng([seed, 7])
        bisected = bisection_configs(space.sn, budgets, constraints=space.constraints)
        for budget, bis in zip(budgets, bisected, strict=True):
            tiers[0].append((bis, budget))
            uni = space.largest_uniform_under(budget)
            if uni is not None:
                tiers[1].append((space.grow(uni, budget), budget))
                tiers[3].append((uni, budget))
            if loss_records and prior_samples > 0:
                prior = prior_population(
                    space,
                    loss_records,
                    budget,
                    count=prior_samples,
                    rng=rng,
                    temperature=temperature,
                )
                tiers[2].extend((idx, budget) for idx in prior)
        unique: dict[tuple[int, ...], tuple[np.ndarray, int]] = {}
        for idx, budget in (pair for tier in tiers for pair in tier):
            unique.setdefault(tuple(int(i) for i in idx), (idx, budget))
        return list(unique.values())


class _Objective:
    """Sample, repair into the trial's budget window, evaluate (see the module docstring)."""

    def __init__(
        self,
        space: IndexSpace,
        evaluator: SubnetEvaluator,
        budgets: Sequence[int],
        window: float,
        seed: int,
    ) -> None:
        self.space, self.evaluator = space, evaluator
        self.budgets, self.window, self.seed = list(budgets), window, seed

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        space = self.space
        idx = np.array(
            [
                trial.suggest_int(n, 0, int(k) - 1)
                for n, k in zip(space.names, space.sizes, strict=True)
            ],
            dtype=np.int64,
        )
        target = int(trial.user_attrs.get("target", self.budgets[trial.number % len(self.budgets)]))
        idx = repair(
            space, idx, target, self.window, rng=np.random.default_rng([self.seed, trial.number])
        )
        macs = int(space.cost(idx))  # the budgeted cost: MACs unless constraints say otherwise
        trial.set_user_attr("target", target)
        trial.set_user_attr("idx", [int(i) for i in idx])
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("limit", target)
        if _HAS_SET_CONSTRAINT:  # <= 0 is feasible
            trial.set_constraint("macs_over_budget", float(macs - target))
        if macs > target:  # the budget is below the space: nothing to evaluate
            trial.set_user_attr("evaluated", False)
            return 0.0, float(macs)
        with torch.no_grad():
            score = self.evaluator.score(space.config(idx))
        trial.set_user_attr("evaluated", True)
        return float(score), float(macs)


def repair(
    space: IndexSpace, idx: np.ndarray, budget: int, window: float, *, rng: np.random.Generator
) -> np.ndarray:
    """Move ``idx`` into ``[window * budget, budget]`` MACs where the space allows: narrow
    random groups until it fits, then widen random groups while it still fits."""
    if int(space.cost(idx)) > budget:
        idx = space.shrink(idx, budget, cost=lambda _i, groups, _saved: rng.random(len(groups)))
    if int(space.cost(idx)) < window * budget:
        idx = space.grow(idx, budget, priority=lambda _i, groups, _added: rng.random(len(groups)))
    return idx


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    # <= 0 is feasible; the objective stored the exact MACs and the budget in the attrs
    return [float(trial.user_attrs.get("macs", 0)) - float(trial.user_attrs.get("limit", 0))]


def _params(space: IndexSpace, idx: np.ndarray) -> dict[str, int]:
    return {n: int(i) for n, i in zip(space.names, idx, strict=True)}


def _population(trials: int) -> int:
    return int(np.clip(trials // 5, 8, 50))


def _best_under(trials: list[optuna.trial.FrozenTrial], budget: int, window: float):
    under = [t for t in trials if "idx" in t.user_attrs and t.user_attrs["macs"] <= budget]
    near = [t for t in under if t.user_attrs["macs"] >= window * budget]
    pool = near or under
    if not pool:
        return None
    # best score; ties -> more MACs used, then the earliest trial (deterministic)
    return max(pool, key=lambda t: (t.values[0], t.user_attrs["macs"], -t.number))


class _quiet_optuna:
    """Silence Optuna's per-trial INFO logs inside the block, restoring the level after."""

    def __enter__(self) -> None:
        self._level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(logging.WARNING)

    def __exit__(self, *exc: object) -> None:
        optuna.logging.set_verbosity(self._level)
