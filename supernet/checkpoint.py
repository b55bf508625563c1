"""Self-contained checkpoints: atomic writes, weights-only loading, clear errors for corrupt,
foreign or pickled files.

A supernet checkpoint holds everything needed to rebuild the supernet without the recipe:
the model name and arguments, the width-space settings and the weights, plus whatever the
trainer adds (optimiser state, loss records, epoch, RNG state).

Every widthsearch file holds only tensors, plain containers, numbers and strings, so
``torch.load(path, weights_only=True)`` reads it and opening a file never runs code it
carries. Files that need unpickling (older widthsearch files, pickled modules) are refused
unless the caller passes ``trust_pickle=True`` (``--trust-pickle`` on the command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import pickletools
import random
import sys
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .runtime import cuda_rng_state, set_cuda_rng_state

__all__ = [
    "FORMAT_VERSION",
    "SUPERNET_FORMAT",
    "atomic_path",
    "atomic_save",
    "build_supernet",
    "capture_rng_state",
    "load_checkpoint",
    "load_supernet",
    "plain_payload",
    "restore_rng_state",
    "save_supernet",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_text_atomic",
]

SUPERNET_FORMAT = "widthsearch.supernet"
# 2: weights-only files (no pickled objects, RNG state as tensors and plain numbers)
FORMAT_VERSION = 2


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp file next to ``path`` for any writer, renamed over ``path`` if the block succeeds.

    The one place that writes files atomically: the temp file is flushed to disk (fsync) and
    given the permissions a plain ``open`` would (``mkstemp`` makes it private), then
    renamed. A reader, or a crash at any moment, sees either the old file or the new one,
    never a half-written one; on an error the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_PLAIN = (str, bytes, int, float, bool, complex, type(None), torch.dtype, torch.device, torch.Size)


def plain_payload(obj: Any, where: str = "payload") -> Any:
    """``obj`` with only what ``torch.load(..., weights_only=True)`` reads.

    Tensors (moved to the CPU, so files load on any machine), numbers, strings and
    containers of them pass; numpy scalars become Python numbers, numpy arrays tensors and
    paths strings. Anything else (a module, a
    class instance) is a programming error: ``TypeError`` naming where it sits.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()  # no copy for a CPU tensor
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where}: numpy object arrays cannot be saved weights-only")
        return torch.from_numpy(np.ascontiguousarray(obj).copy())
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        items = [
            (plain_payload(k, where), plain_payload(v, f"{where}[{k!r}]")) for k, v in obj.items()
        ]
        if not isinstance(obj, OrderedDict):
            return dict(items)
        out = OrderedDict(items)
        if hasattr(obj, "_metadata"):  # a state_dict's module versions
            out._metadata = plain_payload(obj._metadata, where)  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [plain_payload(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        kind = next(t for t in (list, tuple, set, frozenset) if isinstance(obj, t))
        return kind(items)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved weights-only")


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` of :func:`plain_payload` (``obj``) that never leaves a half-written
    file; ``torch.load(path, weights_only=True)`` reads the result."""
    doc = plain_payload(obj)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(doc, f)


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` so that readers never see a half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(doc: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``doc`` as indented JSON, atomically."""
    return write_text_atomic(json.dumps(doc, indent=1) + "\n", path)


def write_jsonl_atomic(entries: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write ``entries`` as JSON lines (one object per line), atomically: a log rewritten
    whole after every epoch always matches the checkpoint written with it."""
    return write_text_atomic("".join(json.dumps(dict(e)) + "\n" for e in entries), path)


_WARNED: set[str] = set()


def refused_pickle_message(path: str | os.PathLike[str]) -> str:
    """The one line that refuses a file needing unpickling (and says what to do)."""
    return (
        f"{path}: refused: it holds pickled Python objects, which could run code on loading "
        "(a file of an older widthsearch, or not a widthsearch file); if you trust it, pass "
        f"--trust-pickle, or convert it once: widthsearch convert {path} --out NEW.pt "
        "--trust-pickle"
    )


def warn_pickle(path: str | os.PathLike[str]) -> None:
    """One warning line on stderr (once per file and process): ``path`` is being unpickled."""
    key = str(Path(path).resolve())
    if key in _WARNED:
        return
    _WARNED.add(key)
    print(
        f"widthsearch: warning: unpickling {path} (--trust-pickle): any code it carries runs",
        file=sys.stderr,
        flush=True,
    )


def _is_pickle(path: Path) -> bool:
    """True when ``path`` holds a well-formed pickle (torch's zip layout or the legacy one).

    The opcodes are only parsed (``pickletools.genops``), never run: this tells a file that
    weights-only loading refused for its objects from one that is no checkpoint at all.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return False
                with archive.open(name) as f:
                    ops = [op.name for op, _, _ in pickletools.genops(f)]
        else:
            with open(path, "rb") as f:
                ops = [op.name for op, _, _ in pickletools.genops(f)]
    except Exception:  # any parse error: not a pickle
        return False
    return bool(ops) and ops[-1] == "STOP"


def _is_weights_only_refusal(exc: BaseException, path: Path) -> bool:
    return (
        isinstance(exc, pickle.UnpicklingError)
        and "weights only" in str(exc).lower()
        and _is_pickle(path)
    )


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise around a one-line error
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    kind: str | Collection[str] | None,
    trust_pickle: bool = False,
) -> Any:
    """Load a widthsearch checkpoint of format ``kind`` or raise :class:`CheckpointError`.

    The file is read with ``torch.load(..., weights_only=True)``: tensors, plain containers,
    numbers and strings, never code. A file that needs unpickling is refused with one line
    (how to convert it) unless ``trust_pickle`` is true; then it is unpickled, after one
    warning line on stderr naming it.

    Args:
        path: The file.
        kind: Expected ``format`` (a name or several); ``None`` skips the format check and
            returns whatever the file holds (a plain ``state_dict``, for instance).
        trust_pickle: Unpickle a file that weights-only loading refuses.

    Raises:
        CheckpointError: missing, unreadable, pickled (without ``trust_pickle``), foreign or
            newer file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        payload = _torch_load(path, weights_only=True)
    except Exception as exc:  # pickle/zip errors of many types all mean "unreadable"
        if not _is_weights_only_refusal(exc, path):
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({type(exc).__name__})"
            ) from None
        if not trust_pickle:
            raise CheckpointError(refused_pickle_message(path)) from None
        warn_pickle(path)
        try:
            payload = _torch_load(path, weights_only=False)
        except Exception as exc2:
            raise CheckpointError(
                f"{path}: not a readable checkpoint ({type(exc2).__name__})"
            ) from None
    if kind is None:
        return payload
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path}: not a widthsearch checkpoint")
    if payload["format"] not in kinds:
        expected = " or ".join(repr(k) for k in kinds)
        raise CheckpointError(f"{path}: is a {payload['format']!r} file, expected {expected}")
    version = payload.get("version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer widthsearch (v{version})")
    return payload


# ---- RNG state as plain data --------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Torch, numpy and Python RNG state as tensors and plain data (weights-only loadable)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(name),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": [int(version), [int(v) for v in internal], gauss_next],
    }
    gpus = cuda_rng_state()
    if gpus is not None:
        rng["cuda"] = gpus
    return rng


