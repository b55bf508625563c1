"""``--latency-table`` and the limits ``--max-macs``, ``--max-params``, ``--max-latency``.

A latency table is valid only where it was measured: the table's model must be the
supernet's, and ``--latency-device`` / ``--latency-threads`` / ``--latency-batch`` (when
given) must be its settings, else the command stops with one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from widthsearch.search import Constraints, LatencyTable, load_latency_table, make_constraints
from widthsearch.supernet import Supernet

__all__ = ["add_latency_flags", "add_limit_flags", "constraints_from_args", "table_from_args"]


def add_latency_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("latency")
    group.add_argument("--latency-table", metavar="LAT.json", help="from `widthsearch profile`")
    group.add_argument("--latency-device", metavar="D", help="refuse a table not made on D")
    group.add_argument("--latency-threads", type=int, metavar="N", help="... nor with N threads")
    group.add_argument("--latency-batch", type=int, metavar="B", help="... nor at batch B")


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits every answer keeps, besides its budget")
    group.add_argument("--max-macs", metavar="M", help="MACs: 0.5 (of full) or 20M")
    group.add_argument("--max-params", metavar="P", help="parameters: 0.5 (of full) or 1M")
    group.add_argument("--max-latency", metavar="T", help="predicted latency: 8ms (needs a table)")


def table_from_args(
    args: argparse.Namespace, sn: Supernet, path: str | None = None
) -> LatencyTable | None:
    """The checked latency table of ``--latency-table`` or ``path`` (``None`` without one)."""
    path = getattr(args, "latency_table", None) or path
    if not path:
        return None
    table = load_latency_table(path)
    table.check(
        device=getattr(args, "latency_device", None),
        threads=getattr(args, "latency_threads", None),
        batch=getattr(args, "latency_batch", None),
        model=str(sn.meta.get("model", "")) or None,
        where=f"latency table {path}",
    )
    table.bind(sn)  # a table of another width space: one line now, not mid-search
    return table


def constraints_from_args(
    args: argparse.Namespace, sn: Supernet, budgets: Iterable[Any], search: dict[str, Any]
) -> Constraints:
    """The constraints of flags, falling back to the recipe's ``[search]`` table and limits."""

    def pick(flag: str) -> Any:
        value = getattr(args, flag, None)
        return value if value is not None else (search.get(flag) or None)

    return make_constraints(
        sn,
        list(budgets),
        table=table_from_args(args, sn, pick("latency_table")),
        max_macs=pick("max_macs"),
        max_params=pick("max_params"),
        max_latency=pick("max_latency"),
    )
