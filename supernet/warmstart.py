"""Starting a supernet from a trained network: read its weights, order its channels.

A supernet trained from random weights spends most steps on narrow subnets, so its full
width ends below a plainly trained network, and so do the subnets distilled from it. The
systems that deliver good subnets start from a trained network instead and shrink it.

*Reading the trained network.* :func:`read_state_dict` accepts a ``full.pt`` written by
``widthsearch pretrain``, a supernet checkpoint, a plain ``state_dict`` file (``.pt``,
``.pth``, ``.bin``; also the common ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers)
or a ``.safetensors`` file, all read without unpickling code; a pickled ``nn.Module`` only
with ``trust_pickle=True``. :func:`load_weights` names the first mismatch in one line;
:func:`trained_network` rebuilds the trained network as a frozen model (the teacher of
distillation and of the ``kd`` score).

*Channel order.* Slicing keeps a prefix (left side) or a suffix (right side) of each
group's channels, so the channels at the two ends are the ones narrow subnets inherit.
:func:`reorder_channels` permutes every group's channels by importance (mean |BN gamma|,
normalised per layer; weight L1 norm where a group has no BN), applying the same
permutation to every layer that writes or reads the group, which leaves the network's
function unchanged. Arrangements:

- ``"ends"``: the most important channel first, the next one last, then alternating
  inwards, so both BCNet sides of a width hold an equal share of the important channels;
- ``"front"``: sorted, most important first (the left side gets the best channels, the
  right side the worst);
- ``"none"``: the trained order.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .handlers import GAMMA, L1
from .models import create_model

__all__ = [
    "CHANNEL_ORDERS",
    "FULL_FORMAT",
    "arrange",
    "channel_importance",
    "load_weights",
    "permute_channels",
    "read_state_dict",
    "reorder_channels",
    "trained_network",
]

FULL_FORMAT = "widthsearch.full"
CHANNEL_ORDERS = ("ends", "front", "none")
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


# ---- reading a trained network ---------------------------------------------------------


def read_state_dict(
    path: str | os.PathLike[str], *, trust_pickle: bool = False
) -> dict[str, Tensor]:
    """The weights in ``path`` as a flat ``{name: tensor}`` dict.

    Raises:
        CheckpointError: missing, unreadable or not-a-checkpoint file; a pickled module
            without ``trust_pickle``. One line, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - timm depends on safetensors
            raise CheckpointError(
                f"{path}: reading .safetensors needs `pip install safetensors`"
            ) from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many types all mean "not weights only"
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: cannot be read as weights only ({type(exc).__name__}); if it is a "
                "pickled module you trust, pass --trust-pickle (it runs code from the file)"
            ) from None
        print(f"widthsearch: warning: unpickling {path} (--trust-pickle)", file=sys.stderr)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({type(exc2).__name__})"
            ) from None
    return _unwrap(payload, path)


