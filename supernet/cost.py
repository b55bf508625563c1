"""Exact analytic MACs and parameter counts of any width config, vectorised with numpy.

Every conv/linear MAC count and every parameter count is a sum of terms
``coef * w[a] * w[b]`` where ``w[a]``/``w[b]`` are group widths (or 1). The table of
terms is built once from the trace; evaluating a batch of configs is then two gathers and
a matrix-vector product, so search never waits on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from ._graph import TraceResult

__all__ = ["CostModel"]

_ONE = -1  # index of the constant-1 column


class _Terms:
    """Sum of ``coef * w[a] * w[b] * (w[gate] > 0)``; index -1 stands for the constant 1."""

    def __init__(self) -> None:
        self.coef: dict[tuple[int, int, int], int] = defaultdict(int)
        self.gate = _ONE  # set while adding the terms of a layer inside a removable block

    def add(self, coef: int, a: int, b: int = _ONE) -> None:
        if coef:
            self.coef[(a, b, self.gate)] += coef

    def arrays(self, num_groups: int) -> tuple[np.ndarray, ...]:
        keys = sorted(self.coef)
        a, b, gate = (
            np.array([k[i] if k[i] >= 0 else num_groups for k in keys], dtype=np.int64)
            for i in range(3)
        )
        coef = np.array([self.coef[k] for k in keys], dtype=np.float64)
        return a, b, gate, coef


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
            macs.gate = params.gate = gates.get(layer.name, _ONE)
            out_g = group_of_space[layer.out_space]
            in_g = group_of_space[layer.in_space]
            module = layer.module
            if layer.kind == "conv":
                kernel = int(np.prod(module.kernel_size))
                if layer.group_width:  # grouped/depthwise: in-channels per group are fixed
                    for call in layer.calls:
                        macs.add(kernel * call.positions * layer.group_width, out_g)
                    params.add(kernel * layer.group_width, out_g)
                else:
                    for call in layer.calls:
                        macs.add(kernel * call.positions, out_g, in_g)
                    params.add(kernel, out_g, in_g)
                params.add(int(module.bias is not None), out_g)
            elif layer.kind == "linear":
                for call in layer.calls:
                    macs.add(call.positions * layer.in_factor, out_g, in_g)
                params.add(layer.in_factor, out_g, in_g)
                params.add(int(module.bias is not None), out_g)
            else:  # batch norm: weight and bias when affine
                params.add(2 * int(module.affine), out_g)
        params.gate = _ONE
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

    def macs(self, widths: np.ndarray):
        """MACs per sample for one width vector ``(G,)`` (-> int) or a matrix ``(n, G)``."""
        return self._evaluate(self._macs, widths)

    def params(self, widths: np.ndarray):
        """Parameter count for one width vector ``(G,)`` (-> int) or a matrix ``(n, G)``."""
        return self._evaluate(self._params, widths)
