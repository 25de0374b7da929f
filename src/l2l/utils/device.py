"""One reading of a user's `--device`: a clear error instead of a traceback deep inside torch."""

from __future__ import annotations

import torch

from l2l.errors import InputError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """`None`/"auto" -> cuda if available else cpu; "cuda[:i]" must exist; anything torch cannot parse is an error."""
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {name!r}: not a device torch knows (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise InputError(f"--device {name}: unsupported device type {device.type!r}")
    return device
