"""Rewrite a widthsearch file of an older version (pickled) in the weights-only format.

``widthsearch convert OLD.pt --out NEW.pt --trust-pickle`` unpickles the old file once (so
only for files you trust) and writes a file that ``torch.load(..., weights_only=True)``
reads: subnets lose their pickled module (it is rebuilt from the model's name, arguments
and widths, checked before writing), training and fine-tuning states keep their tensors
and plain data only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn
from widthsearch.supernet.checkpoint import (
    FORMAT_VERSION,
    SUPERNET_FORMAT,
    atomic_save,
    build_supernet,
    load_checkpoint,
    plain_payload,
)
from widthsearch.supernet.errors import CheckpointError, WidthsearchError

from ._common import SUBNET_FORMAT, SUBNET_VERSION, build_subnet, output_path
from .finetune import STATE_FORMAT, STATE_VERSION

__all__ = ["convert_file"]

_REBUILD_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, WidthsearchError)


def _plain_rng(rng: Mapping[str, Any]) -> dict[str, Any]:
    """Training RNG state of older files (numpy's state tuple) in the plain layout."""
    rng = dict(rng)
    state = rng.get("numpy")
    if isinstance(state, tuple) and len(state) == 5:
        name, key, pos, has_gauss, gauss = state
        rng["numpy"] = {
            "bit_generator": str(name),
            "key": plain_payload(key).long(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        }
    if isinstance(rng.get("python"), tuple):
        version, internal, gauss_next = rng["python"]
        rng["python"] = [int(version), [int(v) for v in internal], gauss_next]
    return rng


def _rebuild_error(src: Any, meta: Any, exc: BaseException) -> CheckpointError:
    model = meta.get("model") if isinstance(meta, Mapping) else None
    detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).strip().splitlines()[0]
    return CheckpointError(
        f"{src}: its model {model!r} cannot be rebuilt from the file's description ({detail}); "
        "the weights-only format cannot hold it: open it with --trust-pickle instead"
    )


def convert_file(
    src: str | os.PathLike[str], out: str | os.PathLike[str], *, trust_pickle: bool = False
) -> dict[str, Any]:
    """Rewrite the widthsearch file ``src`` (any format) weights-only loadable at ``out``.

    Args:
        src: A supernet, subnet, fine-tuning state or other widthsearch file; one of an
            older version needs ``trust_pickle`` (it is unpickled, so it must be trusted).
        out: Output file (written atomically; may be ``src`` itself).
        trust_pickle: Unpickle ``src`` when weights-only loading refuses it.

    Returns:
        ``{"format", "version", "out"}`` of the written file.

    Raises:
        CheckpointError: unreadable, foreign or (without ``trust_pickle``) pickled file, or
            one whose model cannot be rebuilt from its description.
    """
    out = output_path(out)
    payload = load_checkpoint(src, kind=None, trust_pickle=trust_pickle)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(fmt, str) or not fmt.startswith("widthsearch."):
        raise CheckpointError(f"{src}: not a widthsearch file (no widthsearch 'format')")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{src}: written by a newer widthsearch (v{version})")
    doc = dict(payload)
    meta = doc.get("meta")
    if fmt == SUBNET_FORMAT:
        module = doc.pop("module", None)
        if isinstance(module, nn.Module):
            doc["state_dict"] = module.state_dict()
        try:
            build_subnet(meta, doc["widths"]).load_state_dict(doc["state_dict"])
        except _REBUILD_ERRORS as exc:
            raise _rebuild_error(src, meta, exc) from None
        doc["version"] = SUBNET_VERSION
    elif fmt == SUPERNET_FORMAT:
        try:
            build_supernet(meta).model.load_state_dict(doc["state_dict"])
        except _REBUILD_ERRORS as exc:
            raise _rebuild_error(src, meta, exc) from None
        state = doc.get("train_state")
        if isinstance(state, Mapping) and isinstance(state.get("rng"), Mapping):
            doc["train_state"] = {**state, "rng": _plain_rng(state["rng"])}
        doc["version"] = FORMAT_VERSION
    elif fmt == STATE_FORMAT:
        module = doc.pop("module", None)
        if isinstance(module, nn.Module) and "state_dict" not in doc:
            doc["state_dict"] = module.state_dict()
        doc["version"] = STATE_VERSION
    try:
        doc = plain_payload(doc, where=str(src))
    except TypeError as exc:
        raise CheckpointError(f"cannot convert {exc}") from None
    atomic_save(doc, out)
    return {"format": fmt, "version": doc.get("version"), "out": str(out)}
