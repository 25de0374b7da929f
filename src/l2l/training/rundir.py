"""What a run directory holds besides the loop: model directories swapped in atomically, the metrics log cut back
to what a checkpoint had written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from l2l.utils.io import atomic_write_text


def save_model_dir(model: nn.Module, path: Path, card: dict[str, Any]) -> None:
    """`save_pretrained` into a temporary sibling, then swap it in, so `path` is never half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    old = path.with_name(f".{path.name}.old")
    for p in (tmp, old):
        if p.exists():
            shutil.rmtree(p)
    model.save_pretrained(tmp, card=card)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def truncate_metrics(path: Path, lines: int, step: int) -> int:
    """Keep the log lines the checkpoint we resume from had written (later ones will be written again); a torn last
    line (a kill mid-write) is dropped. Checkpoints without a line count (`lines` < 0) keep lines up to `step`.
    Returns the number of lines kept."""
    keep: list[str] = []
    if path.is_file():
        for ln in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                break  # a torn line: nothing after it was written by a finished step
            if (lines >= 0 and len(keep) >= lines) or (lines < 0 and rec.get("step", 0) > step):
                break
            keep.append(ln)
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))
    return len(keep)
