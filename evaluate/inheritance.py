"""Adaptive weight inheritance (AdaPruner): which channels of the supernet a subnet keeps.

A width config says how many channels each group keeps, not which. The candidates are the
two BCNet sides (``left`` = channels ``[0, c)``, ``right`` = ``[C - c, C)``, exactly the
subnets the supernet trained) and two importance rankings of the channels, ``l1`` (L1 norm
of the output filters of the group's producing convs/linears, summed over those layers) and
``bn`` (|gamma| summed over the group's BN layers). Each candidate is extracted, its BN
statistics recalibrated, and scored on held-out data; the best one is kept.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from widthsearch.supernet import Supernet
from widthsearch.supernet.bn import recalibrate_bn
from widthsearch.supernet.handlers import GAMMA, L1
from widthsearch.supernet.runtime import Runtime

from ._common import top1

__all__ = [
    "INHERITANCE",
    "candidate_indices",
    "channel_importance",
    "choose_inheritance",
    "group_blocks",
    "inherit",
    "topk_indices",
]

INHERITANCE: tuple[str, ...] = ("left", "right", "l1", "bn")
_EVIDENCE = {"l1": L1, "bn": GAMMA}  # importance method -> the layers' evidence it ranks by


def channel_importance(sn: Supernet, method: str) -> dict[str, Tensor]:
    """Per searchable group, one importance value per channel (length ``max_channels``).

    Args:
        sn: The supernet (full weights).
        method: ``"l1"``: L1 norm of each output filter of the group's convs and linears
            (depthwise convs included), summed over the layers. ``"bn"``: |gamma| summed over
            the group's BN layers; a group without affine BN falls back to ``"l1"``.
    """
    if method not in ("l1", "bn"):
        raise ValueError(f"importance method must be 'l1' or 'bn', got {method!r}")
    names = [g.name for g in sn.space.groups]
    # evidence source -> group -> per-channel sum (fixed groups too: never read)
    sums: defaultdict[str, dict[str, Tensor]] = defaultdict(dict)
    with torch.no_grad():
        for layer, _, out_gs in sn.layers:
            evidence = layer.handler.importance(layer)
            if evidence is not None:
                channels = evidence.per_channel(torch.float32).cpu()
                store = sums[evidence.source]
                for out_g, part in sn.segments(out_gs):  # a concat's BN: each its own part
                    name = names[out_g]
                    store[name] = store.get(name, 0) + channels[part]
    out: dict[str, Tensor] = {}
    for group in sn.space.searchable:
        value = sums[_EVIDENCE[method]].get(group.name)
        if value is None:
            value = sums[L1].get(group.name)
        out[group.name] = value if value is not None else torch.zeros(group.max_channels)
    return out


def group_blocks(sn: Supernet) -> dict[str, int]:
    """Per group, the channel block a top-k must keep whole: the lcm of the conv-group widths
    of its grouped convs (1 for dense and depthwise convs).

    A grouped conv maps input block ``j`` to output block ``j``; keeping a channel without the
    rest of its block would mix conv groups, so extraction needs whole blocks.
    """
    return sn.channel_blocks()


def topk_indices(importance: Tensor, k: int, *, block: int = 1) -> Tensor:
    """The ``k`` most important channels, sorted ascending; whole ``block``s when ``block > 1``.

    Blocks are ranked by their summed importance. Ties go to the lower index (stable), so
    the choice is deterministic.

    Raises:
        ValueError: ``k`` not a multiple of ``block`` or out of range.
    """
    n = int(importance.numel())
    if not 0 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} channels")
    if block < 1 or n % block or k % block:
        raise ValueError(f"{k} of {n} channels cannot be kept in whole blocks of {block}")
    scores = importance.detach().reshape(-1, block).sum(1)
    order = torch.argsort(-scores, stable=True)[: k // block]
    idx = (order[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
    return torch.sort(idx).values


def candidate_indices(
    sn: Supernet,
    cfg: Mapping[str, int],
    candidate: str,
    *,
    importance: Mapping[str, Tensor] | None = None,
) -> tuple[str, dict[str, Tensor] | None]:
    """``(side, indices)`` for :meth:`Supernet.extract` of one inheritance candidate.

    ``left``/``right`` return no indices (the side itself); ``l1``/``bn`` return the top-k
    channels of every searchable group that is not at full width.
    """
    if candidate in ("left", "right"):
        return candidate, None
    if candidate not in INHERITANCE:
        raise ValueError(
            f"unknown weight inheritance {candidate!r}; valid: {', '.join(INHERITANCE)}"
        )
    full = sn.space.validate(cfg)
    importance = importance if importance is not None else channel_importance(sn, candidate)
    blocks = group_blocks(sn)
    indices = {}
    for group in sn.space.searchable:
        width = full[group.name]
        if width == group.max_channels:
            continue
        indices[group.name] = topk_indices(importance[group.name], width, block=blocks[group.name])
    return "left", indices


def inherit(
    sn: Supernet,
    cfg: Mapping[str, int],
    candidate: str,
    *,
    importance: Mapping[str, Tensor] | None = None,
) -> nn.Module:
    """The dense subnet of ``cfg`` with the channels ``candidate`` picks (no recalibration)."""
    side, indices = candidate_indices(sn, cfg, candidate, importance=importance)
    return sn.extract(cfg, side=side, indices=indices)  # type: ignore[arg-type]


def choose_inheritance(
    sn: Supernet,
    cfg: Mapping[str, int],
    *,
    calib: Sequence[Tensor],
    heldout: Sequence[tuple[Tensor, Tensor]],
    candidates: Sequence[str] = INHERITANCE,
    progress: bool | None = None,
    log: Callable[[str], Any] | None = None,
    runtime: Runtime | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Extract every candidate, recalibrate its BN on ``calib``, score it on ``heldout``.

    Args:
        sn: The supernet (left untouched: candidates are copies).
        cfg: The width config.
        calib: BN calibration input batches.
        heldout: ``(images, labels)`` held-out batches for the score (top-1).
        candidates: Names from :data:`INHERITANCE`, tried in this order; ties keep the
            earlier one.
        progress: tqdm bar over candidates (``None``: only on a terminal).
        runtime: Precision and layout of the scoring (the supernet's device either way).

    Returns:
        ``(best model in eval mode with recalibrated BN, {"chosen": name, "scores": {...}})``.
    """
    names = list(dict.fromkeys(candidates))
    if not names:
        raise ValueError("no weight-inheritance candidate given")
    for name in names:
        if name not in INHERITANCE:
            raise ValueError(
                f"unknown weight inheritance {name!r}; valid: {', '.join(INHERITANCE)}"
            )
    scores: dict[str, float] = {}
    best: tuple[str, nn.Module] | None = None
    bar = tqdm(
        names, desc="inheritance", unit="cand", disable=None if progress is None else not progress
    )
    for name in bar:
        model = inherit(sn, cfg, name)
        recalibrate_bn(model, calib)
        scores[name] = top1(model, heldout, runtime=runtime)
        if log is not None:
            log(f"inheritance {name}: held-out top-1 {scores[name]:.4f}")
        if best is None or scores[name] > scores[best[0]]:
            best = (name, model)
    assert best is not None
    return best[1].eval(), {"chosen": best[0], "scores": scores}
