"""`widthsearch convert IN --out OUT [--trust-pickle]`: rewrite a widthsearch file of an
older version (pickled) so that it loads weights-only."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "convert",
        help="rewrite an older (pickled) widthsearch file in the weights-only format",
        description="Rewrite a supernet, subnet or training-state file of an older widthsearch "
        "in the weights-only format that every command reads. An older file must be "
        "unpickled once to convert it: pass --trust-pickle, only for a file you trust.",
    )
    p.add_argument("file", metavar="IN", help="widthsearch file to convert")
    p.add_argument("--out", required=True, metavar="OUT", help="output file (may be IN)")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="unpickle IN when it needs it (runs any code it carries: only for trusted files)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from widthsearch.evaluate.convert import convert_file

    result = convert_file(args.file, args.out, trust_pickle=args.trust_pickle)
    print(
        f"wrote {result['out']} ({result['format']} v{result['version']}, loads with "
        "torch.load(..., weights_only=True))"
    )
    return 0
