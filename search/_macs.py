"""MACs as explicit quadratic forms of the group widths, for expectations and autograd.

While every width is positive, each conv/linear MAC count is ``coef * w[a] * w[b]`` (or
``coef * w[a]``), so ``MACs(w) = P(w) = c + l.w + sum_{g<=h} Q_gh w_g w_h`` exactly. A
removable group at width 0 also switches off the layers of its block that do not involve
its own width (e.g. a bottleneck's last conv); that part is another quadratic form
``R_g`` of the *other* widths, so

    MACs(w) = P(w) - sum_{g removable} [w_g == 0] R_g(w).

We recover every coefficient from the public cost model by finite differences at integer
width vectors (``sn.cost.macs`` accepts any widths) around an origin of ones (all blocks
present) -- ``f(o)``, ``f(o + e_g)``, ``f(o + 2 e_g)``, ``f(o + e_g + e_h)`` -- instead of
reading its private term table, and check the result against the cost model on random
configs (with random removed blocks). With independent group widths, the expectation
follows from each width's first two moments and ``P(w_g = 0)``:

    E[MACs] = E[P] - sum_g P(w_g = 0) E[R_g]   (R_g does not involve w_g)

-- exact, and differentiable in torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from widthsearch.supernet import Supernet

__all__ = ["MacsPolynomial", "Quadratic"]


class Quadratic:
    """``c + l.w + w^T Q w`` with ``Q`` upper triangular (diagonal = squared terms)."""

    def __init__(self, const: float, linear: np.ndarray, quad: np.ndarray) -> None:
        self.const, self.linear, self.quad = const, linear, quad
        self._off = np.triu(quad, 1)
        self._diag = np.diag(quad).copy()

    @classmethod
    def fit(
        cls, f: Callable[[np.ndarray], np.ndarray], origin: np.ndarray, free: np.ndarray
    ) -> Quadratic:
        """Exact coefficients of a quadratic ``f`` in the ``free`` coordinates around ``origin``."""
        n = len(origin)
        eye = np.eye(n, dtype=np.int64)[free]
        k = len(free)
        pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
        rows = [origin, *(origin + eye), *(origin + 2 * eye)]
        rows += [origin + eye[a] + eye[b] for a, b in pairs]
        v = f(np.stack(rows).astype(np.float64))
        f0, f1, f2 = v[0], v[1 : k + 1], v[k + 1 : 2 * k + 1]
        # in shifted coordinates u = w - origin
        diag = (f2 - 2 * f1 + f0) / 2
        quad = np.zeros((n, n))
        quad[free, free] = diag
        for j, (a, b) in enumerate(pairs):
            quad[free[a], free[b]] = v[2 * k + 1 + j] - f1[a] - f1[b] + f0
        lin_u = np.zeros(n)
        lin_u[free] = f1 - f0 - diag
        o = origin.astype(np.float64)
        # back to w: P = f0 - l.o + o^T Q o + (l - (Q + Q^T) o).w + w^T Q w
        const = float(f0 - lin_u @ o + o @ quad @ o)
        linear = lin_u - (quad + quad.T) @ o
        return cls(const, linear, quad)

    def value(self, w: np.ndarray) -> np.ndarray:
        return self.const + w @ self.linear + np.einsum("ng,gh,nh->n", w, self.quad, w)

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
        n = len(sn.space.groups)

        def cost(w: np.ndarray) -> np.ndarray:
            return sn.cost.macs(w).astype(np.float64)

        ones = np.ones(n, dtype=np.int64)
        self.main = Quadratic.fit(cost, ones, np.arange(n))
        self.removed: dict[int, Quadratic] = {}
        for g, group in enumerate(sn.space.groups):
            if not getattr(group, "removable", False):
                continue
            origin = ones.copy()
            origin[g] = 0
            free = np.array([i for i in range(n) if i != g])
            rest = Quadratic.fit(lambda w: self.main.value(w) - cost(w), origin, free)
            if np.any(rest.linear) or np.any(rest.quad) or rest.const:
                self.removed[g] = rest
        self._check(sn)

    def _check(self, sn: Supernet) -> None:
        rng = np.random.default_rng(0)
        cfgs = [sn.space.sample(rng) for _ in range(24)] + [sn.space.max(), sn.space.min()]
        removable = [g.name for g in sn.space.groups if getattr(g, "removable", False)]
        for cfg in cfgs[:12]:
            for name in removable:
                if rng.random() < 0.5:
                    cfg[name] = 0
        widths = sn.space.encode(cfgs)
        if not np.allclose(self.value(widths), sn.cost.macs(widths), rtol=1e-9, atol=0.5):
            raise RuntimeError("MACs are not a gated quadratic form of the widths for this model")

    def value(self, widths: np.ndarray) -> np.ndarray:
        """MACs of a width matrix ``(n, G)`` (float64; equals the cost model)."""
        w = np.atleast_2d(np.asarray(widths, dtype=np.float64))
        out = self.main.value(w)
        for g, rest in self.removed.items():
            out = out - (w[:, g] == 0) * rest.value(w)
        return out

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
