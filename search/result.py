"""The search result as a typed artefact: ``search.json``.

:func:`~widthsearch.search.search_widths` returns a :class:`SearchDocument`; ``widthsearch
search`` and ``widthsearch run`` write its :meth:`~SearchDocument.to_dict` as JSON, and
extraction and ``widthsearch run`` read a file back with :meth:`SearchDocument.from_dict`,
which checks every key and names the first bad one. A :class:`SearchAnswer` is one
strategy's answer for one budget: a strategy returns it with exact values, the document
keeps it as the file holds it (:meth:`SearchAnswer.as_written`), so an answer read back from
a file equals the one the search document holds.

Files of earlier versions read back: apart from ``results`` every top-level key may be
missing (``None`` here, and left out again when written), so ``to_dict(from_dict(d)) == d``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["SearchAnswer", "SearchDocument"]


def _check(value: Any, kind: str, source: str, key: str, *, null: bool = False) -> Any:
    """``value`` if it is of ``kind`` (JSON-wise: ``int``, ``number``, ``str``, ``object``,
    ``list``; ``None`` too when ``null``), else one ``ValueError`` naming ``key``."""
    if value is None and null:
        return None
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "object": isinstance(value, Mapping),
        "list": isinstance(value, list | tuple),
    }[kind]
    if not ok:
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(
            f"{source}: {key} must be {article} {kind}{' or null' if null else ''}, got {value!r}"
        )
    return value


def _required(kind: str, *, null: bool = False) -> Any:
    """A key every file has (``kind`` as :func:`_check` reads it; ``null``: may be null)."""
    return field(metadata={"kind": kind, "required": True, "null": null})


def _optional(kind: str, default: Any = None) -> Any:
    """A key a file may lack (then ``default``; a null reads as ``None``)."""
    return field(default=default, metadata={"kind": kind, "required": False, "null": True})


def _parse(cls: type, raw: Any, source: str, key: str) -> dict[str, Any]:
    """The checked values of the object ``raw`` (``key`` in ``source``; ``""``: the whole
    document) for the fields of ``cls``, each by the ``kind`` in its metadata."""
    _check(raw, "object", source, key or "the document")
    known = [f.name for f in fields(cls)]
    unknown = [name for name in raw if name not in known]
    if unknown:
        inside = f" in {key}" if key else ""
        raise ValueError(
            f"{source}: unknown key {unknown[0]!r}{inside} (known: {', '.join(known)})"
        )
    missing = [f.name for f in fields(cls) if f.metadata["required"] and f.name not in raw]
    if missing:
        raise ValueError(f"{source}: {key or 'the document'} has no {missing[0]!r}")
    values = {}
    for f in fields(cls):
        if f.name in raw:
            name = f"{key}.{f.name}" if key else f.name
            value = _check(raw[f.name], f.metadata["kind"], source, name, null=f.metadata["null"])
            if value is not None or f.metadata["required"]:  # an optional null: left out
                values[f.name] = value
    return values


@dataclass(frozen=True, kw_only=True)
class SearchAnswer:
    """One strategy's answer for one budget: what :meth:`Strategy.search
    <widthsearch.search.Strategy.search>` returns per budget, and a row of ``results`` in
    ``search.json``.

    A strategy's answer holds exact values; :meth:`to_dict` writes ``score`` and
    ``latency_ms`` to 6 decimals and ``seconds`` to 3, and :meth:`as_written` is the answer
    with the values the file holds.

    Attributes:
        strategy: Strategy name.
        budget_macs: The MACs budget (absolute MACs per sample; ``None`` for a latency
            budget).
        macs: MACs of ``widths`` (within the budget), exact.
        params: Parameter count of the extracted subnet.
        score: Evaluator score on the held-out split (mean left/right held-out top-1 after BN
            recalibration with the default metric).
        widths: Full width config (group -> channels, fixed groups included).
        evaluations, seconds: Subnet evaluations and wall time the answer cost (the whole
            call's for strategies that share work across budgets: ``notes`` says so).
        notes: Anything the reader should know (shared cost, budget not closely reachable;
            ``""``: nothing).
        budget_ms: The latency budget in milliseconds, predicted (``None`` for a MACs budget).
        latency_ms: Predicted latency of ``widths`` (``None`` without a latency table).
    """

    strategy: str = _required("str")
    budget_macs: int | None = _required("int", null=True)
    macs: int = _required("int")
    params: int = _required("int")
    score: float = _required("number")
    widths: Mapping[str, int] = _required("object")
    evaluations: int = _required("int")
    seconds: float = _required("number")
    notes: str = _optional("str", "")
    budget_ms: float | None = _optional("number")
    latency_ms: float | None = _optional("number")

    def as_written(self) -> SearchAnswer:
        """The answer with the values the file holds (:meth:`to_dict` read back)."""
        return type(self).from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The row as written: rounded, and without the optional keys that hold nothing."""
        out = asdict(self)
        out["score"] = round(float(self.score), 6)
        out["seconds"] = round(float(self.seconds), 3)
        for key in ("notes", "budget_ms", "latency_ms"):
            if out[key] in ("", None):
                del out[key]
        if self.latency_ms is not None:
            out["latency_ms"] = round(float(self.latency_ms), 6)
        return out

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "search result", key: str = "") -> SearchAnswer:
        """A row read back (``key``: where it stands in ``source``, e.g. ``results[2]``).

        Raises:
            ValueError: a missing, unknown or mistyped key, named.
        """
        values = _parse(cls, raw, source, key)
        for group, width in values["widths"].items():
            _check(
                width, "int", source, f"{key}.widths[{group!r}]" if key else f"widths[{group!r}]"
            )
        return cls(**{**values, "widths": dict(values["widths"])})


@dataclass(frozen=True, kw_only=True)
class SearchDocument:
    """What ``widthsearch search`` writes (``search.json``), in the order it writes it.

    Attributes:
        supernet: The supernet file searched.
        model: The model's registered name.
        full_macs, min_macs, full_params: The full and the narrowest network's cost.
        seed: The seed every strategy ran with.
        budgets: The absolute budgets (MACs, or nanoseconds of predicted latency).
        evaluator: The evaluator's figures (:meth:`SubnetEvaluator.stats`), as recorded.
        calls: One object per strategy run: ``strategy``, ``evaluations``,
            ``evaluation_seconds``, ``seconds``.
        results: One answer per strategy and budget, strategies in the order they ran.
        constraints: The budgets' measure and the further limits
            (:meth:`Constraints.to_dict`), when any applied.
        full_latency_ms: The full network's predicted latency, with a latency table.
        recipe_search: The recipe's ``[search]`` table, written by ``widthsearch run`` (which
            reuses the file while it is unchanged).

    Every field but ``results`` is ``None`` where a file lacks it (an older or hand-made
    file) and is then not written.
    """

    supernet: str | None = _optional("str")
    model: str | None = _optional("str")
    full_macs: int | None = _optional("int")
    min_macs: int | None = _optional("int")
    full_params: int | None = _optional("int")
    seed: int | None = _optional("int")
    budgets: Sequence[int] | None = _optional("list")
    evaluator: Mapping[str, Any] | None = _optional("object")
    calls: Sequence[Mapping[str, Any]] | None = _optional("list")
    results: Sequence[SearchAnswer] = _required("list")
    constraints: Mapping[str, Any] | None = _optional("object")
    full_latency_ms: float | None = _optional("number")
    recipe_search: Mapping[str, Any] | None = _optional("object")

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (plain types, containers of its own)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "results":
                out[f.name] = [answer.to_dict() for answer in value]
            elif value is not None:
                plain = list(value) if f.metadata["kind"] == "list" else value
                out[f.name] = copy.deepcopy(dict(plain) if isinstance(plain, Mapping) else plain)
        return out

    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "search file") -> SearchDocument:
        """A document read back (``source`` names it in errors).

        Raises:
            ValueError: not a JSON object with a ``results`` list (a foreign file), or a
                missing, unknown or mistyped key, named (``results[2].score``).
        """
        if not isinstance(raw, Mapping) or not isinstance(raw.get("results"), list | tuple):
            raise ValueError(f"{source}: no 'results' list (not a widthsearch search JSON)")
        values = _parse(cls, raw, source, "")
        for name, kind in (("budgets", "int"), ("calls", "object")):
            for i, item in enumerate(values.get(name) or ()):
                _check(item, kind, source, f"{name}[{i}]")
        values = {name: copy.deepcopy(v) for name, v in values.items() if name != "results"}
        for name in ("budgets", "calls"):
            if name in values:
                values[name] = tuple(values[name])
        values["results"] = tuple(
            SearchAnswer.from_dict(row, source=source, key=f"results[{i}]")
            for i, row in enumerate(raw["results"])
        )
        return cls(**values)

    def answers(self, strategy: str) -> list[SearchAnswer]:
        """The answers of ``strategy``, in the document's order."""
        return [answer for answer in self.results if answer.strategy == strategy]

    @property
    def strategies(self) -> list[str]:
        """The strategies with answers, sorted."""
        return sorted({answer.strategy for answer in self.results})
