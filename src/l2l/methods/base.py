"""The one interface every semi-supervised method implements, so a table of methods is a loop over names.

A `Method` owns everything that trains besides the student's own optimiser: the EMA teacher, the RPLE
policy and its optimiser, the proposal bank it evolves. The `Trainer` (l2l.training) owns the loop, the
student optimiser/scheduler, checkpoints and distribution, and calls the hooks below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class NoOptions:
    """A method without hyper-parameters (prior_only)."""


@dataclass
class StepOutput:
    """What one training step returns: the loss to back-propagate and scalars to log."""

    loss: torch.Tensor
    logs: dict[str, float]


class Method:
    """Base class; subclasses set `name`, the data they need, and implement `train_step`."""

    name: ClassVar[str] = "base"
    needs_unlabelled: ClassVar[bool] = False  # trainer provides batch_u when True
    needs_proposals: ClassVar[bool] = False  # batches carry `proposal`/`has_proposal` when True
    uses_proposals_at_eval: ClassVar[bool] = False  # evaluate "with priors" as the main mode
    needs_candidates: ClassVar[bool] = False  # unlabelled batches carry class-agnostic candidate masks (SemiRES)
    ablation_of: ClassVar[str] = ""  # an ablation names the method it switches a part off in (its grid row)
    needs_training: ClassVar[bool] = True  # False: nothing to learn, the trainer skips the loop (prior_only)
    evolves: ClassVar[bool] = False  # rewrites the proposal bank during training (self-evolution)
    model_overrides: ClassVar[dict[str, Any]] = {}  # ModelConfig fields the config must set (l2l_no_sesm)
    # Every hyper-parameter the method reads: a dataclass with a default and a one-line doc per field. `defaults`
    # (the config's view: field -> default) is derived from it for each subclass.
    Options: ClassVar[type] = NoOptions
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                        for f in dataclasses.fields(cls.Options)}

    def __init__(self, model: nn.Module, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> None:
        self.model = model
        self.cfg = {k: v for k, v in {**self.defaults, **cfg}.items() if k != "name"}
        self.opts = self.Options(**self.cfg)  # typed fields; the config has already checked names and types
        self.total_steps = max(1, int(total_steps))
        self.bank = bank

    @classmethod
    def takes_proposals(cls, use_sesm: bool) -> bool:
        """Whether a run builds proposal banks: the method needs them, or its network takes them (SESM)."""
        return cls.needs_proposals or use_sesm

    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        """Called after each student update (EMA teacher update lives here)."""

    def on_epoch_end(self, epoch: int, context: dict[str, Any]) -> dict[str, float]:
        """Called on every rank after each epoch (self-evolution lives here); returns scalars to log."""
        return {}

    def evolves_at(self, step: int) -> bool:
        """Whether `on_epoch_end` at `step` will rewrite the proposal bank (the trainer scores it around that)."""
        return False

    def eval_model(self) -> nn.Module | None:
        """A network of the method's own to evaluate instead of the student (prior_only's proposal-as-logits);
        None, the default, means the one scoring rule of every trained method: the trainer's weight average
        (EMA) of the student (`train.ema_momentum`), whatever teacher the method keeps."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (resume)."""
