"""Which code produced a result: a grid cell's numbers are only comparable with cells from the same code.

Training here is chaotic at float precision (a change in the fourth decimal of the first losses moves a 1% cell's
last-step mIoU by up to ~2 after 300 steps), so a table that mixes cells from several commits mixes that noise in;
each cell records the commit it ran on, and the report counts them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

import l2l


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_version(package_dir: Path | None = None) -> dict[str, Any]:
    """`{"l2l", "torch", "commit", "dirty"}`; commit and dirty are None outside a git checkout (an installed wheel).

    `dirty` counts modified tracked files under `src/` only: results, docs and logs change while a grid runs."""
    pkg = Path(package_dir) if package_dir is not None else Path(l2l.__file__).resolve().parent
    info: dict[str, Any] = {"l2l": l2l.__version__, "torch": torch.__version__, "commit": None, "dirty": None}
    top = _git(["rev-parse", "--show-toplevel"], pkg)
    if top is None or not (Path(top) / "src").is_dir() or not pkg.is_relative_to(Path(top)):
        return info
    info["commit"] = _git(["rev-parse", "HEAD"], pkg)
    status = _git(["status", "--porcelain", "--untracked-files=no", "--", "src"], Path(top))
    info["dirty"] = bool(status) if status is not None else None
    return info
