"""Semi-supervised methods behind one `Method.train_step` interface, looked up by name.

Add a method by importing its class here and adding one entry to `METHODS`.
A method declares its hyper-parameters as an `Options` dataclass (a default and a one-line doc per field) and its
needs as the flags of `Method`; the config rejects unknown keys, so a typo fails before training starts. The grid's
method list derives from `METHODS` (`l2l.experiments.grid`).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from l2l.errors import ConfigError
from l2l.methods.base import Method, StepOutput
from l2l.methods.supervised import SupervisedMethod
from l2l.methods.fixmatch import FixMatchMethod
from l2l.methods.l2l import (L2LClassifierMethod, L2LMethod, L2LNoEvolveMethod, L2LNoRPLEMethod,
                             L2LNoSESMMethod)
from l2l.methods.prior_label import PriorLabelMethod
from l2l.methods.prior_only import PriorOnlyMethod
from l2l.methods.semires import SemiRESMethod, SemiRESMLLMMethod

METHODS: dict[str, type[Method]] = {
    "supervised": SupervisedMethod,
    "prior_only": PriorOnlyMethod,
    "prior_label": PriorLabelMethod,
    "fixmatch": FixMatchMethod,
    "semires": SemiRESMethod,
    "semires_mllm": SemiRESMLLMMethod,
    "l2l": L2LMethod,
    "l2l_no_rple": L2LNoRPLEMethod,
    "l2l_classifier": L2LClassifierMethod,
    "l2l_no_sesm": L2LNoSESMMethod,
    "l2l_no_evolve": L2LNoEvolveMethod,
}


def _nearest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def get_method_class(name: str) -> type[Method]:
    """The class registered under `name`; a ConfigError naming the nearest name otherwise."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}{_nearest(name, sorted(METHODS))} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def resolve_method_cfg(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Method hyper-parameters merged over the method's `defaults`; unknown keys are a ConfigError."""
    cls = get_method_class(name)
    defaults = cls.defaults
    for key in cfg:
        if key not in defaults:
            raise ConfigError(f"unknown key 'method.{key}' for method {name!r}{_nearest(key, sorted(defaults))}")
    return {**defaults, **cfg}


def build_method(name: str, model: nn.Module, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> Method:
    """Instantiate method `name` on `model` with validated hyper-parameters."""
    cls = get_method_class(name)
    return cls(model, resolve_method_cfg(name, cfg), total_steps, bank)


__all__ = ["METHODS", "Method", "StepOutput", "build_method", "get_method_class", "resolve_method_cfg"]
