"""Supernet training and pretraining, the whole job: build from a recipe, (resume), train
epochs, save atomically.

:func:`train_supernet` trains the slimmable supernet (BCNet bilateral coupling with fair
sampling, or the sandwich rule); :func:`pretrain_network` trains the full network plainly,
the start and teacher of a warm-started supernet. Both build a
:class:`~widthsearch.supernet.trainer.SupernetTrainer` (:func:`_run_training`) and run the
loop every training stage shares (:func:`widthsearch.supernet.loop.run_epochs`); both take
the same job options (:class:`~widthsearch.supernet.loop.JobOptions`) as keyword arguments.
The steps are in :mod:`widthsearch.supernet.steps` and the evaluation in
:mod:`widthsearch.supernet.accuracy`; the names of those modules are re-exported here.

Resume is exact: the checkpoint, written before the first epoch and after every epoch,
holds weights, BN stats, optimiser, scheduler and RNG state, and the JSONL log is rewritten
from the checkpoint's history, so the two always agree.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from .accuracy import preserved_state, subnet_top1
from .checkpoint import save_supernet
from .data import batch_resizer, get_data
from .errors import CheckpointError
from .loop import JobOptions, resume_payload, run_epochs
from .runtime import Runtime, broadcast_state, dump_rank_state
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
from .trainer_kinds import get_trainer

__all__ = [
    "CHECKPOINT_NAME",
    "LOG_NAME",
    "PRETRAIN_NAME",
    "JobOptions",
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


def _check_same_budgets(payload: Mapping[str, Any], recipe: Any, *, where: str) -> None:
    """Refuse to resume a ``budgets`` trainer on other budgets than it started with (the
    defaults follow ``[search].budgets``, which a user may edit between two calls)."""
    if recipe.train.trainer != "budgets":
        return
    from .recipe import stored_recipe, trained_budgets

    theirs = trained_budgets(stored_recipe(payload, where=where))
    if theirs != recipe.train.budgets:
        raise CheckpointError(
            f"{where}: was trained for the budgets {theirs}, but the recipe gives "
            f"{recipe.train.budgets}; use another --out or the same budgets"
        )


def train_supernet(
    recipe: Any,
    *,
    out_dir: str | os.PathLike[str],
    init: str | None = None,
    **options: Any,
) -> TrainResult:
    """Train the supernet of ``recipe``, writing ``out_dir/supernet.pt`` and ``train.jsonl``.

    Runs single-process, or data-parallel when started by ``torchrun`` (``WORLD_SIZE > 1``):
    every rank trains its shard with the same widths, only rank 0 writes.

    With a trained network to start from (``init``, else ``[train].init``): its weights are
    loaded, every group's channels are reordered by importance (``[train].channel_order``;
    ``auto``: both ends for BCNet, the front for left-only trainers;
    function-preserving) and the frozen network becomes the teacher every trained subnet
    distils from (``[train].teacher_alpha``, ``teacher_temperature``). Its weights are kept
    in the checkpoint, so resuming and fine-tuning need no other file.

    The checkpoint is written (atomically) before the first epoch and after every epoch, so
    a run killed at any moment leaves a loadable one; ``resume=True`` continues from it
    exactly (same weights as an uninterrupted run).

    Args:
        recipe: A :class:`widthsearch.recipes.recipe.Recipe`.
        out_dir: Output folder.
        init: ``"scratch"``, ``"pretrain"`` (``out_dir/full.pt`` from :func:`pretrain_network`)
            or the path of a trained network (see
            :func:`widthsearch.supernet.warmstart.read_state_dict`); ``None``: the recipe's.
        options: How the job runs, the fields of :class:`~widthsearch.supernet.loop.JobOptions`:
            ``resume`` (continue from ``out_dir/supernet.pt``), ``stop_after`` (train at most
            this many epochs in this call; the schedule still spans ``[train].epochs``),
            ``device``, ``amp`` (``"off"``, ``"bf16"`` or ``"fp16"`` with a gradient scaler),
            ``channels_last``, ``progress``, ``log`` (one line per epoch on rank 0) and
            ``trust_pickle`` (accept files that only unpickling reads, which runs their code:
            an ``init`` file, or an older checkpoint to resume from; see
            :func:`~widthsearch.supernet.checkpoint.load_checkpoint`).

    Raises:
        CheckpointError: Nothing to resume, a corrupt, foreign or mismatched checkpoint, or
            an init file that does not fit the model.
        TrainingDivergedError: The loss became NaN/inf (the last good checkpoint is kept).
        TypeError: An option that is not a job option.
        ValueError: Bad recipe values.
    """
    job = JobOptions.of(options, where="train_supernet")
    out = Path(out_dir)
    init = init if init is not None else getattr(recipe.train, "init", "scratch")
    init_path = None
    if init == "pretrain":
        init_path = out / PRETRAIN_NAME
        if not job.resume and not init_path.is_file():
            raise CheckpointError(
                f"{init_path} does not exist: run `widthsearch pretrain --out {out}` first, "
                "or pass --init FILE"
            )
    elif init and init != "scratch":
        init_path = Path(init)

    def setup(
        sn: Supernet, payload: Mapping[str, Any] | None, batches: Callable[[int], list]
    ) -> dict[str, Any]:
        """Warm start (fresh run) or the stored teacher (resume); the checkpoint's extras."""
        if payload is not None:
            where = str(out / CHECKPOINT_NAME)
            _check_same_budgets(payload, recipe, where=where)
            stored = payload.get("teacher_state_dict")
            extras = {k: payload[k] for k in ("init", "teacher_state_dict") if k in payload}
            teacher = _teacher(recipe, sn.meta, stored, where) if stored else None
            return {"teacher": teacher, **extras}
        if init_path is None:
            return {"teacher": None, "init": {"from": "scratch"}}
        from .warmstart import load_weights, read_state_dict, reorder_channels

        state = read_state_dict(init_path, trust_pickle=job.trust_pickle)
        load_weights(sn.model, state, where=str(init_path))
        order = getattr(recipe.train, "channel_order", "auto")
        if order == "auto":  # important channels where the trained subnets take theirs
            order = "ends" if "right" in get_trainer(recipe.train.trainer).sides else "front"
        importance = getattr(recipe.train, "importance", "gamma")
        data = batches(recipe.train.importance_batches) if importance == "taylor" else None
        reorder_channels(sn, order, batches=data)
        teacher_state = {k: v.detach().clone() for k, v in state.items()}
        return {
            "teacher": _teacher(recipe, sn.meta, teacher_state, str(init_path)),
            "init": {"from": str(init_path), "channel_order": order, "importance": importance},
            "teacher_state_dict": teacher_state,
        }

    from .recipe import with_trained_budgets

    recipe = with_trained_budgets(recipe)  # stored, so a resume can compare the budgets
    return _run_training(
        recipe,
        recipe.train,
        job,
        path=out / CHECKPOINT_NAME,
        log_path=out / LOG_NAME,
        file_format="widthsearch.supernet",
        setup=setup,
    )