def restore_rng_state(rng: Mapping[str, Any]) -> None:
    """Set the RNGs from :func:`capture_rng_state` output (or the tuples older files hold)."""
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    state = rng.get("numpy")
    if isinstance(state, Mapping):
        key = np.asarray(torch.as_tensor(state["key"]).numpy(), dtype=np.uint32)
        np.random.set_state(
            (
                state["bit_generator"],
                key,
                int(state["pos"]),
                int(state["has_gauss"]),
                float(state["cached_gaussian"]),
            )
        )
    elif state is not None:  # np.random.get_state() tuple (older files)
        name, key, *rest = state
        np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))
    state = rng.get("python")
    if state is not None:
        version, internal, gauss_next = state
        random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    set_cuda_rng_state(rng.get("cuda"))


def build_supernet(meta: Mapping[str, Any]):
    """Rebuild an untrained supernet from its ``meta`` (model name, arguments, space settings;
    see :class:`~widthsearch.supernet.spec.SupernetSpec`)."""
    from .spec import SupernetSpec

    return SupernetSpec.from_meta(meta).build()


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


def load_supernet(path: str | os.PathLike[str], *, trust_pickle: bool = False):
    """Load a supernet checkpoint: ``(supernet in eval mode, payload)``.

    Weights-only; ``trust_pickle`` unpickles a file that needs it (older files), with a
    warning line (see :func:`load_checkpoint`).
    """
    payload = load_checkpoint(path, kind=SUPERNET_FORMAT, trust_pickle=trust_pickle)
    try:
        with torch.random.fork_rng(devices=[]):  # building initialises weights: no side effect
            supernet = build_supernet(payload["meta"])
        supernet.model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match its model ({exc})") from None
    return supernet.eval(), payload
