"""l2l: Learning to Label, semi-supervised referring expression segmentation.

The public API, imported on first use (PEP 562), so `import l2l` stays cheap:

    from l2l import RESModel, Processor, Predictor, Trainer, load_config, evaluate

    cfg = load_config("tiny", ["data.root=data"])     # a shipped config by name, or a YAML path
    summary = Trainer(cfg, "runs/tiny").fit()
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "RESModel": "l2l.model",
    "ModelConfig": "l2l.model",
    "Processor": "l2l.data.processor",
    "Predictor": "l2l.evaluation",
    "evaluate": "l2l.evaluation",
    "RESMetric": "l2l.evaluation",
    "Trainer": "l2l.training.trainer",
    "load_config": "l2l.training.config",
    "METHODS": "l2l.methods",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'l2l' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
