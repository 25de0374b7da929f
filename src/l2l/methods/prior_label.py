"""Prior-as-label baseline: every (soft) proposal of D_u is a label; no selection, no teacher.

It shows what the MLLM prior is worth as supervision on its own, and so what RPLE's selection and the
self-evolution add on top. Samples whose prior failed (`has_proposal` false) carry no label.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from l2l.methods.base import Method, StepOutput
from l2l.methods.losses import ce_dice, edit_term, pseudo_label_loss
from l2l.methods.semi import (UnlabelledOptions, check_unlabelled, has_proposal_weight, join_inputs, label_proposal,
                              labelled_loss, model_inputs, sigmoid_rampup, split_output)
from l2l.methods.supervised import model_uses_sesm
from l2l.methods.teacher import Views


class PriorLabelMethod(Method):
    """`L = L_sup + lambda_g L_guide + lambda_u(t) * CE+Dice(student_strong(x_u), q)`, soft targets."""

    name: ClassVar[str] = "prior_label"
    needs_unlabelled: ClassVar[bool] = True
    needs_proposals: ClassVar[bool] = True
    Options: ClassVar[type] = UnlabelledOptions

    def __init__(self, model: nn.Module, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> None:
        super().__init__(model, cfg, total_steps, bank)
        self.views = Views(self.opts.seed)
        self.use_proposals = model_uses_sesm(model)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return ce_dice(logits, target, weight, ce_weight=self.opts.ce_weight,
                       dice_weight=self.opts.dice_weight)

    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        batch_u = check_unlabelled(batch_u, self.name)
        strong = self.views.strong(batch_u["pixel_values"])
        joined = join_inputs(model_inputs(batch_l, None, self.use_proposals),
                             model_inputs(batch_u, strong, self.use_proposals))
        out_l, out_u = split_output(self.model(**joined), batch_l["pixel_values"].shape[0])

        loss, logs = labelled_loss(out_l, batch_l, self._loss, self.opts.lambda_g)

        logits_u = out_u["logits"]
        target = label_proposal(batch_u).to(logits_u.device).float()
        weight = has_proposal_weight(batch_u, logits_u)
        lam = self.opts.lambda_u * sigmoid_rampup(step, self.opts.rampup * self.total_steps)
        loss_u = pseudo_label_loss(logits_u, target, weight, ce_weight=self.opts.ce_weight,
                                   dice_weight=self.opts.pseudo_dice_weight)
        loss = loss + lam * loss_u + edit_term([out_l, out_u], self.opts.edit_l1, logs)
        logs["loss_unsup"] = float(loss_u.detach())
        logs.update({"lambda_u": lam, "loss": float(loss.detach())})
        return StepOutput(loss=loss, logs=logs)

    def state_dict(self) -> dict[str, Any]:
        return {"views": self.views.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "views" in state:
            self.views.generator.set_state(state["views"])
