"""`widthsearch extract | finetune | eval`: from searched widths to a measured dense model.

* ``extract SUPERNET --from SEARCH.json --strategy S --budget B --out SUBNET.pt`` (or
  ``--widths FILE.json``): the dense subnet with the best weight inheritance.
* ``finetune SUBNET.pt --out FILE.pt [--teacher FULL_OR_SUPERNET] [--resume]``.
* ``eval MODEL.pt``: prints one JSON object (top-1, MACs, params, latency, vs the full model).

``--export DIR`` (extract and finetune) also writes TorchScript, the timm shape string (timm
models) and ONNX (when installed). Every input is checked before data is loaded, and every
file is written atomically, so a bad input never leaves a partial output.
"""

from __future__ import annotations

import argparse
import json
import sys

from widthsearch.evaluate.inheritance import INHERITANCE
from widthsearch.recipes._runtime_flags import runtime_options
from widthsearch.supernet.runtime import launched_rank


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "extract",
        help="extract a searched subnet as a plain dense model (adaptive weight inheritance)",
        description=(
            "Extract the subnet of one search result (or of a widths file) from the supernet "
            "as a dense model of the original class. Weight inheritance: left, right, L1-norm "
            "top-k and BN-gamma top-k channels are each extracted, BN-recalibrated and scored "
            "on the held-out split; the best is kept (scores recorded in the file)."
        ),
    )
    p.add_argument("supernet", help="supernet checkpoint (supernet.pt)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="search", metavar="SEARCH.json", help="search output")
    source.add_argument("--widths", metavar="FILE.json", help="widths JSON {group: channels}")
    p.add_argument("--strategy", help="strategy of the search result (label with --widths)")
    p.add_argument(
        "--budget",
        help="budget of the search result as given to search (0.5, 50%%, 20M, 123456); "
        "matches a result within 0.5%%",
    )
    p.add_argument("--out", required=True, metavar="SUBNET.pt", help="output subnet file")
    p.add_argument(
        "--inheritance",
        action="append",
        choices=INHERITANCE,
        help="candidate, repeatable (default: the recipe's [finetune].inheritance)",
    )
    p.add_argument("--heldout-images", type=int, help="held-out images per candidate score")
    p.add_argument("--calib-batches", type=int, help="BN recalibration batches")
    p.add_argument("--batch-size", type=int, help="batch size for scoring and calibration")
    p.add_argument("--export", metavar="DIR", help="also export (TorchScript, timm string, ONNX)")
    p.add_argument(
        "--latency-table",
        metavar="LAT.json",
        help="also print the table's predicted latency next to the measured one",
    )
    p.set_defaults(func=run_extract)

    p = subparsers.add_parser(
        "finetune",
        help="fine-tune an extracted subnet (SGD + cosine, optional distillation)",
        description=(
            "Fine-tune SUBNET.pt on the training split of its recipe; with --teacher, distil "
            "from the supernet's full width. Writes FILE.pt at the end, FILE.jsonl (one line "
            "per epoch) and FILE.ckpt.pt after every epoch (for --resume; removed when done)."
        ),
    )
    p.add_argument("subnet", help="subnet file (extract output)")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="output file")
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's [finetune].epochs)")
    p.add_argument("--lr", type=float, help="peak SGD learning rate (default: the recipe's)")
    p.add_argument("--weight-decay", type=float, help="SGD weight decay (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the recipe's)")
    p.add_argument(
        "--teacher",
        metavar="FILE",
        help="distil from a full.pt, or from a supernet: the trained network it started from, "
        "else its full width",
    )
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation loss")
    p.add_argument("--train-limit", type=int, help="use only this many training images")
    p.add_argument("--seed", type=int, default=0, help="data order / augmentation seed")
    p.add_argument(
        "--init",
        choices=["inherit", "random"],
        help="start from the inherited weights, or retrain the widths from the model's own "
        "random initialisation (give the lr a from-scratch run needs); default: the recipe's",
    )
    p.add_argument("--resume", action="store_true", help="continue from FILE.ckpt.pt")
    p.add_argument("--stop-after", type=int, metavar="N", help="train at most N epochs now")
    p.add_argument("--export", metavar="DIR", help="also export (TorchScript, timm string, ONNX)")
    p.set_defaults(func=run_finetune)

    p = subparsers.add_parser(
        "eval",
        help="measure a subnet: test top-1, MACs, params, CPU latency (one JSON object)",
        description=(
            "Print one JSON object: test top-1, MACs (analytic and counted), params, CPU "
            "latency at batch 1 and 64, the same for the full model, and the ratios."
        ),
    )
    p.add_argument("model", help="subnet file (extract or finetune output)")
    p.add_argument("--data", help="evaluate on this dataset's test split (default: the recipe's)")
    p.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the latency measurement (default: the recipe's [eval].latency)",
    )
    p.add_argument("--latency-seconds", type=float, help="min. timing per latency figure")
    p.add_argument("--test-limit", type=int, help="test images (default: the recipe's; 0 = all)")
    p.add_argument("--batch-size", type=int, default=256, help="test batch size")
    p.add_argument("--no-full", action="store_true", help="do not measure the full model")
    p.add_argument("--supernet", help="supernet for the full model (default: the recorded one)")
    p.add_argument(
        "--latency-table",
        metavar="LAT.json",
        help="also time the subnet at the table's batch and threads and report the table's "
        "predicted latency next to the measured one",
    )
    p.set_defaults(func=run_eval)


