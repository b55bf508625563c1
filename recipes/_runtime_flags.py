"""``--device``, ``--amp`` and ``--channels-last``: the flags of every command that computes.

A flag overrides the recipe's ``[run]`` section; commands that read a stored recipe (the
one the supernet was trained with) take its precision and layout but not its device, which
names the machine it was made on. With neither: ``auto`` / ``off`` / off.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from widthsearch.supernet.runtime import AMP_MODES, DEVICE_CHOICES, resolve_device

__all__ = ["RUNTIME_COMMANDS", "add_runtime_flags", "runtime_options"]

RUNTIME_COMMANDS = ("pretrain", "train", "profile", "search", "extract", "finetune", "eval", "run")


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where it runs")
    group.add_argument(
        "--device",
        metavar="DEVICE",
        help=f"{DEVICE_CHOICES} (default: [run].device, else auto: CUDA when present)",
    )
    group.add_argument(
        "--amp",
        choices=AMP_MODES,
        help="mixed precision: off, bf16 (CPU too), fp16 (with a gradient scaler) or auto "
        "(bf16 where the device computes it natively, else off); "
        "default: [run].amp, else off",
    )
    group.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: [run].channels_last, else off)",
    )


def runtime_options(args: argparse.Namespace, run: Any = None) -> dict[str, Any]:
    """``device``, ``amp`` and ``channels_last`` for a stage, checked before any work.

    Args:
        args: Parsed flags (``None`` values fall back to ``run``).
        run: The recipe's ``[run]`` section: a :class:`~widthsearch.recipes.recipe.RunSection`
            or the stored recipe's dict.

    Raises:
        DeviceError: an unknown device, or CUDA asked for where there is none.
    """

    def stored(key: str, default: Any) -> Any:
        if isinstance(run, Mapping):
            return run.get(key, default)
        return getattr(run, key, default) if run is not None else default

    # a stored recipe's device is where the file was made, not necessarily here
    device = args.device or ("auto" if isinstance(run, Mapping) else stored("device", "auto"))
    resolve_device(device)  # fail now, with one line, before anything is read or written
    amp = args.amp if args.amp is not None else stored("amp", "off")
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    channels_last = (
        args.channels_last if args.channels_last is not None else stored("channels_last", False)
    )
    return {"device": device, "amp": amp, "channels_last": bool(channels_last)}
