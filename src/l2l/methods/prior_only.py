"""Prior-only baseline (zero-shot): the prediction is the proposal itself, thresholded at 0.5.

Nothing is trained. The method's `eval_model()` is `ProposalAsLogits`, a parameter-free module with the
`RESModel.forward` signature whose logits are `logit(q)`, so the standard evaluation (threshold logits at 0,
i.e. probability 0.5) scores the proposal with the same code, resizing and metrics as every other method.
It is evaluated with priors only; prior-free it predicts empty masks, which is the honest zero-shot answer.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from l2l.methods.base import Method, StepOutput
from l2l.methods.teacher import unwrap
from l2l.model.modeling import prior_logits


class ProposalAsLogits(nn.Module):
    """`forward(...) -> {"logits": logit(q), "refined": None}`; samples without a proposal get an empty mask."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        # Kept (not registered as a child) only to hand out the matching Processor to evaluation code.
        self._network = [network]

    def processor(self) -> Any:
        return self._network[0].processor()

    @property
    def config(self) -> Any:
        return getattr(self._network[0], "config", None)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        proposal: torch.Tensor | None = None,
        has_proposal: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        b, _, h, w = pixel_values.shape
        if proposal is None:
            q = pixel_values.new_zeros(b, 1, h, w)
        else:
            q = proposal.to(pixel_values.device).float()
            if has_proposal is not None:
                q = q * has_proposal.to(q.device).float().view(-1, 1, 1, 1)
        # the network's own clamp and logit: an untrained RESModel given q outputs these logits exactly
        return {"logits": prior_logits(q), "refined": None}


class PriorOnlyMethod(Method):
    """Zero-shot: no training; evaluation thresholds the proposal (see module doc)."""

    name: ClassVar[str] = "prior_only"
    needs_unlabelled: ClassVar[bool] = False
    needs_proposals: ClassVar[bool] = True
    uses_proposals_at_eval: ClassVar[bool] = True
    needs_training: ClassVar[bool] = False  # the trainer may skip the loop entirely

    def __init__(self, model: nn.Module, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> None:
        super().__init__(model, cfg, total_steps, bank)
        self._eval = ProposalAsLogits(unwrap(model))

    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        """A zero loss that back-propagates to nothing, so a generic loop may still run this method."""
        return StepOutput(loss=torch.zeros((), requires_grad=True), logs={"loss": 0.0})

    def eval_model(self) -> nn.Module:
        return self._eval
