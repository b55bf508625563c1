"""The network a subnet distils from while it is fine-tuned (the teacher).

The trained network the supernet started from when there is one (a ``full.pt``, or the copy
a warm-started supernet carries), else the supernet's own full width, whose BN statistics
must be recalibrated first (its running stats are a mix over every width it trained). A
supernet whose full width kept training as its subnets' teacher teaches with that width.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from widthsearch.supernet.checkpoint import SUPERNET_FORMAT, load_checkpoint, load_supernet
from widthsearch.supernet.errors import CheckpointError

__all__ = ["load_teacher"]

_META_KEYS = ("model", "num_classes", "in_chans", "input_size")


def load_teacher(
    path: str | os.PathLike[str], meta: Mapping[str, Any], *, trust_pickle: bool = False
) -> tuple[Any, bool]:
    """The network to distil from: ``(frozen module, whether its BN needs recalibrating)``.

    A ``full.pt`` (``widthsearch pretrain``) gives that trained network; a supernet
    warm-started from a trained network gives the trained network stored in it (the
    teacher its subnets learnt from); a supernet trained from scratch, or one whose full
    width kept training as its subnets' teacher (budgets trainer with ``distill``), gives
    its full width, whose BN statistics must be recalibrated first.
    """
    from widthsearch.supernet.warmstart import FULL_FORMAT, trained_network

    payload = load_checkpoint(path, kind=(FULL_FORMAT, SUPERNET_FORMAT), trust_pickle=trust_pickle)
    key = "state_dict" if payload["format"] == FULL_FORMAT else "teacher_state_dict"
    state = payload.get(key)
    theirs = payload.get("meta") or {}
    for key in _META_KEYS:
        if theirs.get(key) != meta.get(key):
            raise CheckpointError(
                f"teacher {path}: {key}={theirs.get(key)!r}, the subnet has {meta.get(key)!r}"
            )
    if state is not None and not _full_width_kept_learning(payload):
        return trained_network(theirs, state, where=f"teacher {path}"), False
    sn, _ = load_supernet(path, trust_pickle=trust_pickle)
    model = sn.extract(sn.space.max(), side="left")  # full width, no hooks
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, True


def _full_width_kept_learning(payload: Mapping[str, Any]) -> bool:
    """Whether the supernet trained its full width as its subnets' live teacher, so that the
    full width, not the network it started from, is the teacher they learnt from last."""
    from widthsearch.supernet.recipe import stored_recipe

    if payload.get("format") != SUPERNET_FORMAT:
        return False
    train = stored_recipe(payload).train
    return train.trainer == "budgets" and bool(train.distill)
