"""Supernet training and pretraining, the whole job: build from a recipe, (resume), train
epochs, save atomically.

:func:`train_supernet` trains the slimmable supernet (BCNet bilateral coupling with fair
sampling, or the sandwich rule); :func:`pretrain_network` trains the full network plainly,
the start and teacher of a warm-started supernet. Both run the one loop
(:func:`_run_training`) over :class:`~widthsearch.supernet.trainer.SupernetTrainer`, whose
steps are in :mod:`widthsearch.supernet.steps` and whose evaluation is in
:mod:`widthsearch.supernet.accuracy`; the names of those modules are re-exported here.

Resume is exact: the checkpoint, written before the first epoch and after every epoch,
holds weights, BN stats, optimiser, scheduler and RNG state, and the JSONL log is rewritten
from the checkpoint's history, so the two always agree.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from .accuracy import preserved_state, subnet_top1
from .checkpoint import load_checkpoint, save_supernet, write_jsonl_atomic
from .data import batch_resizer, get_data
from .errors import CheckpointError
from .runtime import (
    Runtime,
    barrier,
    broadcast_state,
    dump_rank_state,
    init_runtime,
    shutdown_runtime,
)
from .spec import SupernetSpec
from .steps import (
    LossRecords,
    Teacher,
    bcnet_step,
    distill_loss,
    sandwich_step,
    soft_cross_entropy,
)
from .supernet import Supernet
from .trainer import SupernetTrainer, TrainingDivergedError, epoch_loader, epoch_seed

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PRETRAIN_NAME",
    "LossRecords",
    "SupernetTrainer",
    "Teacher",
    "TrainResult",
    "TrainingDivergedError",
    "bcnet_step",
    "build_training",
    "distill_loss",
    "epoch_loader",
    "epoch_seed",
    "preserved_state",
    "pretrain_network",
    "sandwich_step",
    "soft_cross_entropy",
    "subnet_top1",
    "train_supernet",
]

CHECKPOINT_NAME = "supernet.pt"
LOG_NAME = "train.jsonl"
PRETRAIN_NAME = "full.pt"
PRETRAIN_LOG_NAME = "pretrain.jsonl"


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_supernet` did."""

    checkpoint: Path
    log: Path
    history: list[dict[str, Any]]
    epochs_run: int
    is_main: bool = True  # rank 0 (the one that wrote the files)


def _seconds_line(entry: Mapping[str, Any]) -> str:
    parts = [f"epoch {entry['epoch']}", f"loss {entry['loss']:.4f}"]
    for key in ("top1_max", "top1_min"):
        if key in entry:
            parts.append(f"{key} {entry[key]:.4f}")
    parts.append(f"{entry['seconds']:.1f}s")
    return "  ".join(parts)


def build_training(recipe: Any, *, runtime: Runtime | None = None, download: bool = True):
    """Data splits, supernet and input transform for ``recipe``, seeded by ``[train].seed``.

    Args:
        recipe: A :class:`widthsearch.recipes.recipe.Recipe` (or anything with its sections).
        runtime: Where the supernet goes (device, memory format).

    Returns:
        ``(splits, supernet, transform)``; ``transform`` resizes batches when
        ``[model].input_size`` differs from the dataset's size (else ``None``).
    """
    runtime = runtime or Runtime()
    d, m = recipe.data, recipe.model
    splits = get_data(
        d.name,
        root=d.root or None,
        heldout_size=d.heldout_size,
        seed=d.seed,
        train_limit=d.train_limit or None,
        test_limit=d.test_limit or None,
        download=download,
        synthetic_input_size=m.input_size if m.input_size > 0 else 28,
    )
    spec = splits.spec
    size = m.input_size if m.input_size > 0 else spec.input_size
    transform = batch_resizer(spec.input_size, size) if size != spec.input_size else None

    torch.manual_seed(recipe.train.seed)  # same initial weights on every rank and run
    sn = SupernetSpec(
        model=m.name,
        num_classes=spec.num_classes,
        in_chans=spec.in_chans,
        input_size=size,
        bins=recipe.space.bins,
        min_bins=recipe.space.min_bins,
        round_to=recipe.space.round_to,
    ).build()
    runtime.module(sn)
    return splits, sn, transform


