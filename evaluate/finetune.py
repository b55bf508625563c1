"""Fine-tuning an extracted subnet: SGD + cosine, optional distillation from a teacher.

Inherited weights are a good start, not a trained network: a few epochs on the training
split recover most of the gap. With a teacher (the supernet at full width) the loss is
``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`` on logits softened by the
temperature ``T`` (Hinton et al.). The teacher is the trained network the supernet started
from, when there is one; else the supernet's full width, whose BN statistics are
recalibrated first (:mod:`widthsearch.evaluate.teacher`).

The epochs are the loop every training stage shares (:mod:`widthsearch.supernet.loop`): the
same schedule, data order and seeding as supernet training, runtime (device, mixed
precision, data-parallel under ``torchrun`` with replicas bit-identical and rank 0 writing),
divergence check and job options. What is fine-tuning's own is here: the dense student
built from the subnet file (or freshly initialised, ``init="random"``), the teacher, the
step and what an epoch reports, and the subnet file written at the end.

Resumable like supernet training: after every epoch the whole state (weights, optimiser,
schedule, history) goes atomically to ``<out stem>.ckpt.pt``; ``resume=True`` continues
from it with the same data order and augmentation, so an interrupted run ends with the same
weights as an uninterrupted one (also at another world size). The output file is written
only at the end; the per-epoch history also goes to ``<out stem>.jsonl``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from widthsearch.search import calibration_batches, load_split_images, recipe_splits
from widthsearch.supernet.bn import recalibrate_bn
from widthsearch.supernet.checkpoint import atomic_save
from widthsearch.supernet.errors import CheckpointError, WidthsearchError
from widthsearch.supernet.loop import EpochTrainer, JobOptions, resume_payload, run_epochs
from widthsearch.supernet.recipe import FINETUNE_INITS, stored_recipe
from widthsearch.supernet.runtime import Runtime, broadcast_state, dump_rank_state
from widthsearch.supernet.steps import Teacher, distill_loss

from ._common import build_subnet, output_path, read_subnet, save_subnet, top1
from .teacher import load_teacher

__all__ = [
    "STATE_FORMAT",
    "distill_loss",
    "finetune_paths",
    "finetune_subnet",
    "load_teacher",
]

STATE_FORMAT = "widthsearch.finetune-state"
STATE_VERSION = 2  # 2: weights-only (no pickled module: the subnet file gives the architecture)


def finetune_paths(out: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(output, per-epoch checkpoint, JSON-lines log)`` of a fine-tuning run."""
    out = Path(out)
    return out, out.with_name(out.stem + ".ckpt.pt"), out.with_suffix(".jsonl")


