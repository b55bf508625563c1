"""Export of a subnet for deployment: TorchScript, timm's pruned-model shape string, ONNX.

* TorchScript (``.ts.pt``): ``torch.jit.trace`` of the module in eval mode; load with
  ``torch.jit.load`` without Python model code. (TorchScript is deprecated in recent torch
  but still the most portable single-file format; its FutureWarnings are silenced here.)
* timm shape string (``.timm.txt``): for ``timm:`` models, the ``key:[shape]***...`` text
  timm's own pruned variants ship (``timm/models/_pruned/*.txt``) and
  ``timm.models.adapt_model_from_string(parent, text)`` reads: every state-dict entry with
  its shape. The string is verified by building the adapted model and loading the weights.
* ONNX (``.onnx``): only when the optional ``onnx`` package is importable.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from widthsearch.supernet.checkpoint import atomic_path, write_json_atomic, write_text_atomic

from ._common import model_input, plain_widths

__all__ = [
    "EXPORT_FORMATS",
    "export_onnx",
    "export_subnet",
    "export_timm_string",
    "export_torchscript",
    "timm_model_from_string",
    "timm_shape_string",
]

EXPORT_FORMATS = ("torchscript", "timm", "onnx", "widths")
_TIMM_PREFIX = "timm:"


@torch.no_grad()
def export_torchscript(
    module: nn.Module, path: str | os.PathLike[str], *, example: torch.Tensor
) -> Path:
    """Trace ``module`` (eval mode) on ``example`` and save it atomically as TorchScript."""
    module = module.eval()
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, example)
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp))
    return path


def timm_shape_string(module: nn.Module) -> str:
    """The shape string of timm's pruned models: ``name:[d0, d1, ...]`` per state-dict entry,
    joined by ``***`` (scalars such as ``num_batches_tracked`` as ``[]``)."""
    return "***".join(f"{k}:{list(v.shape)}" for k, v in module.state_dict().items())


def timm_model_from_string(
    model: str, shape_string: str, *, num_classes: int, in_chans: int
) -> nn.Module:
    """Build timm model ``model`` (``timm:NAME`` or ``NAME``) adapted to ``shape_string``.

    The result has random weights of the pruned shapes; load the subnet's ``state_dict``.
    """
    import timm
    from timm.models import adapt_model_from_string

    name = model[len(_TIMM_PREFIX) :] if model.startswith(_TIMM_PREFIX) else model
    parent = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    return adapt_model_from_string(parent, shape_string)


def export_timm_string(
    module: nn.Module, meta: Mapping[str, Any], path: str | os.PathLike[str] | None = None
) -> str:
    """The verified timm shape string of a subnet of a ``timm:`` model (written if ``path``).

    Raises:
        ValueError: not a timm model, or a subnet timm's adapter cannot express (a removed
            residual block, a grouped conv that is not depthwise).
    """
    name = str(meta.get("model", ""))
    if not name.startswith(_TIMM_PREFIX):
        raise ValueError(f"the timm shape string needs a timm: model, this is {name!r}")
    text = timm_shape_string(module)
    try:
        adapted = timm_model_from_string(
            name, text, num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"])
        )
        adapted.load_state_dict(module.state_dict())
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"this subnet of {name} cannot be expressed as a timm shape string "
            f"(removed blocks or grouped convs?): {first}"
        ) from None
    if path is not None:
        write_text_atomic(text + "\n", path)
    return text


@torch.no_grad()
def export_onnx(
    module: nn.Module, path: str | os.PathLike[str], *, example: torch.Tensor
) -> Path | None:
    """ONNX export (legacy tracer, dynamic batch) when ``onnx`` is installed; else ``None``."""
    if importlib.util.find_spec("onnx") is None:
        return None
    path = Path(path)
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def export_subnet(
    subnet: str | os.PathLike[str] | Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    stem: str | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    trust_pickle: bool = False,
) -> dict[str, str]:
    """Export a subnet (file or payload) in every applicable format into ``out_dir``.

    Writes ``<stem>.ts.pt`` (TorchScript), ``<stem>.timm.txt`` (timm models only),
    ``<stem>.onnx`` (when ``onnx`` is importable) and ``<stem>.widths.json``. Formats that
    do not apply are skipped; asking for an unknown one is an error. ``trust_pickle``
    accepts a subnet file that needs unpickling (an older file).

    Returns:
        Format -> written path; ``"timm_skipped"`` -> the reason when a timm subnet has no
        shape string (e.g. a removed residual block).
    """
    from ._common import read_subnet

    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; valid: {', '.join(EXPORT_FORMATS)}")
    if isinstance(subnet, Mapping):
        payload = subnet
        stem = stem or "subnet"
    else:
        payload = read_subnet(subnet, trust_pickle=trust_pickle)
        stem = stem or Path(subnet).stem
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {out} is a file")
    module, meta = payload["module"].eval(), payload["meta"]
    example = model_input(meta, 1)
    written: dict[str, str] = {}
    if "torchscript" in formats:
        written["torchscript"] = str(
            export_torchscript(module, out / f"{stem}.ts.pt", example=example)
        )
    if "timm" in formats and str(meta.get("model", "")).startswith(_TIMM_PREFIX):
        path = out / f"{stem}.timm.txt"
        try:
            export_timm_string(module, meta, path)
            written["timm"] = str(path)
        except ValueError as exc:  # e.g. depth-pruned: the other formats still stand
            written["timm_skipped"] = str(exc)
    if "onnx" in formats:
        path = export_onnx(module, out / f"{stem}.onnx", example=example)
        if path is not None:
            written["onnx"] = str(path)
    if "widths" in formats:
        doc = {
            "model": meta.get("model"),
            "widths": plain_widths(payload["widths"]),
            "macs": payload.get("macs"),
            "params": payload.get("params"),
            "strategy": payload.get("strategy"),
            "budget_macs": payload.get("budget_macs"),
        }
        written["widths"] = str(write_json_atomic(doc, out / f"{stem}.widths.json"))
    return written
