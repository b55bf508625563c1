"""MACs as explicit quadratic forms of the group widths, for expectations and autograd.

While every width is positive, each conv/linear MAC count is ``coef * w[a] * w[b]`` (or
``coef * w[a]``), so ``MACs(w) = P(w) = c + l.w + sum_{g<=h} Q_gh w_g w_h`` exactly. A
removable group at width 0 also switches off the layers of its block that do not involve
its own width (e.g. a bottleneck's last conv); that part is another quadratic form
``R_g`` of the *other* widths, so

    MACs(w) = P(w) - sum_{g removable} [w_g == 0] R_g(w).

The cost model publishes ``P`` and every ``R_g`` (:meth:`CostModel.quadratic_form`, read
from the same term table it evaluates). With independent group widths, the expectation
follows from each width's first two moments and ``P(w_g = 0)``:

    E[MACs] = E[P] - sum_g P(w_g = 0) E[R_g]   (R_g does not involve w_g)

-- exact, and differentiable in torch.
"""

from __future__ import annotations

import numpy as np
import torch
from widthsearch.supernet import QuadraticForm, Supernet

__all__ = ["MacsPolynomial", "Quadratic"]


class Quadratic:
    """Moments of a published form ``c + l.w + w^T Q w`` (``Q`` upper triangular, diagonal
    = squared terms) for widths drawn independently per group."""

    def __init__(self, form: QuadraticForm) -> None:
        self.form = form
        self.const, self.linear, self.quad = form.const, form.linear, form.quad
        self._off = np.triu(self.quad, 1)
        self._diag = np.diag(self.quad).copy()

    def value(self, w: np.ndarray) -> np.ndarray:
        return self.form.value(w)

    def expected(self, mean: np.ndarray, second: np.ndarray) -> float:
        return float(
            self.const + self.linear @ mean + mean @ self._off @ mean + self._diag @ second
        )

    def expected_torch(self, mean: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        dtype = mean.dtype
        linear = torch.as_tensor(self.linear, dtype=dtype)
        off = torch.as_tensor(self._off, dtype=dtype)
        diag = torch.as_tensor(self._diag, dtype=dtype)
        return self.const + linear @ mean + mean @ off @ mean + diag @ second


class MacsPolynomial:
    """Exact quadratic-form description of ``sn.cost.macs`` over all ``G`` groups.

    Attributes:
        main: ``P``, valid while no width is 0.
        removed: ``{group index: R_g}`` for removable groups whose removal also switches off
            terms not involving their own width (empty for basic residual blocks).
    """

    def __init__(self, sn: Supernet) -> None:
        self.form = sn.cost.quadratic_form("macs")
        self.main = Quadratic(self.form.main)
        self.removed: dict[int, Quadratic] = {
            g: Quadratic(rest) for g, rest in self.form.gated.items()
        }

    def value(self, widths: np.ndarray) -> np.ndarray:
        """MACs of a width matrix ``(n, G)`` (float64; equals the cost model)."""
        return self.form.value(widths)

    def expected(
        self, mean: np.ndarray, second: np.ndarray, zero: np.ndarray | None = None
    ) -> float:
        """Expected MACs from per-group ``E[w]``, ``E[w^2]`` and ``P(w = 0)`` (length G)."""
        out = self.main.expected(mean, second)
        for g, rest in self.removed.items():
            if zero is not None and zero[g] > 0:
                out -= float(zero[g]) * rest.expected(mean, second)
        return out

    def expected_torch(
        self, mean: torch.Tensor, second: torch.Tensor, zero: torch.Tensor | None = None
    ) -> torch.Tensor:
        """As :meth:`expected`, differentiable."""
        out = self.main.expected_torch(mean, second)
        for g, rest in self.removed.items():
            if zero is not None:
                out = out - zero[g] * rest.expected_torch(mean, second)
        return out
