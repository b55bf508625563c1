"""Fine-tuning an extracted subnet: SGD + cosine, optional distillation from a teacher.

Inherited weights are a good start, not a trained network: a few epochs on the training
split recover most of the gap. With a teacher (the supernet at full width) the loss is
``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)`` on logits softened by the
temperature ``T`` (Hinton et al.). The teacher is the trained network the supernet started
from, when there is one; else the supernet's full width, whose BN statistics are
recalibrated first (:mod:`widthsearch.evaluate.teacher`).

Runs on the runtime's device with its mixed precision and layout, and data-parallel under
``torchrun`` like supernet training (each rank trains its shard of every epoch, gradients
averaged explicitly, replicas bit-identical; rank 0 writes). The per-epoch state resumes
at another world size.

Resumable like supernet training: after every epoch the whole state (weights, optimiser,
schedule, history) goes atomically to ``<out stem>.ckpt.pt``; ``resume=True`` continues
from it with the same data order and augmentation, so an interrupted run ends with the same
weights as an uninterrupted one. The output file is written only at the end; the per-epoch
history also goes to ``<out stem>.jsonl``.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from widthsearch.search import calibration_batches, load_split_images, recipe_splits
from widthsearch.supernet.bn import recalibrate_bn
from widthsearch.supernet.checkpoint import atomic_save, load_checkpoint
from widthsearch.supernet.errors import CheckpointError, WidthsearchError
from widthsearch.supernet.recipe import FINETUNE_INITS, stored_recipe
from widthsearch.supernet.runtime import (
    Runtime,
    allreduce_grads,
    average_buffers,
    barrier,
    broadcast_state,
    dump_rank_state,
    init_runtime,
    local_runtime,
    shutdown_runtime,
)
from widthsearch.supernet.train import distill_loss
from widthsearch.supernet.trainer import (
    check_finite,
    cosine_schedule,
    epoch_loader,
    epoch_seed,
    resume_schedule,
)

from ._common import (
    build_subnet,
    output_path,
    read_subnet,
    save_subnet,
    top1,
    write_jsonl_atomic,
)
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
    resume: bool = False,
    stop_after: int | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    log: Callable[[str], Any] | None = print,
    trust_pickle: bool = False,
    device: str = "auto",
    amp: str = "off",
    channels_last: bool = False,
    data_parallel: bool = True,
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
        resume: Continue from ``<stem>.ckpt.pt``.
        stop_after: Train at most this many epochs in this call (the schedule still spans
            ``epochs``); the output is written only once all epochs are done.
        export_dir: Also export the result there (:func:`export_subnet`).
        progress: tqdm bars (``None``: only on a terminal).
        log: Called with one summary line per epoch.
        trust_pickle: Accept subnet, teacher and state files that need unpickling (older
            files); refused otherwise.
        device, amp, channels_last: Where and in which precision and layout to train (see
            :func:`widthsearch.supernet.runtime.init_runtime`); the output is stored on
            the CPU, loadable anywhere.
        data_parallel: Join the ``torchrun`` job in the environment (if any); ``False``
            fine-tunes in this process alone (rank 0 of a job whose other ranks are done).

    Returns:
        The output payload (``"finetune"``: settings and per-epoch history). When
        ``stop_after`` ends the call early, the payload of the unfinished run (not written).

    Raises:
        CheckpointError: missing/corrupt/pickled subnet or teacher, teacher of another
            model, nothing (or a mismatched run) to resume.
        TrainingDivergedError: the loss became NaN or infinite (before any step with it).
        ValueError: bad options.
    """
    source = None if isinstance(subnet, Mapping) else str(subnet)
    payload = (
        dict(subnet)
        if isinstance(subnet, Mapping)
        else read_subnet(subnet, trust_pickle=trust_pickle)
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
    if stop_after is not None and stop_after < 0:
        raise ValueError(f"stop_after must be >= 0, got {stop_after}")
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
    if resume:  # fail before any expensive work
        if not ckpt_path.is_file():
            raise CheckpointError(f"nothing to resume: {ckpt_path} does not exist")
        state = load_checkpoint(ckpt_path, kind=STATE_FORMAT, trust_pickle=trust_pickle)
        theirs = state.get("settings", {})
        for key, value in settings.items():
            recorded = theirs.get(key, "inherit" if key == "init" else None)  # older files
            if key != "source" and recorded != value:
                raise CheckpointError(
                    f"{ckpt_path}: was run with {key}={theirs.get(key)!r}, now {value!r}; "
                    "resume with the same options or start afresh without --resume"
                )
    if data_parallel:
        runtime = init_runtime(device, amp=amp, channels_last=channels_last)
    else:
        runtime = local_runtime(device, amp=amp, channels_last=channels_last)
    try:
        return _train(
            payload,
            recipe,
            settings,
            state,
            runtime=runtime,
            teacher=teacher,
            meta=meta,
            source=source,
            out=out,
            ckpt_path=ckpt_path,
            log_path=log_path,
            stop_after=stop_after,
            eval_images=eval_images,
            export_dir=export_dir,
            progress=progress,
            log=log,
            trust_pickle=trust_pickle,
        )
    finally:
        shutdown_runtime(runtime)


def _train(
    payload: dict[str, Any],
    recipe: Any,
    settings: Mapping[str, Any],
    state: Mapping[str, Any] | None,
    *,
    runtime: Runtime,
    teacher: str | os.PathLike[str] | None,
    meta: Mapping[str, Any],
    source: str | None,
    out: Path,
    ckpt_path: Path,
    log_path: Path,
    stop_after: int | None,
    eval_images: int,
    export_dir: str | os.PathLike[str] | None,
    progress: bool | None,
    log: Callable[[str], Any] | None,
    trust_pickle: bool,
) -> dict[str, Any]:
    """The epochs of :func:`finetune_subnet` on ``runtime`` (settings already checked)."""
    epochs, lr, seed = settings["epochs"], settings["lr"], settings["seed"]
    batch_size, momentum = settings["batch_size"], settings["momentum"]
    alpha, temperature = settings["alpha"], settings["temperature"]
    train_limit = settings["train_limit"]
    teacher_model, recalibrate_teacher = None, False
    if teacher:
        teacher_model, recalibrate_teacher = load_teacher(teacher, meta, trust_pickle=trust_pickle)
        runtime.module(teacher_model)

    if epochs == 0:  # nothing to train: no data needed
        return _finish(
            payload,
            payload["module"],
            settings,
            [],
            out=out,
            ckpt_path=ckpt_path,
            export_dir=export_dir,
            runtime=runtime,
        )
    if train_limit is not None:
        recipe = copy.deepcopy(dict(recipe))
        recipe["data"] = {**recipe.get("data", {}), "train_limit": int(train_limit)}
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
        hx, hy = load_split_images(splits.heldout, eval_images, seed=seed)
        heldout = [(resize(a), b) for a, b in zip(hx.split(256), hy.split(256), strict=True)]

    student = runtime.module(payload["module"])
    if state is not None:  # same architecture as the subnet: only the weights differ
        try:
            student.load_state_dict(state["state_dict"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt_path}: weights do not fit the subnet ({exc})") from None
    else:
        broadcast_state(student, runtime)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=lr,
        momentum=momentum,
        nesterov=momentum > 0,
        weight_decay=settings["weight_decay"],
    )
    scaler = runtime.grad_scaler()  # passes values through unless fp16
    per_rank = len(splits.train) // runtime.world_size
    drop_last = per_rank > batch_size
    steps_per_epoch = per_rank // batch_size if drop_last else 1
    total = max(epochs * steps_per_epoch, 1)
    scheduler = cosine_schedule(optimizer, total_steps=total)
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        resume_schedule(
            scheduler, state, epochs_done=int(state["epoch"]), steps_per_epoch=steps_per_epoch
        )
        if state.get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["grad_scaler"])
        history = list(state.get("history", []))
        start_epoch = int(state["epoch"])
    if runtime.is_main:
        for stale in out.parent.glob(f".{ckpt_path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # temp files of writes killed half-way

    last = epochs if stop_after is None else min(epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last):
        start = time.perf_counter()
        # the supernet trainer's data order and seeding (epochs count from 1 there)
        torch.manual_seed(epoch_seed(seed, epoch + 1, runtime.rank))
        loader = epoch_loader(
            splits.train,
            epoch=epoch + 1,
            seed=seed,
            batch_size=batch_size,
            workers=0,
            runtime=runtime,
            drop_last=drop_last,
        )
        student.train()
        sums = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # loss, ce, kd
        correct = torch.zeros((), dtype=torch.int64, device=runtime.device)
        seen = 0
        bar = tqdm(
            loader,
            desc=f"finetune {epoch + 1}/{epochs}",
            unit="batch",
            disable=(None if progress is None else not progress) if runtime.is_main else True,
        )
        for x, y in bar:
            x = resize(runtime.batch(x))
            y = y.to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = student(x)
                ce = F.cross_entropy(logits, y)
                loss, kd = ce, torch.zeros((), device=runtime.device)
                if teacher_model is not None:
                    with torch.no_grad():
                        t_logits = teacher_model(x)
                    kd = distill_loss(logits, t_logits, temperature=temperature)
                    loss = (1 - alpha) * ce + alpha * kd
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            losses = allreduce_grads(
                params, torch.stack([loss.float(), ce.float(), kd.float()]).detach(), runtime
            )
            check_finite(
                losses.tolist(),
                ("fine-tuning", "label", "distillation"),
                where=f"fine-tuning epoch {epoch + 1}",
                hint="try a smaller --lr",
            )
            scaler.step(optimizer)  # skipped on inf/NaN fp16 gradients
            scaler.update()
            scheduler.step()
            n = len(y)
            sums += losses.double() * n
            correct += (logits.detach().argmax(1) == y).sum()
            seen += n
            if runtime.is_main and bar.disable is False:
                bar.set_postfix(loss=f"{float(sums[0]) / seen:.3f}", refresh=False)
        average_buffers(student, runtime)
        loss_sum, ce_sum, kd_sum = sums.tolist()
        entry = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(seen, 1),
            "ce": ce_sum / max(seen, 1),
            "kd": kd_sum / max(seen, 1) if teacher_model is not None else None,
            "train_top1": int(correct) / max(seen, 1),
            "heldout_top1": top1(student, heldout, runtime=runtime) if heldout else None,
            "lr": optimizer.param_groups[0]["lr"],
            "images": seen * runtime.world_size,
            "seconds": round(time.perf_counter() - start, 3),
        }
        history.append(entry)
        if runtime.is_main:
            atomic_save(
                {
                    "format": STATE_FORMAT,
                    "version": STATE_VERSION,
                    "state_dict": student.state_dict(),  # saved on the CPU
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "grad_scaler": scaler.state_dict(),
                    "steps_per_epoch": steps_per_epoch,
                    "epoch": epoch + 1,
                    "history": history,
                    "settings": dict(settings),
                },
                ckpt_path,
            )
            write_jsonl_atomic(history, log_path)
        if log is not None and runtime.is_main:
            held = entry["heldout_top1"]
            log(
                f"finetune epoch {epoch + 1}/{epochs}: loss {entry['loss']:.4f} "
                f"train top-1 {entry['train_top1']:.4f}"
                + (f" held-out top-1 {held:.4f}" if held is not None else "")
                + f" ({entry['seconds']:.1f}s)"
            )
    barrier(runtime)
    dump_rank_state(student, runtime)
    return _finish(
        payload,
        student,
        settings,
        history,
        out=out,
        ckpt_path=ckpt_path,
        export_dir=export_dir,
        runtime=runtime,
    )


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
