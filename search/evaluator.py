"""The subnet evaluator: how good is a width config, measured on the supernet itself.

Score = mean over the left and right subnets of a held-out metric on a split of the
*training* data (never the test set), each after BN recalibration (AutoSlim, BCNet).
Held-out and calibration images are loaded once as tensors in fixed batches, so scoring is
a pure function of the config: deterministic, and cached per config. Metrics (higher is
better): ``top1``; ``ce``, minus the mean cross-entropy; ``kd``, minus the mean
``KL(teacher || subnet)`` against a trained network's predictions on the same images. The
losses use every image's full prediction, not only its arg-max, so they are less noisy than
top-1 on the same images.

Recalibration overwrites the running stats of the active channels in the supernet itself.
The evaluator snapshots every BN buffer when it is built and puts them back after each
evaluation, so the supernet's full-width statistics survive a search.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from widthsearch.supernet import SIDES, Supernet
from widthsearch.supernet.bn import bn_layers, recalibrate_bn
from widthsearch.supernet.runtime import Runtime

from .scoring import ScoringData

__all__ = ["METRICS", "SubnetEvaluator"]

METRICS = ("top1", "ce", "kd")


class SubnetEvaluator:
    """Scores width configs of one supernet on fixed held-out images.

    Args:
        supernet: The trained supernet (its BN buffers are snapshotted now).
        images: Held-out images ``(N, C, H, W)`` (already normalised).
        labels: Their labels ``(N,)``.
        calib_images: Images for BN recalibration (``(M, C, H, W)``), used in fixed batches.
        batch_size: Batch size for scoring and calibration.
        sides: The BCNet sides averaged into a score. Both for a BCNet supernet; only
            ``("left",)`` for a sandwich-rule one, whose right-aligned slices never trained.
        metric: ``"top1"``, ``"ce"`` or ``"kd"`` (see the module docstring).
        teacher_logits: The trained network's logits on ``images`` (``metric="kd"``).
        fit: Held-out ``(images, labels)`` disjoint from ``images``, for strategies that fit
            parameters on data (relax): scores stay measured on images nothing fitted.
        runtime: Mixed precision and memory format of the scoring passes (default: full
            precision); the images are kept on the supernet's device.

    Attributes:
        evaluations: Configs actually evaluated (cache misses).
        calls: All ``score`` calls, cache hits included.
        images_seen: Images forwarded (calibration + scoring), for throughput.
        seconds: Time spent evaluating.
    """

    def __init__(
        self,
        supernet: Supernet,
        images: torch.Tensor,
        labels: torch.Tensor,
        calib_images: torch.Tensor,
        *,
        batch_size: int = 250,
        sides: Sequence[str] = SIDES,
        metric: str = "top1",
        teacher_logits: torch.Tensor | None = None,
        fit: tuple[torch.Tensor, torch.Tensor] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        if metric == "kd" and (teacher_logits is None or len(teacher_logits) != len(images)):
            raise ValueError("metric 'kd' needs the teacher's logits, one row per held-out image")
        if not sides or any(side not in SIDES for side in sides):
            raise ValueError(f"sides must be a non-empty subset of {SIDES}, got {sides!r}")
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError("the evaluator needs held-out images, one label per image")
        if len(calib_images) == 0:
            raise ValueError("the evaluator needs calibration images (calib_batches >= 1)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.supernet = supernet
        self.batch_size = batch_size
        self.side_names = tuple(sides)
        device = next(supernet.parameters()).device
        # scored where the supernet is, in the runtime's precision and layout
        self.runtime = dataclasses.replace(runtime or Runtime(), device=device).local()
        self._batches = [
            (self.runtime.batch(x), y.to(device))
            for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True)
        ]
        self._calib = [self.runtime.batch(x) for x in calib_images.split(batch_size)]
        self.metric = metric
        self._fit = (
            [
                (x.to(device), y.to(device))
                for x, y in zip(fit[0].split(batch_size), fit[1].split(batch_size), strict=True)
            ]
            if fit is not None
            else None
        )
        self._teacher = (
            [t.to(device) for t in teacher_logits.split(batch_size)]
            if teacher_logits is not None
            else None
        )
        self.num_images = len(images)
        self.num_calib = len(calib_images)
        self._cache: dict[tuple[int, ...], tuple[float, float]] = {}
        self._snapshot = self._bn_buffers_copy()
        self.evaluations = 0
        self.calls = 0
        self.images_seen = 0
        self.seconds = 0.0

    # -- construction from data ------------------------------------------------------------
    @classmethod
    def from_scoring(
        cls,
        supernet: Supernet,
        data: ScoringData,
        *,
        metric: str = "top1",
        teacher: torch.nn.Module | None = None,
        runtime: Runtime | None = None,
    ) -> SubnetEvaluator:
        """The evaluator over :func:`~widthsearch.search.scoring.scoring_data`'s images.

        ``teacher`` (for ``metric="kd"``) is run once on the scoring images.
        """
        teacher_logits = None
        if teacher is not None:
            teacher.eval()
            device = next(supernet.parameters()).device
            with torch.no_grad():
                teacher_logits = torch.cat(
                    [teacher(x.to(device)).cpu() for x in data.images.split(data.batch_size)]
                )
        return cls(
            supernet,
            data.images,
            data.labels,
            data.calib,
            batch_size=data.batch_size,
            sides=data.sides,
            metric=metric,
            teacher_logits=teacher_logits,
            fit=data.fit,
            runtime=runtime,
        )

    # -- BN buffers --------------------------------------------------------------------------
    def _bn_buffers_copy(self) -> list[list[torch.Tensor]]:
        return [
            [b.detach().clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)]
            for m in bn_layers(self.supernet)
        ]

    @torch.no_grad()
    def restore_bn(self) -> None:
        """Put back the BN running stats the supernet had when the evaluator was built."""
        for m, saved in zip(bn_layers(self.supernet), self._snapshot, strict=True):
            for buf, value in zip(
                (m.running_mean, m.running_var, m.num_batches_tracked), saved, strict=True
            ):
                buf.copy_(value)

    # -- scoring -----------------------------------------------------------------------------
    def key(self, cfg: Mapping[str, int]) -> tuple[int, ...]:
        """Cache key: the config's width tuple in group order (validated)."""
        return tuple(int(w) for w in self.supernet.widths_vector(cfg))

    def clear_cache(self) -> None:
        """Forget cached scores (counters keep running)."""
        self._cache.clear()

    def cached(self, cfg: Mapping[str, int]) -> bool:
        return self.key(cfg) in self._cache

    def sides(self, cfg: Mapping[str, int]) -> tuple[float, ...]:
        """Held-out metric of ``cfg`` per side in ``side_names``, each after BN recalibration."""
        key = self.key(cfg)
        self.calls += 1
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        start = time.perf_counter()
        sn = self.supernet
        was_training = sn.training
        full = sn.space.decode(key)
        try:
            result = tuple(self._side_score(full, side) for side in self.side_names)
        finally:
            self.restore_bn()
            sn.train(was_training)
        self.seconds += time.perf_counter() - start
        self.evaluations += 1
        self._cache[key] = result  # type: ignore[assignment]
        return result  # type: ignore[return-value]

    def score(self, cfg: Mapping[str, int]) -> float:
        """Mean held-out metric over the scored sides (cached)."""
        per_side = self.sides(cfg)
        return sum(per_side) / len(per_side)

    @torch.no_grad()
    def _side_score(self, cfg: Mapping[str, int], side: str) -> float:
        """This side's metric (higher is better), after BN recalibration."""
        sn = self.supernet
        with self.runtime.autocast():
            recalibrate_bn(sn, self._calib, cfg=cfg, side=side)
        # summed on the device: one synchronisation per side, not one per batch
        total = torch.zeros((), dtype=torch.float64, device=self.runtime.device)
        with sn.active(cfg, side):
            for i, (x, y) in enumerate(self._batches):
                with self.runtime.autocast():
                    logits = sn(x)
                logits = logits.float() if logits.dtype != torch.float64 else logits
                if self.metric == "top1":
                    total += (logits.argmax(1) == y).sum()
                elif self.metric == "ce":
                    total -= F.cross_entropy(logits, y, reduction="sum")
                else:
                    teacher = F.log_softmax(self._teacher[i], dim=1)
                    student = F.log_softmax(logits, dim=1)
                    total -= (teacher.exp() * (teacher - student)).sum()
        self.images_seen += self.num_calib + self.num_images
        return float(total) / self.num_images

    # -- reporting ---------------------------------------------------------------------------
    @property
    def images_per_second(self) -> float:
        """Forwarded images (calibration + scoring) per second of evaluation."""
        return self.images_seen / self.seconds if self.seconds > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations,
            "calls": self.calls,
            "heldout_images": self.num_images,
            "calib_images": self.num_calib,
            "batch_size": self.batch_size,
            "sides": list(self.side_names),
            "metric": self.metric,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 1),
        }

    @torch.no_grad()
    def plain_images_per_second(self, *, repeats: int = 1) -> float:
        """Plain full-width inference over the same held-out batches (no recalibration, no
        slimming), for the throughput ratio the benchmark reports."""
        sn = self.supernet
        was_training = sn.training
        sn.eval()
        start = time.perf_counter()
        with sn.active(None):
            for _ in range(repeats):
                for x, _y in self._batches:
                    sn(x)
        sn.train(was_training)
        return repeats * self.num_images / (time.perf_counter() - start)

    # -- data access for strategies that train on held-out data (relax) ----------------------
    @property
    def batches(self) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
        """The fixed held-out (images, labels) batches."""
        return self._batches

    @property
    def fit_batches(self) -> Sequence[tuple[torch.Tensor, torch.Tensor]] | None:
        """Held-out (images, labels) batches disjoint from the scored ones (``None``: none)."""
        return self._fit

    @property
    def calib_batches(self) -> Sequence[torch.Tensor]:
        """The fixed BN calibration batches."""
        return self._calib
