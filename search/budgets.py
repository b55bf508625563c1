"""MACs budgets: parse ``0.5`` / ``50%`` (fraction of the full model) or ``20M`` / ``1.5G`` /
``300k`` / ``123456`` (absolute), and check them against what the supernet can reach.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from widthsearch.supernet import Supernet

__all__ = ["format_macs", "parse_budget", "resolve_budgets"]

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


def resolve_budgets(sn: Supernet, budgets: Iterable[str | float | int]) -> list[int]:
    """Parse ``budgets`` and check each is reachable: ``min MACs <= budget <= full MACs``.

    Duplicates are dropped; order is kept.

    Raises:
        ValueError: a bad budget, one below the smallest reachable MACs (the message says that
            number) or one above the full model.
    """
    full = sn.macs()
    smallest = sn.macs(sn.space.min())
    out: list[int] = []
    for item in budgets:
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


def format_macs(n: float | None) -> str:
    """``31021952 -> '31.02M'`` (for tables and messages); ``None`` (not measured) -> "—"."""
    if n is None:
        return "—"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))