def _check_resumable(payload: Mapping[str, Any], sn: Supernet, trainer: str, path: Path) -> None:
    """Refuse checkpoints of another model, width space or trainer (one clear line)."""
    state = payload.get("train_state")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: has no training state to resume from")
    theirs = payload.get("meta", {})
    for key, ours in sn.meta.items():
        if theirs.get(key) != ours:
            raise CheckpointError(
                f"{path}: was trained with {key}={theirs.get(key)!r}, but the recipe gives "
                f"{ours!r}; use another --out or the same recipe"
            )
    if state.get("trainer") != trainer:
        raise CheckpointError(
            f"{path}: was trained by the {state.get('trainer')!r} trainer, not {trainer!r}"
        )


def train_supernet(
    recipe: Any,
    *,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
    progress: bool = True,
    log: Any = print,
    stop_after: int | None = None,
    init: str | None = None,
    trust_pickle: bool = False,
) -> TrainResult:
    """Train the supernet of ``recipe``, writing ``out_dir/supernet.pt`` and ``train.jsonl``.

    Runs single-process, or data-parallel when started by ``torchrun`` (``WORLD_SIZE > 1``):
    every rank trains its shard with the same widths, only rank 0 writes.

    With a trained network to start from (``init``, else ``[train].init``): its weights are
    loaded, every group's channels are reordered by importance (``[train].channel_order``,
    function-preserving) and the frozen network becomes the teacher every trained subnet
    distils from (``[train].teacher_alpha``, ``teacher_temperature``). Its weights are kept
    in the checkpoint, so resuming and fine-tuning need no other file.

    The checkpoint is written (atomically) before the first epoch and after every epoch, so
    a run killed at any moment leaves a loadable one; ``resume=True`` continues from it
    exactly (same weights as an uninterrupted run).

    Args:
        recipe: A :class:`widthsearch.recipes.recipe.Recipe`.
        out_dir: Output folder.
        resume: Continue from ``out_dir/supernet.pt``.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        amp: Mixed precision of the forward passes: ``"off"``, ``"bf16"`` or ``"fp16"``
            (with a gradient scaler).
        channels_last: Channels-last memory format for weights and batches.
        progress: tqdm bars on rank 0.
        log: Called with one summary line per epoch (rank 0).
        stop_after: Train at most this many epochs in this call (time-limited jobs); the
            schedule still spans ``[train].epochs``, and ``resume=True`` picks up from there.
        init: ``"scratch"``, ``"pretrain"`` (``out_dir/full.pt`` from :func:`pretrain_network`)
            or the path of a trained network (see
            :func:`widthsearch.supernet.warmstart.read_state_dict`); ``None``: the recipe's.
        trust_pickle: Accept files that only unpickling reads (runs their code): an ``init``
            file, or an older checkpoint to resume from; refused otherwise (see
            :func:`~widthsearch.supernet.checkpoint.load_checkpoint`).

    Raises:
        CheckpointError: Nothing to resume, a corrupt, foreign or mismatched checkpoint, or
            an init file that does not fit the model.
        TrainingDivergedError: The loss became NaN/inf (the last good checkpoint is kept).
        ValueError: Bad recipe values.
    """
    out = Path(out_dir)
    init = init if init is not None else getattr(recipe.train, "init", "scratch")
    init_path = None
    if init == "pretrain":
        init_path = out / PRETRAIN_NAME
        if not resume and not init_path.is_file():
            raise CheckpointError(
                f"{init_path} does not exist: run `widthsearch pretrain --out {out}` first, "
                "or pass --init FILE"
            )
    elif init and init != "scratch":
        init_path = Path(init)

    def setup(sn: Supernet, payload: Mapping[str, Any] | None) -> dict[str, Any]:
        """Warm start (fresh run) or the stored teacher (resume); the checkpoint's extras."""
        if payload is not None:
            stored = payload.get("teacher_state_dict")
            extras = {k: payload[k] for k in ("init", "teacher_state_dict") if k in payload}
            where = str(out / CHECKPOINT_NAME)
            teacher = _teacher(recipe, sn.meta, stored, where) if stored else None
            return {"teacher": teacher, **extras}
        if init_path is None:
            return {"teacher": None, "init": {"from": "scratch"}}
        from .warmstart import load_weights, read_state_dict, reorder_channels

        state = read_state_dict(init_path, trust_pickle=trust_pickle)
        load_weights(sn.model, state, where=str(init_path))
        order = getattr(recipe.train, "channel_order", "ends")
        reorder_channels(sn, order)
        teacher_state = {k: v.detach().clone() for k, v in state.items()}
        return {
            "teacher": _teacher(recipe, sn.meta, teacher_state, str(init_path)),
            "init": {"from": str(init_path), "channel_order": order},
            "teacher_state_dict": teacher_state,
        }

    return _run_training(
        recipe,
        recipe.train,
        path=out / CHECKPOINT_NAME,
        log_path=out / LOG_NAME,
        file_format="widthsearch.supernet",
        resume=resume,
        device=device,
        amp=amp,
        channels_last=channels_last,
        progress=progress,
        log=log,
        stop_after=stop_after,
        setup=setup,
        trust_pickle=trust_pickle,
    )


