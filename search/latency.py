"""Predicted latency of any width config: a per-layer lookup table plus a constant overhead.

The model has the cost model's structure: a sum over the slimmable layers of a term in the
widths of the groups each layer touches -- a table over those groups' width choices (one
axis for a layer that reads and writes one group: BN, depthwise convs; two for a dense conv
or linear) -- plus one constant for what the layers do not account for (the stem's input,
pooling, Python overhead). ``widthsearch profile`` measures the table on the user's device
(:func:`widthsearch.evaluate.profile_latency`); this module only holds and evaluates it.

A table is only valid where it was measured: :meth:`LatencyTable.check` refuses one made
for another device, thread count, batch size or model, and :meth:`LatencyTable.bind`
refuses one made for another width space.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from widthsearch.supernet import Supernet, UnsupportedModelError

__all__ = [
    "LATENCY_FORMAT",
    "LatencyModel",
    "LatencyTable",
    "LayerLatency",
    "layer_groups",
    "load_latency_table",
    "monotone",
]

LATENCY_FORMAT = 1  # version of the JSON layout below

# What a table was measured with and for: required fields of the file, checked by type.
_SETTINGS = (
    ("device", str),
    ("threads", int),
    ("batch", int),
    ("torch", str),
    ("model", str),
    ("input_size", int),
    ("in_chans", int),
)
# The fitted and informative numbers: optional in the file (these defaults), finite and >= 0.
_NUMBERS = {"overhead_ms": 0.0, "scale": 1.0, "activation_ms": 0.0}


@dataclass
class LayerLatency:
    """One layer's measured latency over the width choices of the groups it touches.

    Attributes:
        name: The layer's module name (as in ``Supernet.layers``).
        groups: The groups whose widths the term depends on: one (a layer that reads and
            writes the same channels) or two (input group, output group).
        ms: Milliseconds per forward of the layer at batch ``batch``, nested lists with one
            axis per group over that group's choices (ascending); non-decreasing along every
            axis (noise never makes a wider layer cheaper in the model).
    """

    name: str
    groups: list[str]
    ms: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "groups": list(self.groups), "ms": self.ms}


@dataclass
class LatencyTable:
    """A latency model measured on one device, thread count, batch size and model.

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N`` as measured.
        threads: Intra-op threads during the measurement.
        batch: Batch size of every timed forward.
        torch: ``torch.__version__`` of the measurement.
        model: The supernet's model name (its ``meta["model"]``).
        input_size: Square input side.
        in_chans: Input channels.
        choices: The width space measured: group -> its choices (fixed groups: one).
        layers: One term per slimmable layer.
        overhead_ms: The constant term.
        scale: Factor the per-layer timings were multiplied by so that whole subnets match
            their measured latency; informative, already applied to ``layers``.
        activation_ms: Milliseconds per million elements of a layer's output, added to its
            entries for what layer-by-layer timing misses (activations, residual adds, memory
            traffic: they grow with the output, not the MACs); informative, already applied.
        seconds: Wall time of the measurement.
        sample_widths: This many choices per group were timed (all of a group with
            fewer), the rest interpolated; 0: every choice was timed.
        format: Layout version.
    """

    device: str
    threads: int
    batch: int
    torch: str
    model: str
    input_size: int
    in_chans: int
    choices: dict[str, list[int]]
    layers: list[LayerLatency]
    overhead_ms: float = 0.0
    scale: float = 1.0
    activation_ms: float = 0.0
    seconds: float = 0.0
    sample_widths: int = 0
    format: int = LATENCY_FORMAT
    calibration: list[dict[str, float]] = field(default_factory=list)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            **{key: getattr(self, key) for key, _ in _SETTINGS},
            **{key: getattr(self, key) for key in _NUMBERS},
            "seconds": round(float(self.seconds), 3),
            "sample_widths": int(self.sample_widths),
            "calibration": list(self.calibration),
            "choices": {k: list(v) for k, v in self.choices.items()},
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, doc: Any, *, where: str = "latency table") -> LatencyTable:
        """Read and validate a table (``ValueError`` naming the first bad field)."""

        def bad(what: str) -> ValueError:
            return ValueError(f"{where}: {what} (make it again with `widthsearch profile`)")

        if not isinstance(doc, Mapping):
            raise bad("not a JSON object")
        if doc.get("format") != LATENCY_FORMAT:
            raise bad(f"format {doc.get('format')!r}, expected {LATENCY_FORMAT}")
        for key, kind in _SETTINGS:
            if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
                raise bad(f"{key!r} missing or not a {kind.__name__}")
        if doc["threads"] < 1 or doc["batch"] < 1:
            raise bad("threads and batch must be >= 1")
        choices = doc.get("choices")
        if not isinstance(choices, Mapping) or not all(
            isinstance(v, list) and v and all(isinstance(w, int) and w > 0 for w in v)
            for v in choices.values()
        ):
            raise bad("'choices' must map each group to its positive widths")
        if any(list(v) != sorted(set(v)) for v in choices.values()):
            raise bad("'choices' must be ascending and distinct")
        layers = []
        for i, entry in enumerate(doc.get("layers") or []):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise bad(f"layer {i} has no name")
            groups = entry.get("groups")
            if not isinstance(groups, list) or len(groups) not in (1, 2):
                raise bad(f"layer {entry['name']!r}: 'groups' must list one or two groups")
            if any(g not in choices for g in groups):
                raise bad(f"layer {entry['name']!r}: a group is not in 'choices'")
            try:
                ms = np.asarray(entry.get("ms"), dtype=np.float64)
            except (TypeError, ValueError):
                raise bad(f"layer {entry['name']!r}: 'ms' is not a numeric table") from None
            shape = tuple(len(choices[g]) for g in groups)
            if ms.shape != shape:
                raise bad(f"layer {entry['name']!r}: 'ms' has shape {ms.shape}, expected {shape}")
            if not np.isfinite(ms).all() or (ms < 0).any():
                raise bad(f"layer {entry['name']!r}: 'ms' must be finite and >= 0")
            layers.append(LayerLatency(entry["name"], list(groups), ms.tolist()))
        if not layers:
            raise bad("no layers")
        numbers = {k: doc.get(k, d) for k, d in _NUMBERS.items()}
        for key, value in numbers.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise bad(f"{key!r} must be a finite number >= 0")
        sample = doc.get("sample_widths", 0)
        if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
            raise bad("'sample_widths' must be an integer >= 0")
        return cls(
            **{key: doc[key] for key, _ in _SETTINGS},
            choices={k: list(v) for k, v in choices.items()},
            layers=layers,
            **{key: float(value) for key, value in numbers.items()},
            seconds=float(doc.get("seconds", 0.0)),
            sample_widths=sample,
            calibration=list(doc.get("calibration") or []),
        )

    # -- validity ----------------------------------------------------------------------
    def describe(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        return f"{self.model} on {self.device}, {threads}, batch {self.batch}"

    def check(
        self,
        *,
        device: str | None = None,
        threads: int | None = None,
        batch: int | None = None,
        model: str | None = None,
        where: str = "latency table",
    ) -> None:
        """Refuse a table measured elsewhere (``ValueError``, one line): each given setting
        must equal the table's."""
        asked = {"device": device, "threads": threads, "batch": batch, "model": model}
        wrong = [
            k
            for k, v in asked.items()
            if v is not None
            and (not _same_device(v, self.device) if k == "device" else v != getattr(self, k))
        ]
        if wrong:
            want = ", ".join(f"{k} {asked[k]}" for k in wrong)
            have = ", ".join(f"{k} {getattr(self, k)}" for k in wrong)
            raise ValueError(
                f"{where} was measured for {self.describe()} ({have}), not for {want}: "
                "profile again with those settings"
            )

    def bind(self, sn: Supernet) -> LatencyModel:
        """The vectorised model over ``sn``'s width matrix (``ValueError`` when the table was
        made for another width space or another set of layers)."""
        return LatencyModel(self, sn)

    def predict_config(self, sn: Supernet, cfg: Mapping[str, int] | None = None) -> float:
        """Predicted milliseconds of one config of ``sn`` (``None``: full width)."""
        return float(self.bind(sn).predict(sn.widths_vector(cfg or sn.space.max())))


