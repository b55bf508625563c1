"""What an answer must satisfy: its budget (MACs or latency) and any further limits.

Strategies compare one integer *cost* of a config with one integer budget: that is how they
bisect, grow, shrink and repair. :class:`Constraints` keeps it that way with several limits
at once. The cost is the budgeted measure -- MACs, or predicted latency in nanoseconds --
while every further limit (``max_macs``, ``max_params``, ``max_latency_ms``) holds, and
above every budget as soon as one does not (growing with how far it is broken, so that
narrowing still shows progress). The cost is non-decreasing in every width, as each measure
is, so every strategy keeps its answers inside all the limits without knowing about them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from widthsearch.supernet import Supernet

from .latency import LatencyModel

__all__ = [
    "NS_PER_MS",
    "Constraints",
    "budget_measure",
    "format_ms",
    "is_latency",
    "parse_latency",
]

NS_PER_MS = 1_000_000  # latency budgets are integer nanoseconds inside the search
_UNITS = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}
_LATENCY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs)\s*$")
_LOOKS_TIMED = re.compile(r"^\s*[0-9.]+\s*[a-zµ]*s\s*$", re.IGNORECASE)

Measure = Literal["macs", "latency"]


def parse_latency(text: Any) -> float | None:
    """``"12ms"``, ``"12.5 ms"``, ``"800us"``, ``"0.01s"`` -> milliseconds; ``None`` for text
    that is no latency (a MACs budget).

    Raises:
        ValueError: text that reads as a duration with an unknown unit (``12xs``), or <= 0.
    """
    if not isinstance(text, str):
        return None
    match = _LATENCY.match(text)
    if not match:
        if _LOOKS_TIMED.match(text):
            raise ValueError(f"bad latency {text!r}: use ms, us or s (12ms, 800us, 0.01s)")
        return None
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise ValueError(f"latency {text!r} must be > 0")
    return value


def is_latency(text: Any) -> bool:
    """Whether ``text`` is a latency (``12ms``) rather than a MACs budget."""
    return parse_latency(text) is not None


def budget_measure(budgets: Iterable[Any]) -> Measure:
    """``"latency"`` when the budgets are latencies, ``"macs"`` when they are MACs.

    Raises:
        ValueError: a mixture (one search answers one kind of budget; the other kind is a
            limit: ``--max-latency`` / ``--max-macs``), or a bad latency.
    """
    kinds = {is_latency(b) for b in budgets}
    if kinds == {True, False}:
        raise ValueError(
            "budgets mix latencies and MACs: search one kind per call, and give the other as "
            "a limit (--max-latency 8ms, --max-macs 0.5)"
        )
    return "latency" if kinds == {True} else "macs"


def format_ms(ms: float | None) -> str:
    """``1.23456 -> '1.235ms'``; ``None`` -> "—"."""
    return "—" if ms is None else f"{ms:.3f}ms"


@dataclass(frozen=True)
class Constraints:
    """The budgeted measure and the limits every answer must keep.

    Attributes:
        measure: What budgets count: ``"macs"`` or ``"latency"`` (budgets in nanoseconds).
        max_macs: MACs limit besides the budget (``None``: none).
        max_params: Parameter limit (``None``: none).
        max_latency_ms: Predicted-latency limit in milliseconds (``None``: none).
        latency: The latency model (needed for a latency budget or limit, and then also
            what each result's ``latency_ms`` is predicted with).
    """

    measure: Measure = "macs"
    max_macs: int | None = None
    max_params: int | None = None
    max_latency_ms: float | None = None
    latency: LatencyModel | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.measure not in ("macs", "latency"):
            raise ValueError(f"measure must be 'macs' or 'latency', got {self.measure!r}")
        if self.latency is None and (self.measure == "latency" or self.max_latency_ms is not None):
            raise ValueError(
                "a latency budget or --max-latency needs a latency table: --latency-table "
                "LAT.json (make one with `widthsearch profile`)"
            )
        for name in ("max_macs", "max_params", "max_latency_ms"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def limited(self) -> bool:
        """Whether any limit besides the budget applies."""
        return any(v is not None for v in (self.max_macs, self.max_params, self.max_latency_ms))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"measure": self.measure}
        for name in ("max_macs", "max_params", "max_latency_ms"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.latency is not None:
            table = self.latency.table
            out["latency_table"] = {
                k: getattr(table, k) for k in ("device", "threads", "batch", "torch", "model")
            }
        return out

    # -- measures ------------------------------------------------------------------------
    def latency_ms(self, widths: np.ndarray):
        """Predicted milliseconds of a width vector or matrix (``None`` without a table)."""
        return None if self.latency is None else self.latency.predict(widths)

    def value(self, sn: Supernet, widths: np.ndarray) -> np.ndarray:
        """The budgeted measure of a width matrix ``(n, G)`` as int64 (MACs or ns)."""
        if self.measure == "macs":
            return np.asarray(sn.cost.macs(widths), dtype=np.int64)
        return np.rint(self.latency.predict(widths) * NS_PER_MS).astype(np.int64)

    def excess(self, sn: Supernet, widths: np.ndarray) -> np.ndarray:
        """Per config, how far the limits are broken: sum of ``value / limit - 1`` over
        the broken ones (0 where every limit holds)."""
        out = np.zeros(len(widths))
        for limit, measure in (
            (self.max_macs, lambda w: sn.cost.macs(w)),
            (self.max_params, lambda w: sn.cost.params(w)),
            (self.max_latency_ms, lambda w: self.latency.predict(w)),
        ):
            if limit is not None:
                out += np.maximum(np.asarray(measure(widths), dtype=np.float64) / limit - 1, 0)
        return out

    def cost(self, sn: Supernet, widths: np.ndarray):
        """The cost strategies compare with budgets (see the module docstring): one width
        vector ``(G,)`` -> int, a matrix ``(n, G)`` -> int64 array."""
        widths = np.asarray(widths)
        single = widths.ndim == 1
        widths = np.atleast_2d(widths)
        value = self.value(sn, widths)
        if self.limited:
            excess = self.excess(sn, widths)
            top = int(self.value(sn, sn.widths_vector(sn.space.max())[None, :])[0]) + 1
            broken = top + np.rint(top * excess).astype(np.int64)
            value = np.where(excess > 0, broken, value)
        return int(value[0]) if single else value

    def broken(self, sn: Supernet, cfg: dict[str, int]) -> list[str]:
        """The limits ``cfg`` breaks, each as a phrase (empty when it keeps them all)."""
        w = sn.widths_vector(cfg)
        out = []
        if self.max_macs is not None and sn.cost.macs(w) > self.max_macs:
            out.append(f"{sn.cost.macs(w)} MACs > max {self.max_macs}")
        if self.max_params is not None and sn.cost.params(w) > self.max_params:
            out.append(f"{sn.cost.params(w)} params > max {self.max_params}")
        if self.max_latency_ms is not None and self.latency.predict(w) > self.max_latency_ms:
            out.append(
                f"{format_ms(self.latency.predict(w))} predicted > max "
                f"{format_ms(self.max_latency_ms)}"
            )
        return out

    def describe(self, value: float) -> str:
        """A budgeted-measure value in words: ``'20.28M MACs'`` or ``'4.200ms'``."""
        if self.measure == "latency":
            return format_ms(value / NS_PER_MS)
        from .budgets import format_macs

        return f"{format_macs(value)} MACs"
