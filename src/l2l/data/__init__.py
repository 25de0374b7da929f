"""Data layer: the refer-format reader, named dataset ids, label-ratio splits, `Processor`, augmentations.

Names are imported on first use (PEP 562), so `l2l data stats` reads a dataset without importing torch;
the ShapeRefs generator (`l2l.data.shaperefs`) is imported only by `l2l data synth`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "flip_text": "augment",
    "hflip": "augment",
    "strong_photometric": "augment",
    "weak_view": "augment",
    "DataId": "dataset",
    "RefSample": "dataset",
    "RESDataset": "dataset",
    "Processor": "processor",
    "DATASETS": "refer",
    "ReferData": "refer",
    "load_image": "refer",
    "load_refs_pickle": "refer",
    "load_split": "splits",
    "make_split": "splits",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'l2l.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"l2l.data.{_EXPORTS[name]}"), name)
