"""The `widthsearch` command line: one subcommand per stage, each in its own module.

Every user-facing failure is a :class:`WidthsearchError` (or ``ValueError`` from config
validation); ``main`` prints it as one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Before torch loads OpenMP. Spinning OpenMP workers collapse when another busy process shares
# the cores (a supernet epoch went from 25 s to over 3 min on a shared 2-core machine);
# passive waits cost far less. OMP_WAIT_POLICY=ACTIVE in the environment restores spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from widthsearch.recipes._runtime_flags import RUNTIME_COMMANDS, add_runtime_flags
from widthsearch.supernet.errors import WidthsearchError

# subcommand -> module in widthsearch.recipes defining `add_parser(subparsers)`;
# the parser sets `func` (args -> exit code).
_COMMANDS = {
    "inspect": "_cmd_inspect",
    "pretrain": "_cmd_train",
    "train": "_cmd_train",
    "profile": "_cmd_profile",
    "search": "_cmd_search",
    "extract": "_cmd_evaluate",
    "finetune": "_cmd_evaluate",
    "eval": "_cmd_evaluate",
    "run": "_cmd_run",
    "convert": "_cmd_convert",
}

# subcommands that open files someone else may have written: each gets --trust-pickle
# (args.trust_pickle), without which a file needing unpickling is refused with one line
TRUST_PICKLE_COMMANDS = (
    "pretrain",
    "train",
    "profile",
    "search",
    "extract",
    "finetune",
    "eval",
    "run",
)
TRUST_PICKLE_HELP = (
    "also open files that need unpickling (older widthsearch files, pickled modules): "
    "unpickling runs any code a file carries, so only for files you trust"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="widthsearch",
        description="Train a slimmable supernet, search widths under a MACs budget, extract.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    seen: set[str] = set()
    for module_name in _COMMANDS.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(f"widthsearch.recipes.{module_name}")
        except ModuleNotFoundError as exc:  # a stage not built yet
            if exc.name != f"widthsearch.recipes.{module_name}":
                raise
            continue
        module.add_parser(subparsers)
    for name in RUNTIME_COMMANDS:
        if name in subparsers.choices:
            add_runtime_flags(subparsers.choices[name])
    for name in TRUST_PICKLE_COMMANDS:
        if name in subparsers.choices:
            subparsers.choices[name].add_argument(
                "--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (WidthsearchError, ValueError, FileNotFoundError) as exc:
        print(f"widthsearch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`: not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except KeyboardInterrupt:
        print(f"widthsearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