def _positive(args: argparse.Namespace, *flags: str) -> None:
    for flag in flags:
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def run_extract(args: argparse.Namespace) -> int:
    from widthsearch.evaluate.extract import extract_subnet, read_widths

    _positive(args, "heldout_images", "calib_batches", "batch_size")
    if args.search and (args.strategy is None or args.budget is None):
        raise ValueError("--from needs --strategy and --budget")
    widths = read_widths(args.widths) if args.widths else None
    where = runtime_options(args)
    table = _latency_table(args, where)
    result = extract_subnet(
        args.supernet,
        widths=widths,
        search=args.search,
        strategy=args.strategy,
        budget=args.budget,
        out=args.out,
        candidates=args.inheritance,
        heldout_images=args.heldout_images,
        calib_batches=args.calib_batches,
        batch_size=args.batch_size,
        export_dir=args.export,
        log=_log,
        trust_pickle=args.trust_pickle,
        **where,
    )
    inh = result["inheritance"]
    scores = ", ".join(f"{k} {v:.4f}" for k, v in inh["scores"].items())
    print(
        f"extracted {result['strategy']} subnet: {result['macs']} MACs, {result['params']} "
        f"params; inheritance {inh['chosen']} (held-out top-1: {scores})"
    )
    print(f"wrote {args.out}")
    for fmt, path in result.get("exports", {}).items():
        print(f"exported {fmt}: {path}")
    if table is not None:
        print(_latency_line(_check(args.out, table, where, args.trust_pickle)))
    return 0


def _latency_table(args: argparse.Namespace, where: dict):
    """The ``--latency-table`` file, read and checked against this device before any work."""
    if not getattr(args, "latency_table", None):
        return None
    from widthsearch.search import load_latency_table
    from widthsearch.supernet.runtime import resolve_device

    table = load_latency_table(args.latency_table)
    table.check(
        device=str(resolve_device(where["device"])), where=f"latency table {args.latency_table}"
    )
    return table


def _check(path, table, where: dict, trust_pickle: bool) -> dict:
    from widthsearch.evaluate.profile import latency_check
    from widthsearch.supernet.runtime import local_runtime

    return latency_check(path, table, runtime=local_runtime(**where), trust_pickle=trust_pickle)


def _latency_line(check: dict) -> str:
    ratio = "" if check["ratio"] is None else f" (measured / predicted {check['ratio']:.2f})"
    return (
        f"latency at batch {check['batch']}, {check['threads']} thread(s) on {check['device']}: "
        f"predicted {check['predicted_ms']:.3f} ms, measured {check['measured_ms']:.3f} ms{ratio}"
    )


def run_finetune(args: argparse.Namespace) -> int:
    from widthsearch.evaluate.finetune import finetune_subnet

    _positive(args, "batch_size", "train_limit")
    if args.epochs is not None and args.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {args.epochs}")
    if args.stop_after is not None and args.stop_after < 0:
        raise ValueError(f"--stop-after must be >= 0, got {args.stop_after}")
    where = runtime_options(args)
    result = finetune_subnet(
        args.subnet,
        out=args.out,
        epochs=args.epochs,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        teacher=args.teacher,
        temperature=args.temperature,
        alpha=args.alpha,
        train_limit=args.train_limit,
        seed=args.seed,
        init=args.init,
        resume=args.resume,
        stop_after=args.stop_after,
        export_dir=args.export,
        log=_log,
        trust_pickle=args.trust_pickle,
        **where,
    )
    if launched_rank() != 0:
        return 0  # under torchrun rank 0 reports
    history = result["finetune"]["history"]
    if len(history) < result["finetune"]["epochs"]:
        print(f"stopped after epoch {len(history)}; continue with --resume")
        return 0
    print(f"wrote {args.out}")
    for fmt, path in result.get("exports", {}).items():
        print(f"exported {fmt}: {path}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from widthsearch.evaluate.measure import evaluate_model

    _positive(args, "batch_size")
    if args.test_limit is not None and args.test_limit < 0:
        raise ValueError(f"--test-limit must be >= 0, got {args.test_limit}")
    where = runtime_options(args)
    table = _latency_table(args, where)
    result = evaluate_model(
        args.model,
        data=args.data,
        latency=False if args.no_latency else None,
        latency_seconds=args.latency_seconds,
        batch_size=args.batch_size,
        test_limit=args.test_limit,
        full=not args.no_full,
        supernet=args.supernet,
        trust_pickle=args.trust_pickle,
        **where,
    )
    if table is not None:
        check = _check(args.model, table, where, args.trust_pickle)
        result["latency_check"] = check
        print(_latency_line(check), file=sys.stderr)  # stdout stays one JSON object
    print(json.dumps(result))
    return 0
