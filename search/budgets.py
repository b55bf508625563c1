"""Budgets: parse ``0.5`` / ``50%`` (fraction of the full model's MACs) or ``20M`` / ``1.5G`` /
``300k`` / ``123456`` (absolute MACs), or ``12ms`` / ``800us`` (predicted latency, with a
latency table), and check them against what the supernet can reach within its limits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from widthsearch.supernet import Supernet

from .constraints import (
    NS_PER_MS,
    Constraints,
    budget_measure,
    format_ms,
    is_latency,
    parse_latency,
)
from .latency import LatencyTable

__all__ = ["format_macs", "make_constraints", "parse_budget", "resolve_budgets"]

_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT%]?)\s*$")


def parse_budget(text: str | float | int, full_macs: int) -> int:
    """One budget -> absolute MACs.

    A number with a decimal point (``0.5``) or a percent sign (``50%``) is a fraction of
    ``full_macs``; a plain integer or a number with a ``k``/``M``/``G``/``T`` suffix is
    absolute. Python floats are fractions, Python ints absolute.

    Raises:
        ValueError: unparsable text, or a fraction outside ``(0, 1]``.
    """
    if isinstance(text, bool):
        raise ValueError(f"bad budget {text!r}")
    if isinstance(text, int):
        return int(text)
    if isinstance(text, float):
        return _fraction(text, str(text), full_macs)
    match = _NUMBER.match(str(text))
    if not match:
        raise ValueError(
            f"bad budget {text!r}: use a fraction of the full MACs (0.5, 50%) or absolute MACs "
            "(20M, 1.5G, 300k, 123456)"
        )
    number, suffix = match.groups()
    if suffix == "%":
        return _fraction(float(number) / 100, text, full_macs)
    if suffix == "" and ("." in number or "e" in number.lower()):
        return _fraction(float(number), text, full_macs)
    return round(float(number) * _SUFFIX[suffix.lower()])


def _fraction(value: float, text: str, full_macs: int) -> int:
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"budget {text!r} read as a fraction of the full MACs must be in (0, 1]; "
            "write absolute budgets as integers or with a k/M/G suffix"
        )
    return int(value * full_macs)  # floor: the budget never exceeds the stated fraction


def resolve_budgets(
    sn: Supernet,
    budgets: Iterable[str | float | int],
    *,
    constraints: Constraints | None = None,
) -> list[int]:
    """Parse ``budgets`` and check each is reachable: ``smallest <= budget <= full``.

    Budgets are MACs, or -- when ``constraints.measure`` is ``"latency"`` -- latencies
    (``"12ms"``, or Python ints of nanoseconds), returned in integer nanoseconds. Duplicates
    are dropped; order is kept.

    Raises:
        ValueError: a bad budget, one of the other kind, one below the smallest reachable
            subnet (the message says its MACs or latency) or above the full model, or
            limits that even the smallest subnet breaks.
    """
    constraints = constraints or Constraints()
    smallest_cfg = sn.space.min()
    broken = constraints.broken(sn, smallest_cfg)
    if broken:
        raise ValueError(
            f"the limits exclude every subnet: the smallest one has {'; '.join(broken)}"
        )
    if constraints.measure == "latency":
        return _resolve_latency(sn, budgets, constraints)
    full = sn.macs()
    smallest = sn.macs(smallest_cfg)
    out: list[int] = []
    for item in budgets:
        if is_latency(item):
            raise ValueError(
                f"budget {item} is a latency: search it with a latency table "
                "(--latency-table LAT.json), apart from MACs budgets"
            )
        value = parse_budget(item, full)
        if value < smallest:
            raise ValueError(
                f"budget {item} = {value} MACs is below the smallest reachable subnet: "
                f"{smallest} MACs ({format_macs(smallest)}, {smallest / full:.1%} of full)"
            )
        if value > full:
            raise ValueError(
                f"budget {item} = {value} MACs is above the full model's {full} MACs "
                f"({format_macs(full)})"
            )
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError("no budget given")
    return out


def _resolve_latency(
    sn: Supernet, budgets: Iterable[str | float | int], constraints: Constraints
) -> list[int]:
    predict = constraints.latency.predict
    smallest = float(predict(sn.widths_vector(sn.space.min())))
    full = float(predict(sn.widths_vector(sn.space.max())))
    out: list[int] = []
    for item in budgets:
        # a Python int is already absolute, as for MACs: nanoseconds (what this returns)
        if isinstance(item, int) and not isinstance(item, bool):
            value = item
        else:
            ms = parse_latency(item)
            if ms is None:
                raise ValueError(
                    f"budget {item} is not a latency (12ms, 800us): a latency search takes "
                    "latency budgets only; give a MACs limit as --max-macs"
                )
            value = round(ms * NS_PER_MS)
        if value < round(smallest * NS_PER_MS):  # in ns, as the search compares
            raise ValueError(
                f"budget {item} is below the smallest reachable subnet: predicted "
                f"{format_ms(smallest)} ({smallest / full:.1%} of full)"
            )
        if value > round(full * NS_PER_MS):
            raise ValueError(f"budget {item} is above the full model's predicted {format_ms(full)}")
        if value not in out:
            out.append(value)
    if not out:
        raise ValueError("no budget given")
    return out


def format_macs(n: float | None) -> str:
    """``31021952 -> '31.02M'`` (for tables and messages); ``None`` (not measured) -> "—"."""
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def make_constraints(
    sn: Supernet,
    budgets: Iterable[str | float | int],
    *,
    table: LatencyTable | None = None,
    max_macs: str | float | int | None = None,
    max_params: str | float | int | None = None,
    max_latency: str | None = None,
) -> Constraints:
    """The constraints of a search: the budgets' measure (latency when they are latencies)
    and the further limits, parsed like budgets (``max_macs``: ``0.5`` or ``20M``;
    ``max_params``: a fraction of the full model's or ``1M``; ``max_latency``: ``8ms``).

    Raises:
        ValueError: budgets of both kinds, a bad limit, or a latency budget or limit without
            ``table`` (or with one made for another width space).
    """
    measure = budget_measure(budgets)
    latency_ms = None
    if max_latency is not None:
        latency_ms = parse_latency(str(max_latency))
        if latency_ms is None:
            raise ValueError(f"bad --max-latency {max_latency!r}: give a unit (8ms, 800us)")
    return Constraints(
        measure=measure,
        max_macs=None if max_macs is None else parse_budget(max_macs, sn.macs()),
        max_params=None if max_params is None else parse_budget(max_params, sn.params()),
        max_latency_ms=latency_ms,
        latency=None if table is None else table.bind(sn),
    )
