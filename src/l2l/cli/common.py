"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse


def group_help(parser: argparse.ArgumentParser) -> int:
    """A command group called without a sub-command: show its help, exit code 2 (a usage error)."""
    parser.print_help()
    return 2