def _same_device(asked: str, measured: str) -> bool:
    """``cuda`` matches any ``cuda:N``; otherwise the names must be equal."""
    try:
        a, m = torch.device(asked), torch.device(measured)
    except RuntimeError:
        return asked == measured
    return a.type == m.type and (a.index is None or a.index == m.index)


def load_latency_table(path: str | Path) -> LatencyTable:
    """Read a table file (``FileNotFoundError`` / ``ValueError``, one line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latency table {path} not found")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"latency table {path}: not readable JSON ({exc})") from None
    return LatencyTable.from_dict(doc, where=f"latency table {path}")


def monotone(ms: np.ndarray) -> np.ndarray:
    """``ms`` made non-decreasing along every axis (running maximum)."""
    out = np.asarray(ms, dtype=np.float64)
    for axis in range(out.ndim):
        out = np.maximum.accumulate(out, axis=axis)
    return out


class LatencyModel:
    """A :class:`LatencyTable` bound to a supernet: milliseconds of ``(n, G)`` width matrices.

    A width the table has no entry for is looked up at the next wider choice (an upper
    bound); width 0 (a removed residual block) makes the layer's term 0.
    """

    def __init__(self, table: LatencyTable, sn: Supernet) -> None:
        self.table = table
        mine = {g.name: list(g.choices) for g in sn.space.groups}
        if mine != table.choices:
            diff = next(
                (n for n in mine if mine[n] != table.choices.get(n)),
                next(iter(set(table.choices) - set(mine)), "?"),
            )
            raise ValueError(
                f"latency table ({table.describe()}) was made for another width space "
                f"(group {diff!r} differs): profile this supernet"
            )
        names = {entry.layer.name for entry in sn.layers}
        missing = [t.name for t in table.layers if t.name not in names]
        if missing:
            raise ValueError(
                f"latency table ({table.describe()}) has layer {missing[0]!r} that this "
                "supernet lacks: profile this supernet"
            )
        index = sn.space.index
        self.overhead = float(table.overhead_ms)
        self.terms: list[tuple[list[int], list[np.ndarray], np.ndarray]] = []
        for entry in table.layers:
            cols = [index[g] for g in entry.groups]
            widths = [np.asarray(table.choices[g], dtype=np.int64) for g in entry.groups]
            self.terms.append((cols, widths, monotone(np.asarray(entry.ms))))
        self.num_groups = len(sn.space.groups)

    def predict(self, widths: np.ndarray):
        """Milliseconds of one width vector ``(G,)`` (-> float) or a matrix ``(n, G)``."""
        widths = np.asarray(widths, dtype=np.int64)
        single = widths.ndim == 1
        widths = np.atleast_2d(widths)
        if widths.shape[1] != self.num_groups:
            raise ValueError(f"expected {self.num_groups} widths per config, got {widths.shape[1]}")
        out = np.full(len(widths), self.overhead)
        for cols, choices, ms in self.terms:
            alive = np.ones(len(widths), dtype=bool)
            where = []
            for col, c in zip(cols, choices, strict=True):
                w = widths[:, col]
                alive &= w > 0
                where.append(np.minimum(np.searchsorted(c, w), len(c) - 1))
            out += np.where(alive, ms[tuple(where)], 0.0)
        return float(out[0]) if single else out

    def expected_torch(self, probs: Mapping[int, tuple[np.ndarray, torch.Tensor]]) -> torch.Tensor:
        """Expected milliseconds when group ``g``'s width is drawn from ``probs[g] = (widths,
        probabilities)`` independently of the others (groups not in ``probs`` at their only
        or widest choice); differentiable in the probabilities."""
        total = torch.tensor(self.overhead, dtype=torch.float64)
        for cols, choices, ms in self.terms:
            table = torch.as_tensor(ms, dtype=torch.float64)
            vectors = []
            for col, c in zip(cols, choices, strict=True):
                if col in probs:
                    w, p = probs[col]
                    w = np.asarray(w, dtype=np.int64)
                    rows = np.minimum(np.searchsorted(c, w), len(c) - 1)
                    pick = torch.zeros(len(w), len(c), dtype=torch.float64)
                    pick[np.arange(len(w))[w > 0], rows[w > 0]] = 1.0  # width 0: term 0
                    vectors.append(p.to(torch.float64) @ pick)
                else:
                    one = torch.zeros(len(c), dtype=torch.float64)
                    one[-1] = 1.0
                    vectors.append(one)
            if len(vectors) == 1:
                total = total + vectors[0] @ table
            elif cols[0] == cols[1]:  # the same group on both axes: its diagonal
                total = total + vectors[0] @ torch.diagonal(table)
            else:
                total = total + vectors[0] @ table @ vectors[1]
        return total


def layer_groups(sn: Supernet) -> list[tuple[str, list[str], bool]]:
    """Per slimmable layer: its name, the groups its latency depends on, and whether its
    input channels follow its output group (normalisers, grouped and depthwise convs)."""
    names = [g.name for g in sn.space.groups]
    out = []
    for layer, in_groups, out_groups in sn.layers:
        if len(in_groups) != 1 or len(out_groups) != 1:
            raise UnsupportedModelError(
                f"latency tables cover layers that read and write one width group; "
                f"{layer.name} reads or writes a concatenation of several"
            )
        (in_g,), (out_g,) = in_groups, out_groups
        follows = in_g == out_g or bool(layer.group_width)
        groups = [names[out_g]] if follows else [names[in_g], names[out_g]]
        out.append((layer.name, groups, follows))
    return out