def finetune_subnet(
    subnet: str | os.PathLike[str] | Mapping[str, Any],
    *,
    out: str | os.PathLike[str],
    epochs: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    momentum: float = 0.9,
    teacher: str | os.PathLike[str] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    batch_size: int | None = None,
    train_limit: int | None = None,
    eval_images: int = 1000,
    seed: int = 0,
    init: str | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune a subnet file and write the result (same format, plus ``"finetune"``).

    Args:
        subnet: Subnet file (``extract`` output) or its loaded payload.
        out: Output file; ``<stem>.ckpt.pt`` (per-epoch state) and ``<stem>.jsonl`` (log)
            are written next to it.
        epochs, lr, weight_decay: Default to the recipe's ``[finetune]`` section; 0 epochs
            writes the subnet unchanged (with an empty history), so a pipeline can skip
            fine-tuning without a special case.
        momentum: SGD (Nesterov) momentum.
        teacher: Network to distil from: a ``full.pt`` or a supernet checkpoint (see
            :func:`load_teacher`).
        temperature, alpha: Distillation temperature and weight of the KL term.
        batch_size: Default: the recipe's ``[data].batch_size``.
        train_limit: Use only this many training images (default: the recipe's).
        eval_images: Held-out images scored after each epoch (0: none).
        seed: Seeds data order, augmentation and dropout (and the weights of ``init="random"``).
        init: ``"inherit"``: start from the subnet's weights; ``"random"``: from the model's
            own random initialisation at the subnet's widths (retraining the searched
            architecture; give it a from-scratch ``lr`` and ``epochs``). Default: the
            recipe's ``[finetune].init``.
        export_dir: Also export the result there (:func:`export_subnet`).
        options: How the job runs, the fields of
            :class:`~widthsearch.supernet.loop.JobOptions`: ``resume`` (continue from
            ``<stem>.ckpt.pt``), ``stop_after`` (train at most this many epochs in this call;
            the schedule still spans ``epochs`` and the output is written only once all are
            done), ``progress`` (tqdm bars; ``None``: only on a terminal), ``log`` (one line
            per epoch), ``trust_pickle`` (accept subnet, teacher and state files that need
            unpickling: older files), ``device``, ``amp``, ``channels_last`` (where and in
            which precision and layout to train; the output is stored on the CPU, loadable
            anywhere) and ``data_parallel`` (``False``: fine-tune in this process alone, rank
            0 of a job whose other ranks are done).

    Returns:
        The output payload (``"finetune"``: settings and per-epoch history). When
        ``stop_after`` ends the call early, the payload of the unfinished run (not written).

    Raises:
        CheckpointError: missing/corrupt/pickled subnet or teacher, teacher of another
            model, nothing (or a mismatched run) to resume.
        TrainingDivergedError: the loss became NaN or infinite (before any step with it).
        TypeError: an option that is not a job option.
        ValueError: bad options.
    """
    job = JobOptions.of(options, where="finetune_subnet")
    source = None if isinstance(subnet, Mapping) else str(subnet)
    payload = (
        dict(subnet)
        if isinstance(subnet, Mapping)
        else read_subnet(subnet, trust_pickle=job.trust_pickle)
    )
    meta = dict(payload["meta"])
    recipe = payload.get("recipe") if isinstance(payload.get("recipe"), Mapping) else {}
    typed = stored_recipe(payload, where=source or "subnet")
    epochs = int(epochs if epochs is not None else typed.finetune.epochs)
    lr = float(lr if lr is not None else typed.finetune.lr)
    weight_decay = float(weight_decay if weight_decay is not None else typed.finetune.weight_decay)
    batch_size = int(batch_size if batch_size is not None else typed.data.batch_size)
    init = init if init is not None else typed.finetune.init
    if init not in FINETUNE_INITS:
        raise ValueError(f"init must be one of {', '.join(FINETUNE_INITS)}, got {init!r}")
    if init == "random":  # the same architecture, the model's own initialisation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            payload["module"] = build_subnet(meta, payload["widths"])
        payload["state_dict"] = payload["module"].state_dict()
        payload["inheritance"] = {"chosen": "random-init", "scores": {}}
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if lr <= 0 or weight_decay < 0 or batch_size < 1 or temperature <= 0:
        raise ValueError("need lr > 0, weight_decay >= 0, batch_size >= 1 and temperature > 0")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out, ckpt_path, log_path = finetune_paths(output_path(out))
    settings = {
        "epochs": epochs,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "batch_size": batch_size,
        "teacher": str(teacher) if teacher else None,
        "temperature": temperature if teacher else None,
        "alpha": alpha if teacher else None,
        "seed": seed,
        "init": init,
        "train_limit": train_limit,
        "source": source,
    }
    state = None
    if job.resume:  # fail before any expensive work
        state = resume_payload(ckpt_path, kind=STATE_FORMAT, trust_pickle=job.trust_pickle)
        _check_settings(state.get("settings", {}), settings, ckpt_path)
    with job.runtime() as runtime:
        return _train(
            payload,
            recipe,
            settings,
            state,
            job,
            runtime=runtime,
            teacher=teacher,
            meta=meta,
            source=source,
            files=(out, ckpt_path, log_path),
            eval_images=eval_images,
            export_dir=export_dir,
        )


def _check_settings(theirs: Mapping[str, Any], ours: Mapping[str, Any], path: Path) -> None:
    """Refuse to resume a run of other settings (one line naming the first that differs)."""
    for key, value in ours.items():
        recorded = theirs.get(key, "inherit" if key == "init" else None)  # older files
        if key != "source" and recorded != value:
            raise CheckpointError(
                f"{path}: was run with {key}={theirs.get(key)!r}, now {value!r}; "
                "resume with the same options or start afresh without --resume"
            )


def _train(
    payload: dict[str, Any],
    recipe: Any,
    settings: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    job: JobOptions,
    *,
    runtime: Runtime,
    teacher: str | os.PathLike[str] | None,
    meta: Mapping[str, Any],
    source: str | None,
    files: tuple[Path, Path, Path],
    eval_images: int,
    export_dir: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """The epochs of :func:`finetune_subnet` on ``runtime`` (settings already checked)."""
    out, ckpt_path, log_path = files
    teacher_model, recalibrate_teacher = None, False
    if teacher:
        teacher_model, recalibrate_teacher = load_teacher(
            teacher, meta, trust_pickle=job.trust_pickle
        )
        runtime.module(teacher_model)
    finish = {"out": out, "ckpt_path": ckpt_path, "export_dir": export_dir, "runtime": runtime}
    if settings["epochs"] == 0:  # nothing to train: no data needed
        return _finish(payload, payload["module"], settings, [], **finish)
    batch_size = settings["batch_size"]
    if settings["train_limit"] is not None:
        recipe = copy.deepcopy(dict(recipe))
        recipe["data"] = {**recipe.get("data", {}), "train_limit": int(settings["train_limit"])}
    splits, resize = recipe_splits(recipe, meta, augment=True, where=source or "subnet")
    if len(splits.train) < batch_size * runtime.world_size and runtime.distributed:
        raise WidthsearchError(
            f"the training split ({len(splits.train)} images) is smaller than one batch of "
            f"{batch_size} per process ({runtime.world_size} processes)"
        )
    if len(splits.train) == 0:
        raise WidthsearchError("the training split is empty: nothing to fine-tune on")
    if recalibrate_teacher:
        # The supernet's running BN stats mix every width it trained; at full width they
        # give wild logits (an untrained-looking teacher). Recalibrate on training images,
        # the distribution the teacher sees here.
        recalibrate_bn(teacher_model, calibration_batches(splits.train, recipe, resize=resize))
    heldout = []
    if eval_images > 0 and len(splits.heldout):
        hx, hy = load_split_images(splits.heldout, eval_images, seed=settings["seed"])
        heldout = [(resize(a), b) for a, b in zip(hx.split(256), hy.split(256), strict=True)]

    student = runtime.module(payload["module"])
    if state is not None:  # same architecture as the subnet: only the weights differ
        try:
            student.load_state_dict(state["state_dict"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt_path}: weights do not fit the subnet ({exc})") from None
    else:
        broadcast_state(student, runtime)
    distiller = None
    if teacher_model is not None:
        distiller = Teacher(
            teacher_model, alpha=settings["alpha"], temperature=settings["temperature"]
        )
    trainer = _Finetuner(
        student,
        splits.train,
        heldout,
        settings,
        teacher=distiller,
        transform=resize,
        runtime=runtime,
        progress=job.progress,
    )
    if state is not None:
        trainer.resume(state, state.get("history", []), path=ckpt_path)

    def save() -> None:
        doc = {"format": STATE_FORMAT, "version": STATE_VERSION}
        doc["state_dict"] = student.state_dict()  # saved on the CPU
        doc.update(trainer.state_dict(), history=trainer.history, settings=dict(settings))
        atomic_save(doc, ckpt_path)

    run_epochs(
        trainer,
        checkpoint=ckpt_path,
        log_path=log_path,
        save=save,
        resumed=state is not None,
        stop_after=job.stop_after,
        log=job.log,
    )
    dump_rank_state(student, runtime)
    return _finish(payload, student, settings, trainer.history, **finish)


# the fine-tuning settings that are the shared loop's own (the same names there)
_LOOP_SETTINGS = ("epochs", "seed", "lr", "momentum", "weight_decay", "batch_size")


class _Finetuner(EpochTrainer):
    """One epoch of fine-tuning: cross-entropy (plus distillation from a teacher) on the
    dense student; train top-1 and the held-out top-1 per epoch."""

    label = "finetune"
    hint = "try a smaller --lr"
    summary_fields = (
        ("loss", "loss"),
        ("train_top1", "train top-1"),
        ("heldout_top1", "held-out top-1"),
    )
    loss_names = ("fine-tuning", "label", "distillation")

    def __init__(
        self,
        student: nn.Module,
        train_set: Any,
        heldout: list[tuple[Tensor, Tensor]],
        settings: Mapping[str, Any],
        *,
        teacher: Teacher | None,
        transform: Any,
        runtime: Runtime,
        progress: bool | None,
    ) -> None:
        super().__init__(
            student,
            train_set,
            short_split=True,  # a split smaller than a batch still fine-tunes
            runtime=runtime,
            transform=transform,
            progress=progress,
            **{key: settings[key] for key in _LOOP_SETTINGS},
        )
        self.heldout = heldout
        self.teacher = teacher

    def _where(self, epoch: int) -> str:
        return f"fine-tuning epoch {epoch}"

    def _begin_epoch(self) -> None:
        device = self.runtime.device
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, ce, kd
        self._correct = torch.zeros((), dtype=torch.int64, device=device)
        self._seen = 0

    def _train_step(self, x: Tensor, y: Tensor) -> tuple[Sequence[str], Tensor, Tensor]:
        with self.runtime.autocast():
            logits = self.module(x)
            ce = F.cross_entropy(logits, y)
            loss, kd = ce, torch.zeros((), device=self.runtime.device)
            if self.teacher is not None:
                t_logits = self.teacher.logits(x)
                kd = distill_loss(logits, t_logits, temperature=self.teacher.temperature)
                loss = self.teacher.mix(ce, kd)
        self.scaler.scale(loss).backward()
        losses = torch.stack([loss.float(), ce.float(), kd.float()]).detach()
        return self.loss_names, losses, logits.detach()

    def _account(
        self, names: Sequence[str], values: list[float], losses: Tensor, info: Any, y: Tensor
    ) -> None:
        self._sums += losses.double() * len(y)
        self._correct += (info.argmax(1) == y).sum()
        self._seen += len(y)

    def _postfix(self) -> dict[str, str]:
        return {"loss": f"{float(self._sums[0]) / self._seen:.3f}"}

    def _epoch_entry(self) -> dict[str, Any]:
        seen = max(self._seen, 1)
        loss_sum, ce_sum, kd_sum = self._sums.tolist()
        return {
            "loss": loss_sum / seen,
            "ce": ce_sum / seen,
            "kd": kd_sum / seen if self.teacher is not None else None,
            "train_top1": int(self._correct) / seen,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images": self._seen * self.runtime.world_size,
        }

    def evaluate(self) -> dict[str, Any]:
        held = top1(self.module, self.heldout, runtime=self.runtime) if self.heldout else None
        return {"heldout_top1": held}


def _finish(
    payload: Mapping[str, Any],
    student: Any,
    settings: Mapping[str, Any],
    history: list[dict[str, Any]],
    *,
    out: Path,
    ckpt_path: Path,
    export_dir: str | os.PathLike[str] | None,
    runtime: Runtime,
) -> dict[str, Any]:
    """The output payload (on the CPU); written by rank 0 (and the per-epoch state removed)
    once all epochs ran."""
    student = student.cpu().eval()
    if runtime.channels_last:
        student.to(memory_format=torch.contiguous_format)
    result = dict(payload)
    result["module"] = student
    result["state_dict"] = student.state_dict()
    result["finetune"] = {**settings, "history": history}
    result.pop("exports", None)
    if len(history) < settings["epochs"] or not runtime.is_main:
        return result  # stopped early (resume later), or another rank's copy
    save_subnet(result, out)
    ckpt_path.unlink(missing_ok=True)
    if export_dir is not None:
        from .export import export_subnet

        result["exports"] = export_subnet(result, export_dir, stem=out.stem)
    return result
