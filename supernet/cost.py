"""Exact analytic MACs and parameter counts of any width config, vectorised with numpy.

Every conv/linear MAC count and every parameter count is a sum of terms
``coef * w[a] * w[b]`` where ``w[a]``/``w[b]`` are group widths (or 1); a layer reading a
concatenation has one term per group it reads. Each layer's handler adds its own terms
(:meth:`LayerHandler.cost_terms`). The table of terms is built once from the trace;
evaluating a batch of configs is then two gathers and a matrix-vector product, so search
never waits on it. :meth:`CostModel.quadratic_form` publishes the same table as quadratic
forms (per-group linear and pairwise coefficients) for search's expectations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ._graph import TraceResult

__all__ = ["CostModel", "GatedQuadraticForm", "QuadraticForm"]

_ONE = -1  # index of the constant-1 column


class _Terms:
    """Sum of ``coef * w[a] * w[b] * (w[gate] > 0)``; index -1 stands for the constant 1."""

    def __init__(self) -> None:
        self.coef: dict[tuple[int, int, int], int] = defaultdict(int)
        self.gate = _ONE  # set while adding the terms of a layer inside a removable block

    def add(self, coef: int, a: int | tuple[int, ...], b: int | tuple[int, ...] = _ONE) -> None:
        # a layout stands for the sum of its groups' widths: expand the product
        for x in (a,) if isinstance(a, int) else a:
            for y in (b,) if isinstance(b, int) else b:
                if coef:
                    self.coef[(x, y, self.gate)] += coef

    def arrays(self, num_groups: int) -> tuple[np.ndarray, ...]:
        keys = sorted(self.coef)
        a, b, gate = (
            np.array([k[i] if k[i] >= 0 else num_groups for k in keys], dtype=np.int64)
            for i in range(3)
        )
        coef = np.array([self.coef[k] for k in keys], dtype=np.float64)
        return a, b, gate, coef


@dataclass(frozen=True)
class QuadraticForm:
    """``const + linear . w + w^T quad w`` over the ``G`` group widths.

    ``quad`` is upper triangular: ``quad[a, b]`` (``a < b``) is the coefficient of
    ``w[a] * w[b]`` and ``quad[a, a]`` that of ``w[a] ** 2``.
    """

    const: float
    linear: np.ndarray  # (G,)
    quad: np.ndarray  # (G, G)

    def value(self, widths: np.ndarray) -> np.ndarray:
        """The form at a width matrix ``(n, G)`` (float64)."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        return self.const + w @ self.linear + np.einsum("ng,gh,nh->n", w, self.quad, w)

    def is_zero(self) -> bool:
        return not (self.const or np.any(self.linear) or np.any(self.quad))