def pretrain_network(
    recipe: Any, *, out_dir: str | os.PathLike[str], **options: Any
) -> TrainResult:
    """Train the recipe's model plainly (full width, ``[pretrain]`` settings) into
    ``out_dir/full.pt``: the start and the teacher of a warm-started supernet.

    Same loop, schedule, checkpointing, exact resume, torchrun support and job options
    (``options``: :class:`~widthsearch.supernet.loop.JobOptions`) as :func:`train_supernet`;
    ``full.pt`` holds the model's plain ``state_dict``. ``trust_pickle`` lets it resume from
    an older, pickled checkpoint.
    """
    job = JobOptions.of(options, where="pretrain_network")
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
        job,
        path=out / PRETRAIN_NAME,
        log_path=out / PRETRAIN_LOG_NAME,
        file_format="widthsearch.full",
        setup=lambda sn, payload, batches: {"teacher": None},
    )


def _teacher(
    recipe: Any, meta: Mapping[str, Any], state: Mapping[str, Tensor], where: str
) -> Teacher:
    """The frozen trained network, rebuilt from its weights (``meta``: the model's arguments)."""
    from .warmstart import trained_network

    return Teacher(
        trained_network(meta, state, where=where),
        alpha=getattr(recipe.train, "teacher_alpha", 0.7),
        temperature=getattr(recipe.train, "teacher_temperature", 4.0),
    )


def _run_training(
    recipe: Any,
    section: Any,
    job: JobOptions,
    *,
    path: Path,
    log_path: Path,
    file_format: str,
    setup: Callable[[Supernet, Mapping[str, Any] | None, Callable[[int], list]], dict[str, Any]],
) -> TrainResult:
    """Build, (resume), train epochs, save atomically: the job of both training stages.

    ``setup(sn, payload, batches)`` returns ``{"teacher": Teacher | None, **checkpoint
    extras}``; ``payload`` is the checkpoint being resumed, or ``None`` on a fresh run;
    ``batches(n)`` gives ``n`` training batches (fixed seed, inputs transformed).
    """
    with job.runtime() as runtime:
        if runtime.is_main and job.log is not None:
            job.log(runtime.describe())
        payload = None
        if job.resume:  # fail before any expensive work
            payload = resume_payload(path, kind=file_format, trust_pickle=job.trust_pickle)
        splits, sn, transform = build_training(recipe, runtime=runtime)
        if payload is not None:
            _check_resumable(payload, sn, section.trainer, path)
            try:
                sn.model.load_state_dict(payload["state_dict"])
            except (KeyError, RuntimeError, ValueError) as exc:
                raise CheckpointError(f"{path}: cannot resume from it ({exc})") from None

        def batches(n: int) -> list:
            loader = epoch_loader(
                splits.train,
                epoch=0,
                seed=section.seed + 2,
                batch_size=recipe.data.batch_size,
                workers=0,
                runtime=runtime.local(),
            )
            out = []
            for x, y in itertools.islice(loader, n):
                x, y = x.to(runtime.device), y.to(runtime.device)
                out.append((transform(x) if transform is not None else x, y))
            return out

        extras = setup(sn, payload, batches)
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
            progress=job.progress,
            teacher=teacher,
        )
        if payload is not None:
            trainer.resume(payload["train_state"], payload.get("history", []), path=path)
            trainer.records = LossRecords.from_dict(payload.get("loss_records", {}))
        else:
            broadcast_state(sn, runtime)
        spec = {**dataclasses.asdict(splits.spec), "heldout_digest": splits.heldout_digest}

        def save() -> None:
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

        epochs_run = run_epochs(
            trainer,
            checkpoint=path,
            log_path=log_path,
            save=save,
            resumed=payload is not None,
            save_first=True,  # epoch 0: a loadable checkpoint from the start
            stop_after=job.stop_after,
            log=job.log,
        )
        dump_rank_state(sn.model, runtime)
        return TrainResult(path, log_path, trainer.history, epochs_run, runtime.is_main)
