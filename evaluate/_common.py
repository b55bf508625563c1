"""Shared plumbing of the evaluate stage: subnet files and model shapes.

Data from a checkpoint's recipe (splits, scoring and calibration images) is built by
:mod:`widthsearch.search.scoring`, the same builder search scores with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# top1 and write_jsonl_atomic are written once, in the supernet; the evaluate modules get them here
from widthsearch.supernet.accuracy import top1  # noqa: F401
from widthsearch.supernet.checkpoint import (
    atomic_save,
    build_supernet,
    load_checkpoint,
    write_jsonl_atomic,  # noqa: F401
)
from widthsearch.supernet.errors import CheckpointError, WidthsearchError

SUBNET_FORMAT = "widthsearch.subnet"
# 2: no pickled module; the module is rebuilt from meta (model, arguments, space) + widths
SUBNET_VERSION = 2
SUBNET_KEYS = ("state_dict", "widths", "meta")
_NOT_SAVED = ("module", "exports")  # in-memory only: the module is rebuilt on loading


# ---- files ------------------------------------------------------------------------------


def output_path(path: str | os.PathLike[str], *, flag: str = "--out") -> Path:
    """Check an output file path before any work is done (not a folder)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a directory, expected a file path")
    return out


@dataclass(frozen=True)
class SubnetRecord:
    """What a subnet file holds besides its format: built here once by everything that makes
    one (extraction, the benchmarks' baselines), read back as a dict by :func:`read_subnet`.

    Attributes:
        module: The plain dense network (saved as its ``state_dict``).
        widths: Channels per width group; with ``meta`` they rebuild the architecture.
        meta: The model's registered name, arguments and width-space settings.
        inheritance: ``{"chosen": how the weights were inherited, "scores": {...}}``.
        macs, params, full_macs, full_params: Its cost and the full network's (exact).
        recipe: The recipe dict the supernet was trained with (data, fine-tune settings).
        supernet: The supernet file it came from (``None``: no supernet, e.g. a baseline).
        strategy: The search strategy that chose the widths (``"widths"``: given by hand).
        budget_macs: The MACs budget it answers (``None``: none).
        score: The supernet score the search gave it (``None``: not searched).
        budget_ms: The latency budget it answers, in ms (``None``: none).
        predicted_latency_ms: Its latency as the search's latency table predicts it.
    """

    module: nn.Module
    widths: Mapping[str, int]
    meta: Mapping[str, Any]
    inheritance: Mapping[str, Any]
    macs: int
    params: int
    full_macs: int
    full_params: int
    recipe: Mapping[str, Any]
    supernet: str | None = None
    strategy: str = "widths"
    budget_macs: int | None = None
    score: float | None = None
    budget_ms: float | None = None
    predicted_latency_ms: float | None = None

    def to_payload(self) -> dict[str, Any]:
        """The payload :func:`save_subnet` writes (plain ints, the module's current weights)."""
        return {
            "format": SUBNET_FORMAT,
            "version": SUBNET_VERSION,
            "module": self.module,
            "state_dict": self.module.state_dict(),
            "widths": plain_widths(self.widths),
            "inheritance": dict(self.inheritance),
            "meta": dict(self.meta),
            "macs": int(self.macs),
            "params": int(self.params),
            "supernet": self.supernet,
            "strategy": self.strategy,
            "budget_macs": None if self.budget_macs is None else int(self.budget_macs),
            "score": None if self.score is None else float(self.score),
            "budget_ms": None if self.budget_ms is None else float(self.budget_ms),
            "predicted_latency_ms": (
                None if self.predicted_latency_ms is None else float(self.predicted_latency_ms)
            ),
            "full_macs": int(self.full_macs),
            "full_params": int(self.full_params),
            "recipe": dict(self.recipe),
        }


