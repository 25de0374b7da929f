"""The `l2l` console script: one sub-command group per module in `l2l.cli`.

Each command module defines `register(subparsers)`, which adds its parser(s) and sets `func`
(called with the parsed namespace, returns an exit code). Modules are imported only when the
script runs, so importing `l2l` never parses arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from l2l.errors import L2LError
from l2l.utils.threads import prefer_passive_wait

# Module names under l2l.cli, in the order `l2l --help` lists them.
COMMAND_MODULES: list[str] = ["demo", "data", "priors", "train", "eval", "predict", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2l",
        description="Learning to Label: semi-supervised referring expression segmentation.",
        epilog="Run `l2l <command> --help` for the options and an example of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(f"l2l.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    prefer_passive_wait()  # before any command module imports torch
    # library modules log (`logging.getLogger(__name__)`); the command line shows their info lines on stderr
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except L2LError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