def pretrain_network(
    recipe: Any,
    *,
    out_dir: str | os.PathLike[str],
    resume: bool = False,
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
    progress: bool = True,
    log: Any = print,
    stop_after: int | None = None,
    trust_pickle: bool = False,
) -> TrainResult:
    """Train the recipe's model plainly (full width, ``[pretrain]`` settings) into
    ``out_dir/full.pt``: the start and the teacher of a warm-started supernet.

    Same loop, schedule, checkpointing, exact resume and torchrun support as
    :func:`train_supernet`; ``full.pt`` holds the model's plain ``state_dict``.
    ``trust_pickle`` lets it resume from an older, pickled checkpoint.
    """
    section = SimpleNamespace(
        **{
            **dataclasses.asdict(recipe.train),
            **dataclasses.asdict(recipe.pretrain),
            "trainer": "plain",
            "distill": False,
        }
    )
    out = Path(out_dir)
    return _run_training(
        recipe,
        section,
        path=out / PRETRAIN_NAME,
        log_path=out / PRETRAIN_LOG_NAME,
        file_format="widthsearch.full",
        resume=resume,
        device=device,
        amp=amp,
        channels_last=channels_last,
        progress=progress,
        log=log,
        stop_after=stop_after,
        setup=lambda sn, payload: {"teacher": None},
        trust_pickle=trust_pickle,
    )


def _teacher(
    recipe: Any, meta: Mapping[str, Any], state: Mapping[str, Tensor], where: str
) -> Teacher:
    """The frozen trained network, rebuilt from its weights (``meta``: the model's arguments)."""
    from .models import create_model
    from .warmstart import load_weights

    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    load_weights(model, state, where=where)
    return Teacher(
        model,
        alpha=getattr(recipe.train, "teacher_alpha", 0.7),
        temperature=getattr(recipe.train, "teacher_temperature", 4.0),
    )