@dataclass(frozen=True)
class GatedQuadraticForm:
    """A cost as quadratic forms: ``main(w) - sum_g [w[g] == 0] * gated[g](w)``.

    Attributes:
        main: Every term; the cost itself while no width is 0.
        gated: For a removable group ``g`` (width 0 drops its residual block), the terms of
            the block that do not involve ``w[g]`` (those that do vanish by themselves), as a
            form in the other widths; only groups that have such terms, ascending.
    """

    main: QuadraticForm
    gated: dict[int, QuadraticForm]

    def value(self, widths: np.ndarray) -> np.ndarray:
        """The cost of a width matrix ``(n, G)`` (float64; equals the cost model)."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        out = self.main.value(w)
        for g, rest in self.gated.items():
            out = out - (w[:, g] == 0) * rest.value(w)
        return out


def _form(terms: tuple[np.ndarray, ...], num_groups: int, keep: np.ndarray) -> QuadraticForm:
    """The terms selected by ``keep`` as a quadratic form (gates ignored)."""
    a, b, _gate, coef = (x[keep] for x in terms)
    const = 0.0
    linear = np.zeros(num_groups)
    quad = np.zeros((num_groups, num_groups))
    for i, j, c in zip(a.tolist(), b.tolist(), coef.tolist(), strict=True):
        lo, hi = min(i, j), max(i, j)  # the constant column has the highest index
        if lo == num_groups:
            const += c
        elif hi == num_groups:
            linear[lo] += c
        else:
            quad[lo, hi] += c
    return QuadraticForm(const, linear, quad)


class CostModel:
    """MACs (multiply-accumulates of conv and linear layers, per sample) and parameters.

    MACs equal ``FlopCounterMode`` total / 2 on the extracted subnet and params equal its
    parameter count, exactly: both are sums over the same layers with the same shapes.
    """

    def __init__(
        self,
        trace: TraceResult,
        group_of_space: Mapping[int, int],
        *,
        gates: Mapping[str, int] | None = None,
    ) -> None:
        """Build the term table.

        Args:
            trace: Layers and channel spaces from tracing.
            group_of_space: Channel space id -> group index.
            gates: Module name -> group index whose width 0 removes that module (depth
                pruning); its terms count only while the group is wider than 0.
        """
        gates = gates or {}
        num_groups = len(set(group_of_space.values()))
        macs, params = _Terms(), _Terms()
        for layer in trace.layers:
            macs.gate = params.gate = gates.get(layer.module_name, _ONE)
            out_g = tuple(group_of_space[s] for s in layer.out_spaces)
            in_g = tuple(group_of_space[s] for s in layer.in_spaces)
            layer.handler.cost_terms(layer, in_g, out_g, macs, params)
        macs.gate = params.gate = _ONE
        macs.add(trace.constant_macs, _ONE)  # frozen ops: the same at every width
        params.add(trace.other_params - sum(trace.other_params_of.get(n, 0) for n in gates), _ONE)
        for name, gate in gates.items():
            params.gate = gate
            params.add(trace.other_params_of.get(name, 0), _ONE)
        self.num_groups = num_groups
        self._macs = macs.arrays(num_groups)
        self._params = params.arrays(num_groups)

    def _evaluate(self, terms: tuple[np.ndarray, np.ndarray, np.ndarray], widths: np.ndarray):
        a, b, gate, coef = terms
        widths = np.asarray(widths, dtype=np.float64)
        single = widths.ndim == 1
        widths = np.atleast_2d(widths)
        if widths.shape[1] != self.num_groups:
            raise ValueError(f"expected {self.num_groups} widths per config, got {widths.shape[1]}")
        out = np.empty(len(widths), dtype=np.int64)
        for start in range(0, len(widths), 8192):  # bounded temporaries
            chunk = widths[start : start + 8192]
            ext = np.concatenate([chunk, np.ones((len(chunk), 1))], axis=1)
            products = ext[:, a] * ext[:, b] * (ext[:, gate] > 0)
            out[start : start + 8192] = np.rint(products @ coef).astype(np.int64)
        return int(out[0]) if single else out

    def quadratic_form(self, cost: Literal["macs", "params"] = "macs") -> GatedQuadraticForm:
        """The term table of ``cost`` as quadratic forms of the group widths (exact)."""
        if cost not in ("macs", "params"):
            raise ValueError(f"cost must be 'macs' or 'params', got {cost!r}")
        terms = self._macs if cost == "macs" else self._params
        a, b, gate, _coef = terms
        n = self.num_groups
        main = _form(terms, n, np.ones(len(a), dtype=bool))
        gated = {}
        for g in sorted(set(gate.tolist()) - {n}):
            rest = _form(terms, n, (gate == g) & (a != g) & (b != g))
            if not rest.is_zero():
                gated[g] = rest
        return GatedQuadraticForm(main, gated)

    def macs(self, widths: np.ndarray):
        """MACs per sample for one width vector ``(G,)`` (-> int) or a matrix ``(n, G)``."""
        return self._evaluate(self._macs, widths)

    def params(self, widths: np.ndarray):
        """Parameter count for one width vector ``(G,)`` (-> int) or a matrix ``(n, G)``."""
        return self._evaluate(self._params, widths)
