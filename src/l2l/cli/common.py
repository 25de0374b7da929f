"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse


def group_help(parser: argparse.ArgumentParser) -> int:
    """A command group called without a sub-command: show its help, exit code 2 (a usage error)."""
    parser.print_help()
    return 2


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse reports anything else as a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