def _unwrap(payload: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(payload, nn.Module):
        return dict(payload.state_dict())
    if isinstance(payload, Mapping):
        if payload.get("format") in (FULL_FORMAT, "widthsearch.supernet"):
            return _unwrap(payload.get("state_dict"), path)
        if payload and all(isinstance(v, Tensor) for v in payload.values()):
            return {str(k): v for k, v in payload.items()}
        for key in _WRAPPER_KEYS:
            if key in payload:
                return _unwrap(payload[key], path)
    raise CheckpointError(f"{path}: holds no state_dict (expected a mapping of tensors)")


def load_weights(model: nn.Module, state: Mapping[str, Tensor], *, where: str) -> None:
    """``model.load_state_dict(state)`` strictly, or one line naming the first mismatch.

    A ``module.`` prefix (a DataParallel/DDP save) is stripped when that makes keys match.
    """
    ours = model.state_dict()
    if not set(state) & set(ours) and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    missing = [k for k in ours if k not in state]
    if missing:
        raise CheckpointError(
            f"{where}: does not fit the model: missing key {missing[0]!r}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    unexpected = [k for k in state if k not in ours]
    if unexpected:
        raise CheckpointError(
            f"{where}: does not fit the model: unexpected key {unexpected[0]!r}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    for key, value in ours.items():
        theirs = state[key]
        if tuple(theirs.shape) != tuple(value.shape):
            raise CheckpointError(
                f"{where}: does not fit the model: {key!r} has shape {tuple(theirs.shape)}, "
                f"the model needs {tuple(value.shape)}"
            )
    model.load_state_dict(state)


def trained_network(
    meta: Mapping[str, Any], state: Mapping[str, Tensor], *, where: str
) -> nn.Module:
    """The trained full network (a ``full.pt``'s, or the copy a warm-started supernet
    carries) rebuilt from its model arguments and weights: frozen, in eval mode.

    ``meta`` holds the model's arguments (``model``, ``num_classes``, ``in_chans``: a
    checkpoint's ``meta``); ``where`` names the weights in errors.

    Raises:
        CheckpointError: the weights do not fit the model (:func:`load_weights`).
    """
    model = create_model(
        meta["model"],
        num_classes=int(meta["num_classes"]),
        in_chans=int(meta["in_chans"]),
        input_size=int(meta["input_size"]) if meta.get("input_size") else None,
    )
    load_weights(model, state, where=where)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---- channel order ---------------------------------------------------------------------


def channel_importance(
    sn: Any, *, batches: Iterable[tuple[Tensor, Tensor]] | None = None
) -> dict[str, np.ndarray]:
    """Per searchable group, one importance value per channel.

    Without ``batches``: the mean over the group's BN layers of ``|gamma| / mean |gamma|``
    (each layer normalised, so no layer dominates by scale); for a group without BN, the same
    over the L1 norms of the output filters of the convs and linears that write it.

    With ``batches`` (``(inputs, labels)`` of training data): first-order Taylor estimates of
    the loss change when a channel is removed from the whole group, ``sum over batches of
    (sum over the group's normalisers of gamma * dL/dgamma + beta * dL/dbeta) ** 2``; the
    data says what the network uses, where gamma's size only hints at it. Groups without a
    normaliser keep the weight-norm evidence.
    """
    fallback = _static_importance(sn)
    if batches is None:
        return fallback
    return {**fallback, **_taylor_importance(sn, batches)}


def _taylor_importance(sn: Any, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, np.ndarray]:
    normalisers = []  # (module, [(group index, channel slice)]) of every gamma-bearing layer
    for layer, _, out_gs in sn.layers:
        evidence = layer.handler.importance(layer)
        module = layer.module
        if evidence is None or evidence.source != GAMMA:
            continue
        if getattr(module, "weight", None) is None or getattr(module, "bias", None) is None:
            continue
        normalisers.append((module, list(sn.segments(out_gs))))
    if not normalisers:
        return {}
    sums: dict[int, torch.Tensor] = {}
    was_training = sn.model.training
    sn.model.eval()  # running statistics stay the trained network's
    try:
        for x, y in batches:
            sn.model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(sn.model(x), y).backward()
            per_batch: dict[int, torch.Tensor] = {}
            with torch.no_grad():
                for module, segments in normalisers:
                    if module.weight.grad is None or module.bias.grad is None:
                        continue
                    change = module.weight * module.weight.grad + module.bias * module.bias.grad
                    for group, part in segments:
                        values = change.double().reshape(-1)[part]
                        per_batch[group] = per_batch.get(group, 0) + values
            for group, values in per_batch.items():
                sums[group] = sums.get(group, 0) + values.square()
    finally:
        sn.model.zero_grad(set_to_none=True)
        sn.model.train(was_training)
    return {
        g.name: sums[i].cpu().numpy()
        for i, g in enumerate(sn.space.groups)
        if not g.fixed and i in sums
    }


def _static_importance(sn: Any) -> dict[str, np.ndarray]:
    rows_of: dict[str, dict[int, list[np.ndarray]]] = {GAMMA: {}, L1: {}}
    for layer, _, out_gs in sn.layers:
        evidence = layer.handler.importance(layer)
        if evidence is not None:
            channels = evidence.per_channel(torch.float64).cpu().numpy()
            for out_g, part in sn.segments(out_gs):  # a concat's BN: each group its own part
                values = channels[part]
                rows = rows_of.setdefault(evidence.source, {}).setdefault(out_g, [])
                rows.append(values / max(values.mean(), 1e-12))
    by_bn, by_weight = rows_of[GAMMA], rows_of[L1]
    out = {}
    for i, group in enumerate(sn.space.groups):
        if group.fixed:
            continue
        rows = by_bn.get(i) or by_weight.get(i)
        out[group.name] = (
            np.mean(rows, axis=0) if rows else np.ones(group.max_channels, dtype=np.float64)
        )
    return out


def arrange(importance: np.ndarray, order: str, *, block: int = 1) -> np.ndarray:
    """The permutation (new position -> old channel) that puts channels in ``order``.

    ``block`` keeps runs of that many channels together (grouped convs need whole groups).
    """
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"channel order must be one of {', '.join(CHANNEL_ORDERS)}, got {order!r}")
    n = len(importance)
    if order == "none" or n % block:
        return np.arange(n)
    scores = np.asarray(importance, dtype=np.float64).reshape(-1, block).sum(1)
    ranked = np.argsort(-scores, kind="stable")  # most important block first
    if order == "front":
        blocks = ranked
    else:
        blocks = np.empty_like(ranked)
        m = len(ranked)
        blocks[: math.ceil(m / 2)] = ranked[0::2]
        blocks[math.ceil(m / 2) :] = ranked[1::2][::-1]
    return (blocks[:, None] * block + np.arange(block)[None, :]).reshape(-1)


@torch.no_grad()
def permute_channels(sn: Any, perms: Mapping[str, np.ndarray]) -> None:
    """Reorder the channels of the named groups in place (new position -> old channel).

    Every layer reading or writing a group is permuted the same way, so the network's
    outputs do not change.
    """
    from .supernet import slice_layer

    names = [g.name for g in sn.space.groups]
    index = {
        name: torch.as_tensor(np.asarray(perms[name]), dtype=torch.long)
        if name in perms
        else torch.arange(g.max_channels)
        for name, g in zip(names, sn.space.groups, strict=True)
    }
    for name, idx in index.items():
        size = sn.space[name].max_channels
        if sorted(idx.tolist()) != list(range(size)):
            raise ValueError(f"group {name!r}: not a permutation of its {size} channels")
    for layer, in_gs, out_gs in sn.layers:
        slice_layer(
            layer.module, layer, sn.layout_index(in_gs, index), sn.layout_index(out_gs, index)
        )


def reorder_channels(
    sn: Any, order: str = "ends", *, batches: Iterable[tuple[Tensor, Tensor]] | None = None
) -> dict[str, np.ndarray]:
    """Permute every searchable group by importance (see the module docstring; ``batches``:
    data-driven Taylor importance, see :func:`channel_importance`).

    Returns:
        The permutation applied to each group (new position -> old channel).
    """
    importance = channel_importance(sn, batches=batches)
    blocks = sn.channel_blocks()
    perms = {
        name: arrange(values, order, block=blocks[name]) for name, values in importance.items()
    }
    permute_channels(sn, perms)
    return perms