def _run_training(
    recipe: Any,
    section: Any,
    *,
    path: Path,
    log_path: Path,
    file_format: str,
    resume: bool,
    device: str,
    amp: str,
    channels_last: bool,
    progress: bool,
    log: Any,
    stop_after: int | None,
    setup: Any,
    trust_pickle: bool = False,
) -> TrainResult:
    """The loop every training stage shares: build, (resume), train epochs, save atomically.

    ``setup(sn, payload)`` returns ``{"teacher": Teacher | None, **checkpoint extras}``;
    ``payload`` is the checkpoint being resumed, or ``None`` on a fresh run.
    """
    out = path.parent
    runtime = init_runtime(device, amp=amp, channels_last=channels_last)
    if runtime.is_main and log is not None:
        log(runtime.describe())
    try:
        payload = None
        if resume:  # fail before any expensive work
            if not path.is_file():
                raise CheckpointError(f"nothing to resume: {path} does not exist")
            payload = load_checkpoint(path, kind=file_format, trust_pickle=trust_pickle)
        splits, sn, transform = build_training(recipe, runtime=runtime)
        if payload is not None:
            _check_resumable(payload, sn, section.trainer, path)
            try:
                sn.model.load_state_dict(payload["state_dict"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{path}: cannot resume from it ({exc})") from None
        extras = setup(sn, payload)
        teacher = extras.pop("teacher")
        if teacher is not None:
            teacher = dataclasses.replace(teacher, model=runtime.module(teacher.model))
        trainer = SupernetTrainer(
            sn,
            splits.train,
            splits.heldout if len(splits.heldout) else None,
            section,
            batch_size=recipe.data.batch_size,
            workers=recipe.data.workers,
            calib_batches=getattr(getattr(recipe, "search", None), "calib_batches", 4),
            runtime=runtime,
            transform=transform,
            progress=progress,
            teacher=teacher,
        )
        if payload is not None:
            try:
                trainer.load_state_dict(payload["train_state"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{path}: cannot resume from it ({exc})") from None
            trainer.records = LossRecords.from_dict(payload.get("loss_records", {}))
            trainer.history = list(payload.get("history", []))
        else:
            broadcast_state(sn, runtime)
        spec = {**dataclasses.asdict(splits.spec), "heldout_digest": splits.heldout_digest}

        def save() -> None:
            if runtime.is_main:
                save_supernet(
                    path,
                    sn,
                    file_format=file_format,
                    recipe=recipe.to_dict(),
                    loss_records=trainer.records.to_dict(),
                    train_state=trainer.state_dict(),
                    data=spec,
                    history=trainer.history,
                    **extras,
                )
                write_jsonl_atomic(trainer.history, log_path)

        if runtime.is_main:  # temp files of writes killed half-way
            for name in (path.name, log_path.name):
                for stale in out.glob(f".{name}.*.tmp"):
                    stale.unlink(missing_ok=True)
        if payload is None:
            save()  # epoch 0: a loadable checkpoint from the start
        elif runtime.is_main:
            write_jsonl_atomic(
                trainer.history, log_path
            )  # drop lines of epochs the checkpoint lacks
        start_epoch = trainer.epoch
        if stop_after is not None and stop_after < 0:
            raise ValueError(f"stop_after must be >= 0, got {stop_after}")
        last = section.epochs if stop_after is None else start_epoch + stop_after
        while trainer.epoch < min(last, section.epochs):
            try:
                entry = trainer.train_epoch()
            except TrainingDivergedError as exc:
                done = trainer.epoch  # epochs in the checkpoint on disk
                raise TrainingDivergedError(
                    f"{exc}; kept the last good checkpoint {path} (epoch {done})"
                ) from None
            if runtime.is_main:
                start = time.perf_counter()
                entry.update(trainer.evaluate())
                entry["eval_seconds"] = time.perf_counter() - start
                trainer.history.append(entry)
            save()
            if runtime.is_main:
                log(_seconds_line(entry))
        barrier(runtime)
        dump_rank_state(sn.model, runtime)
        return TrainResult(
            path, log_path, trainer.history, trainer.epoch - start_epoch, runtime.is_main
        )
    finally:
        shutdown_runtime(runtime)
