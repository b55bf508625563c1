"""Self-contained checkpoints: atomic writes, clear errors for corrupt or foreign files.

A supernet checkpoint holds everything needed to rebuild the supernet without the recipe:
the model name and arguments, the width-space settings and the weights, plus whatever the
trainer adds (optimiser state, loss records, epoch).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from .errors import CheckpointError

__all__ = [
    "atomic_save",
    "build_supernet",
    "load_checkpoint",
    "load_supernet",
    "save_supernet",
    "write_json_atomic",
    "write_text_atomic",
]

SUPERNET_FORMAT = "widthsearch.supernet"
FORMAT_VERSION = 1


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO], None], mode: str) -> Path:
    """Run ``write`` on a temp file in the same folder, fsync, then rename over ``path``.

    A reader (or a crash at any moment) sees either the old file or the new one, never a
    half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` that never leaves a half-written file."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` so that readers never see a half-written file."""
    return _atomic_write(path, lambda f: f.write(text), "w")


def write_json_atomic(doc: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``doc`` as indented JSON, atomically."""
    return write_text_atomic(json.dumps(doc, indent=1) + "\n", path)


def load_checkpoint(path: str | os.PathLike[str], *, kind: str) -> dict[str, Any]:
    """Load a widthsearch checkpoint of format ``kind`` or raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle/zip errors of many types all mean "unreadable"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path}: not a widthsearch checkpoint")
    if payload["format"] != kind:
        raise CheckpointError(f"{path}: is a {payload['format']!r} file, expected {kind!r}")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer widthsearch (v{payload['version']})")
    return payload


def build_supernet(meta: dict[str, Any]):
    """Rebuild an untrained supernet from its ``meta`` (model name, arguments, space settings)."""
    from .models import create_model
    from .supernet import Supernet

    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    size = meta["input_size"]
    example = torch.zeros(1, meta["in_chans"], size, size)
    return Supernet.from_model(
        model,
        example,
        bins=meta["bins"],
        min_bins=meta["min_bins"],
        round_to=meta["round_to"],
        meta={k: meta[k] for k in ("model", "num_classes", "in_chans", "input_size")},
    )


def save_supernet(
    path: str | os.PathLike[str], supernet, *, file_format: str = SUPERNET_FORMAT, **extra: Any
) -> None:
    """Write ``supernet`` (meta + weights) and ``extra`` trainer state atomically.

    ``file_format="widthsearch.full"`` marks a plainly trained network (``pretrain``).
    """
    payload = {
        "format": file_format,
        "version": FORMAT_VERSION,
        "meta": dict(supernet.meta),
        "state_dict": supernet.model.state_dict(),
        **extra,
    }
    atomic_save(payload, path)


def load_supernet(path: str | os.PathLike[str]):
    """Load a supernet checkpoint: ``(supernet in eval mode, payload)``."""
    payload = load_checkpoint(path, kind=SUPERNET_FORMAT)
    try:
        supernet = build_supernet(payload["meta"])
        supernet.model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match its model ({exc})") from None
    return supernet.eval(), payload
