"""The strategy interface and the name registry (timm-style).

A strategy answers many budgets in one call: ``search(supernet, evaluator, budgets=[...],
seed=..., **options)`` returns one :class:`~widthsearch.search.SearchAnswer` per budget, in
the budgets' order. The base class turns the call into a :class:`SearchCall` (index space,
validated options) for the strategy's :meth:`Strategy.run`. Strategies register themselves
by name with :func:`register_strategy`; :func:`get_strategy` builds one.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from widthsearch.supernet import Supernet

from ._space import IndexSpace
from .constraints import NS_PER_MS, Constraints
from .evaluator import SubnetEvaluator
from .result import SearchAnswer

__all__ = [
    "CLOSE_ENOUGH",
    "NoOptions",
    "SearchCall",
    "SearchResult",
    "Strategy",
    "get_strategy",
    "list_strategies",
    "register_strategy",
]

# A result below this share of its budget says so in its notes.
CLOSE_ENOUGH = 0.9


# The name strategies' answers had before SearchAnswer (one row type for the strategies and
# the search file); kept so that ``from widthsearch.search import SearchResult`` still works.
SearchResult = SearchAnswer


@dataclass(frozen=True)
class NoOptions:
    """The options of a strategy that takes none."""


@dataclass(frozen=True)
class SearchCall:
    """One :meth:`Strategy.search` call as its strategy's :meth:`Strategy.run` sees it.

    Attributes:
        space: The supernet's index space, with the call's constraints.
        evaluator: Scores configs.
        budgets: Absolute budgets, in the caller's order (MACs, or nanoseconds of predicted
            latency when ``space.constraints.measure`` is ``"latency"``).
        seed: Seeds everything random in the call.
        options: The strategy's ``Options`` instance (validated).
    """

    space: IndexSpace
    evaluator: SubnetEvaluator
    budgets: list[int]
    seed: int
    options: Any


class Strategy(abc.ABC):
    """Base class: subclasses implement :meth:`run`, declare their keyword options as a frozen
    dataclass ``Options`` (checked in its ``__post_init__``) and register with a name."""

    name: str = ""
    Options: type = NoOptions

    def search(
        self,
        supernet: Supernet,
        evaluator: SubnetEvaluator,
        *,
        budgets: Sequence[int],
        seed: int,
        constraints: Constraints | None = None,
        **options: Any,
    ) -> list[SearchAnswer]:
        """One result per budget, in the order given: absolute MACs, or -- when
        ``constraints.measure`` is ``"latency"`` -- nanoseconds of predicted latency. Every
        answer also keeps the further limits of ``constraints``.

        Raises:
            ValueError: an option the strategy does not have, or a bad option value (before
                any work).
        """
        opts = self.parse_options(options)
        space = self.index_space(supernet, constraints, opts)
        return self.run(SearchCall(space, evaluator, [int(b) for b in budgets], seed, opts))

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> Any:
        """``options`` as the strategy's ``Options``; an unknown one is an error (a typo must
        not silently run the default)."""
        unknown = set(options) - {f.name for f in dataclasses.fields(cls.Options)}
        if unknown:
            raise ValueError(f"strategy {cls.name!r} has no option(s) {', '.join(sorted(unknown))}")
        return cls.Options(**options)

    def index_space(
        self, supernet: Supernet, constraints: Constraints | None, options: Any
    ) -> IndexSpace:
        """The space the strategy works in (override to change how it is built)."""
        return IndexSpace(supernet, constraints=constraints)

    @abc.abstractmethod
    def run(self, call: SearchCall) -> list[SearchAnswer]:
        """The strategy itself: one checked result (:meth:`result`) per budget of ``call``."""

    # -- helpers shared by strategies ----------------------------------------------------
    def result(
        self,
        space: IndexSpace,
        evaluator: SubnetEvaluator,
        idx: np.ndarray,
        budget: int,
        *,
        evaluations: int,
        seconds: float,
        notes: Sequence[str] = (),
        score: float | None = None,
    ) -> SearchAnswer:
        """Build a checked result for index vector ``idx`` (scored if ``score`` is None)."""
        cfg = space.config(idx)
        cost = int(space.cost(idx))
        if cost > budget:
            broken = space.constraints.broken(space.sn, cfg)
            raise AssertionError(
                f"{self.name}: cost {cost} over budget {budget}"
                + (f" ({'; '.join(broken)})" if broken else "")
            )
        if score is None:
            before = evaluator.evaluations
            score = evaluator.score(cfg)
            evaluations += evaluator.evaluations - before
        notes = list(notes)
        if cost < CLOSE_ENOUGH * budget:
            notes.append(close_note(space, cost, budget))
        latency = space.constraints.measure == "latency"
        return SearchAnswer(
            strategy=self.name,
            budget_macs=None if latency else int(budget),
            budget_ms=budget / NS_PER_MS if latency else None,
            latency_ms=space.latency_ms(idx),
            macs=int(space.macs(idx)),
            params=space.params(idx),
            score=float(score),
            widths=cfg,
            evaluations=int(evaluations),
            seconds=float(seconds),
            notes="; ".join(n for n in notes if n),
        )


def close_note(space: IndexSpace, cost: int, budget: int) -> str:
    note = f"uses {cost / budget:.1%} of the budget (below {CLOSE_ENOUGH:.0%})"
    return note + ("; further limits apply" if space.constraints.limited else "")


_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a :class:`Strategy` subclass available as ``name``."""

    def decorator(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_strategies() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """A new instance of the strategy registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {', '.join(list_strategies())}"
        ) from None


class Timer:
    """``with Timer() as t: ...; t.seconds`` (wall time, for results)."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
