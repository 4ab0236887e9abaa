"""``pathvlm`` command line: one entry point, one small module per command.

Command modules import their heavy dependencies inside ``run`` so that ``pathvlm --help`` is instant.
Commands that belong to the apps (``demo`` from ``serve/``) are imported only when invoked.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pathvlm import __version__

COMMANDS = ["models", "tasks", "classify", "index", "search", "gallery", "export", "data", "train", "chat", "convert", "eval", "demo", "serve"]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathvlm",
        description="Open pathology vision-language models: zero-shot classification, retrieval, "
                    "and (with the reasoner) VQA and reports.",
    )
    parser.add_argument("--version", action="version", version=f"pathvlm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (model loading, files)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pathvlm.cli.cmd_{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pathvlm.errors import PathVLMError

    parser = make_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args) or 0)
    except PathVLMError as e:
        print(f"pathvlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
