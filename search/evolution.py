"""``evolution`` (BCNet search) with Optuna's NSGA-II: one study answers every budget.

Each searchable group is an integer parameter (its choice index). Objectives: score
(maximise) and MACs (minimise); constraint: MACs <= the largest budget. Trials over that
budget are never evaluated (score 0, marked infeasible by a constraint), so
they cost a cost-model query only. For each budget the answer is the best-scoring
evaluated trial within ``[window * budget, budget]`` (else the best under it).

The first generation is seeded with ``enqueue_trial``: per budget the bisection answer,
the widest uniform config and that config topped up to the budget, plus -- when the
checkpoint carries per-(group, width) training losses -- samples of BCNet's prior
population. The per-budget seeds put samples in every budget's neighbourhood, so a
budget costs a few seeds, not a study.

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
from typing import Any

import numpy as np
import optuna
import torch
from widthsearch.supernet import Supernet

from ._macs import MacsPolynomial
from ._space import IndexSpace
from .base import CLOSE_ENOUGH, SearchResult, Strategy, Timer, register_strategy, reject_options
from .bisection import bisection_configs
from .evaluator import SubnetEvaluator

__all__ = ["Evolution", "make_storage", "prior_population", "study_name_for"]

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
    return storage


def study_name_for(sn: Supernet, evaluator: SubnetEvaluator, *, max_budget: int, seed: int) -> str:
    """A name that is the same exactly when the trials' meaning is the same.

    It hashes the supernet's weights and width space, the evaluator's settings, the
    constraint (largest budget) and the seed, so a resumed search never mixes in scores of
    another supernet or another held-out set.
    """
    digest = hashlib.sha1()
    for key, value in sorted(sn.model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    facts = {
        "groups": [(g.name, list(g.choices)) for g in sn.space.groups],
        "eval": [evaluator.num_images, evaluator.num_calib, evaluator.batch_size],
        "max_budget": int(max_budget),
        "seed": int(seed),
    }
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
    """
    poly = MacsPolynomial(space.sn)
    ref = space.largest_uniform_under(budget)
    ref = space.min_index() if ref is None else ref
    ref_macs = float(space.macs(ref))
    losses, extra = [], []
    for g, (name, choices) in enumerate(zip(space.names, space.choices, strict=True)):
        losses.append(_group_losses(loss_records.get(name, {}), choices))
        rows = np.repeat(ref[None, :], len(choices), axis=0)
        rows[:, g] = np.arange(len(choices))
        extra.append((space.macs(rows) - ref_macs) / budget)
    full_width = space.sn.widths_vector(space.sn.space.max()).astype(np.float64)

    def probs(beta: float) -> list[np.ndarray]:
        out = []
        for loss, add in zip(losses, extra, strict=True):
            logit = -loss / temperature - beta * add
            p = np.exp(logit - logit.max())
            out.append(p / p.sum())
        return out

    def expected(ps: list[np.ndarray]) -> float:
        mean, second = full_width.copy(), full_width**2
        for j, (p, c) in enumerate(zip(ps, space.choices, strict=True)):
            mean[space.positions[j]] = p @ c
            second[space.positions[j]] = p @ (c.astype(np.float64) ** 2)
        return poly.expected(mean, second)

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
        if key in seen or space.macs(idx) > budget:
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
        prior_samples: Prior-population seeds per budget (default 2).
        prior_temperature: ``T`` of the prior (default 0.1, loss units).
        window: A result should use at least this share of its budget (default 0.9).
        progress: Show Optuna's progress bar (default: when stderr is a terminal).
    """

    def search(
        self,
        supernet: Supernet,
        evaluator: SubnetEvaluator,
        *,
        budgets: Sequence[int],
        seed: int,
        trials: int = 150,
        population: int | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        loss_records: Mapping[str, Mapping[Any, Sequence[float]]] | None = None,
        prior_samples: int = 2,
        prior_temperature: float = 0.1,
        window: float = CLOSE_ENOUGH,
        progress: bool | None = None,
        **options: Any,
    ) -> list[SearchResult]:
        reject_options(self.name, options)
        if trials < 1:
            raise ValueError(f"evolution: trials must be >= 1, got {trials}")
        space = IndexSpace(supernet)
        max_budget = int(max(budgets))
        before = evaluator.evaluations
        with Timer() as timer:
            study = self._study(
                supernet,
                evaluator,
                max_budget,
                seed,
                population or _population(trials),
                storage,
                study_name,
            )
            # seed the first generation; on a resumed study only seeds it lacks, and never
            # beyond ``trials`` in total (so the study ends with exactly ``trials`` trials)
            existing = study.get_trials(deepcopy=False)
            have = {
                tuple(t.system_attrs.get("fixed_params", t.params).get(n) for n in space.names)
                for t in existing
            }
            room = trials - len(existing)
            for idx in self._seeds(
                space, budgets, seed, loss_records, prior_samples, prior_temperature
            ):
                key = tuple(int(i) for i in idx)
                if room <= 0:
                    break
                if key not in have:
                    study.enqueue_trial(_params(space, idx))
                    have.add(key)
                    room -= 1
            done = sum(t.state in _DONE for t in study.get_trials(deepcopy=False))
            if done < trials:
                objective = _Objective(space, evaluator, max_budget)
                with _quiet_optuna():
                    study.optimize(
                        objective,
                        n_trials=trials - done,
                        show_progress_bar=sys.stderr.isatty() if progress is None else progress,
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
            if best is None:  # nothing evaluated fits: fall back to the bisection answer
                idx = bisection_configs(supernet, [budget])[0]
                results.append(
                    self.result(
                        space,
                        evaluator,
                        idx,
                        budget,
                        evaluations=spent,
                        seconds=timer.seconds,
                        notes=[note, "no evaluated trial under the budget: bisection answer"],
                    )
                )
                continue
            idx = np.array([best.params[n] for n in space.names], dtype=np.int64)
            results.append(
                self.result(
                    space,
                    evaluator,
                    idx,
                    budget,
                    evaluations=spent,
                    seconds=timer.seconds,
                    score=float(best.values[0]),
                    notes=[note],
                )
            )
        return results

    # -- pieces ----------------------------------------------------------------------------
    def _study(self, sn, evaluator, max_budget, seed, population, storage, study_name):
        # Optuna >= 5 reads constraints set on the trial (``constraints_func`` is deprecated
        # there); older versions need the callback.
        legacy = {} if _HAS_SET_CONSTRAINT else {"constraints_func": _constraints}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed, **legacy)
        name = study_name or study_name_for(sn, evaluator, max_budget=max_budget, seed=seed)
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
        """Per-budget seeds, most useful first: bisection answers, uniform configs topped up
        to the budget, BCNet prior samples, then the plain uniform configs."""
        tiers: list[list[np.ndarray]] = [[], [], [], []]
        rng = np.random.default_rng([seed, 7])
        for budget, bis in zip(budgets, bisection_configs(space.sn, budgets), strict=True):
            tiers[0].append(bis)
            uni = space.largest_uniform_under(budget)
            if uni is not None:
                tiers[1].append(space.grow(uni, budget))
                tiers[3].append(uni)
            if loss_records and prior_samples > 0:
                tiers[2].extend(
                    prior_population(
                        space,
                        loss_records,
                        budget,
                        count=prior_samples,
                        rng=rng,
                        temperature=temperature,
                    )
                )
        unique: dict[tuple[int, ...], np.ndarray] = {}
        for idx in (idx for tier in tiers for idx in tier):
            unique.setdefault(tuple(int(i) for i in idx), idx)
        return list(unique.values())


class _Objective:
    def __init__(self, space: IndexSpace, evaluator: SubnetEvaluator, max_budget: int) -> None:
        self.space, self.evaluator, self.max_budget = space, evaluator, max_budget

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        space = self.space
        idx = np.array(
            [
                trial.suggest_int(n, 0, int(k) - 1)
                for n, k in zip(space.names, space.sizes, strict=True)
            ],
            dtype=np.int64,
        )
        macs = int(space.macs(idx))
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("limit", self.max_budget)
        if _HAS_SET_CONSTRAINT:  # <= 0 is feasible
            trial.set_constraint("macs_over_budget", float(macs - self.max_budget))
        if macs > self.max_budget:  # infeasible: no evaluation, the constraint marks it
            trial.set_user_attr("evaluated", False)
            return 0.0, float(macs)
        with torch.no_grad():
            score = self.evaluator.score(space.config(idx))
        trial.set_user_attr("evaluated", True)
        return float(score), float(macs)


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    # <= 0 is feasible; the objective stored the exact MACs and the budget in the attrs
    return [float(trial.user_attrs.get("macs", 0)) - float(trial.user_attrs.get("limit", 0))]


def _params(space: IndexSpace, idx: np.ndarray) -> dict[str, int]:
    return {n: int(i) for n, i in zip(space.names, idx, strict=True)}


def _population(trials: int) -> int:
    return int(np.clip(trials // 5, 8, 50))


def _best_under(trials: list[optuna.trial.FrozenTrial], budget: int, window: float):
    under = [t for t in trials if t.user_attrs["macs"] <= budget]
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
