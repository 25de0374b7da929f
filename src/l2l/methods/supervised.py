"""Supervised baseline: CE + Dice on labelled batches only (the lower bound, and the upper bound at 100%).

When the batch carries proposals and the model has SESM, the refined proposal is also supervised by the
ground truth (`lambda_g * L_guide`), so the supervised model learns to use priors the same way L2L does
and the comparison isolates what the unlabelled data adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from l2l.methods.base import Method, StepOutput
from l2l.methods.losses import ce_dice, edit_term


def forward_model(model: nn.Module, batch: dict, use_proposals: bool = True) -> dict[str, Any]:
    """Run the network on a batch dict, passing the proposal only when the batch has one and `use_proposals`."""
    kwargs: dict[str, Any] = {}
    if use_proposals and batch.get("proposal") is not None:
        kwargs["proposal"] = batch["proposal"]
        kwargs["has_proposal"] = batch.get("has_proposal")
    return model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], **kwargs)


def model_uses_sesm(model: nn.Module) -> bool:
    """True when the (possibly DDP-wrapped) network takes proposal guidance."""
    inner = getattr(model, "module", model)
    return bool(getattr(getattr(inner, "config", None), "use_sesm", False))


@dataclass
class LossOptions:
    """The loss weights every trained method shares."""

    ce_weight: float = 1.0
    """CE share of every CE+Dice term."""
    dice_weight: float = 1.0
    """Dice share of every CE+Dice term."""
    lambda_g: float = 0.5
    """Weight of L_guide on SESM's refined proposal (labelled part)."""
    edit_l1: float = 0.0
    """L1 weight on the network's edit of logit(q) (every sample given its proposal): a pixel is moved off the
    proposal only where the loss gradient there outweighs it, so weak evidence leaves the proposal as it is."""


class SupervisedMethod(Method):
    """`L = ce * CE + dice * Dice` on the labelled mask, plus `lambda_g * L_guide(refined, mask)` with SESM."""

    name: ClassVar[str] = "supervised"
    needs_unlabelled: ClassVar[bool] = False
    needs_proposals: ClassVar[bool] = False
    Options: ClassVar[type] = LossOptions

    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        ce_w, dice_w = self.opts.ce_weight, self.opts.dice_weight
        out = forward_model(self.model, batch_l, use_proposals=model_uses_sesm(self.model))
        target = batch_l["mask"]
        loss_sup = ce_dice(out["logits"], target, ce_weight=ce_w, dice_weight=dice_w)
        logs = {"loss_sup": float(loss_sup.detach())}
        loss = loss_sup
        refined = out.get("refined")
        lambda_g = self.opts.lambda_g
        if refined is not None and lambda_g > 0 and batch_l.get("has_proposal") is not None:
            # Only samples that actually received a proposal have a meaningful refined map.
            has = batch_l["has_proposal"].to(refined.device).float().view(-1, 1, 1, 1)
            weight = has.expand_as(refined)
            if bool(has.any()):
                loss_guide = ce_dice(refined, target, weight, ce_weight=ce_w, dice_weight=dice_w)
                loss = loss + lambda_g * loss_guide
                logs["loss_guide"] = float(loss_guide.detach())
        loss = loss + edit_term([out], self.opts.edit_l1, logs)
        logs["loss"] = float(loss.detach())
        return StepOutput(loss=loss, logs=logs)
