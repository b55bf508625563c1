"""The ranking benchmark's statistics (``benchmarks/ranking.py``): rank correlations with
bootstrap intervals, the paired gain over MACs alone, partial tau given MACs, and how well
one seed's truth ranks another's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["bootstrap", "partial_tau", "seed_agreement"]


def partial_tau(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float:
    """Kendall's partial tau of ``x`` and ``y`` given ``z``: how far ``x`` ranks ``y`` beyond
    what both share with ``z`` (MACs here). NaN where ``z`` ranks ``x`` or ``y`` perfectly
    (MACs alone against itself): nothing is left to rank."""

    def tau(a: np.ndarray, b: np.ndarray) -> float:
        return float(stats.kendalltau(a, b).statistic)

    xy, xz, yz = tau(x, y), tau(x, z), tau(y, z)
    rest = (1 - xz**2) * (1 - yz**2)
    return float("nan") if rest <= 1e-12 else (xy - xz * yz) / float(np.sqrt(rest))


def bootstrap(
    score: Sequence[float],
    truth: Sequence[float],
    *,
    rounds: int,
    baseline: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Kendall tau and Spearman rho with 95 % percentile intervals over resampled configs;
    with ``baseline`` (MACs alone) also tau minus the baseline's tau on the same resamples (a
    paired interval: whether a score ranks better than the baseline, not whether two
    intervals overlap) and the partial tau given the baseline (whether the score knows
    anything the baseline does not, the question a search at one budget asks)."""
    x, y = np.asarray(score, dtype=float), np.asarray(truth, dtype=float)
    b = None if baseline is None else np.asarray(baseline, dtype=float)
    rng = np.random.default_rng(0)
    taus, rhos, gains, partials = [], [], [], []
    for _ in range(rounds):
        idx = rng.integers(0, len(x), len(x))
        if np.ptp(x[idx]) == 0 or np.ptp(y[idx]) == 0:
            continue  # a resample without spread has no rank correlation
        taus.append(stats.kendalltau(x[idx], y[idx]).statistic)
        rhos.append(stats.spearmanr(x[idx], y[idx]).statistic)
        if b is not None and np.ptp(b[idx]) > 0:
            gains.append(taus[-1] - stats.kendalltau(b[idx], y[idx]).statistic)
            partials.append(partial_tau(x[idx], y[idx], b[idx]))

    def interval(values: list[float]) -> list[float]:
        values = [v for v in values if not np.isnan(v)]
        return [float(v) for v in np.percentile(values, [2.5, 97.5])] if values else []

    tau = float(stats.kendalltau(x, y).statistic)
    out = {
        "kendall_tau": tau,
        "kendall_ci": interval(taus),
        "spearman_rho": float(stats.spearmanr(x, y).statistic),
        "spearman_ci": interval(rhos),
    }
    if b is not None:
        out["tau_gain"] = tau - float(stats.kendalltau(b, y).statistic)
        out["tau_gain_ci"] = interval(gains)
        partial = partial_tau(x, y, b)
        if not np.isnan(partial):
            out["partial_tau"], out["partial_ci"] = partial, interval(partials)
    return out


def seed_agreement(runs: dict[int, dict[int, float]], macs: Sequence[float]) -> dict[str, Any]:
    """How well one seed's truth ranks another's over the configs both have (``runs``: seed ->
    config -> top-1): the ceiling of any predictor's tau against a single seed, and the
    partial tau given MACs, the ceiling of the within-budget signal."""
    seeds = sorted(runs)
    if len(seeds) < 2:
        return {}
    a, b = seeds[:2]
    shared = sorted(set(runs[a]) & set(runs[b]))
    if len(shared) < 3:
        return {}
    x, y = np.array([runs[a][i] for i in shared]), np.array([runs[b][i] for i in shared])
    z = np.asarray(macs, dtype=float)[shared]
    return {
        "seeds": [a, b],
        "configs": len(shared),
        "kendall_tau": float(stats.kendalltau(x, y).statistic),
        "macs_tau": [float(stats.kendalltau(z, t).statistic) for t in (x, y)],
        "partial_tau": partial_tau(x, y, z),
        "max_gap": float(np.max(np.abs(x - y))),
        "median_gap": float(np.median(np.abs(x - y))),
    }