def save_subnet(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a subnet payload atomically, weights-only loadable.

    The module itself is not saved: its ``state_dict`` (refreshed from ``module`` when the
    payload has one), ``widths`` and ``meta`` (model name, arguments, width-space settings)
    rebuild it (:func:`build_subnet`).
    """
    doc = {k: v for k, v in payload.items() if k not in _NOT_SAVED}
    doc.update(format=SUBNET_FORMAT, version=SUBNET_VERSION)
    if payload.get("module") is not None:
        doc["state_dict"] = payload["module"].state_dict()
    missing = [k for k in SUBNET_KEYS if k not in doc]
    if missing:
        raise ValueError(f"subnet payload lacks {', '.join(missing)}")
    doc["widths"] = plain_widths(doc["widths"])
    atomic_save(doc, path)
    return Path(path)


def build_subnet(meta: Mapping[str, Any], widths: Mapping[str, Any]) -> nn.Module:
    """The architecture of a subnet, untrained: the model of ``meta`` (its registered name,
    arguments and the supernet's space settings) extracted at ``widths``.

    The global RNG is left as it was (building initialises weights).

    Raises:
        KeyError, ValueError, WidthsearchError: ``meta`` or ``widths`` do not describe a model.
    """
    with torch.random.fork_rng(devices=[]):
        sn = build_supernet(dict(meta))
        return sn.extract(sn.space.validate(dict(widths)), side="left")


def read_subnet(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> dict[str, Any]:
    """Load a subnet file (``extract`` or ``finetune`` output): its payload, with ``"module"``
    rebuilt from the description (:func:`build_subnet`) and loaded with the saved weights, in
    eval mode.

    Weights-only: nothing in the file runs. ``trust_pickle`` accepts a file that needs
    unpickling (an older widthsearch file, whose pickled module is then used as it is).

    Raises:
        CheckpointError: missing, corrupt, foreign or (without ``trust_pickle``) pickled
            file, a model that cannot be rebuilt, or weights that do not fit it.
    """
    payload = load_checkpoint(path, kind=SUBNET_FORMAT, trust_pickle=trust_pickle)
    missing = [k for k in SUBNET_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: subnet file lacks {', '.join(missing)}")
    module = payload.get("module")
    if module is not None and not isinstance(module, nn.Module):  # only from a trusted pickle
        raise CheckpointError(f"{path}: 'module' is not a torch module")
    if module is None:
        meta = payload["meta"] if isinstance(payload["meta"], Mapping) else {}
        try:
            module = build_subnet(meta, payload["widths"])
        except (KeyError, TypeError, ValueError, WidthsearchError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CheckpointError(
                f"{path}: cannot rebuild its model {meta.get('model')!r} from the file's "
                f"description ({detail})"
            ) from None
    try:
        module.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: weights do not fit its model ({first})") from None
    payload["module"] = module.eval()
    return payload


def load_subnet(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> nn.Module:
    """Open a subnet file safely: the plain module of the original class, weights loaded, in
    eval mode. Nothing in the file runs: it holds weights, widths and the model's registered
    name and arguments, and the module is rebuilt from them.

    Args:
        path: ``extract`` or ``finetune`` output.
        trust_pickle: Also accept a file that needs unpickling (older widthsearch files);
            prints one warning line naming it. Only for files you trust.

    Raises:
        CheckpointError: see :func:`read_subnet`.
    """
    return read_subnet(path, trust_pickle=trust_pickle)["module"]


# ---- shapes ------------------------------------------------------------------------------


def model_input(meta: Mapping[str, Any], batch: int = 1) -> Tensor:
    """A zero input of the model's shape (for tracing, counting and timing)."""
    size = int(meta.get("input_size", 28))
    return torch.zeros(batch, int(meta.get("in_chans", 3)), size, size)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def plain_widths(widths: Mapping[str, Any]) -> dict[str, int]:
    """Widths as a JSON-able ``{str: int}`` (no numpy ints)."""
    return {str(k): int(v) for k, v in widths.items()}
