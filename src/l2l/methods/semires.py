"""SemiRES-style baseline: proposals matched to the teacher mask are labels, else uncertainty-weighted pixels.

SemiRES matches SAM masks to the teacher's mask; here the candidate mask is the sample's prior proposal
(`q > 0.5`), the only mask source every dataset has. Matched (IoU > 0.5): the proposal is the label, weight 1.
Unmatched: the teacher mask is the label with Pixel-Wise Adjustment weights `1.3 - N(p; 0.5, 0.1)`, where N is
the Gaussian kernel with peak 1 (weight 0.3 at p = 0.5, 1.3 for confident pixels); with the normalised density
(peak 4.0) the weight would go negative, which cannot be what a loss weight means.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from l2l.methods.base import StepOutput
from l2l.methods.semi import TeacherStudentMethod, binary_iou, check_unlabelled


def pixel_adjustment_weight(p: torch.Tensor, offset: float = 1.3, mean: float = 0.5, std: float = 0.1) -> torch.Tensor:
    """`offset - exp(-(p - mean)^2 / (2 std^2))`: down-weight pixels the teacher is unsure about."""
    return offset - torch.exp(-((p - mean) ** 2) / (2.0 * std**2))


class SemiRESMethod(TeacherStudentMethod):
    """Label = proposal where it matches the teacher mask (IoU > iou_match), else teacher mask with PWA weights."""

    name: ClassVar[str] = "semires"
    defaults: ClassVar[dict[str, Any]] = {
        **TeacherStudentMethod.defaults,
        "iou_match": 0.5,  # proposal/teacher-mask IoU above which the proposal becomes the label
        "pwa_offset": 1.3,  # Pixel-Wise Adjustment: weight = offset - N(p; mean, std)
        "pwa_mean": 0.5,
        "pwa_std": 0.1,
    }

    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        batch_u = check_unlabelled(batch_u, self.name)
        p = self.teacher_probs(batch_u)
        out_l, out_u = self.student_joined(batch_l, batch_u, self.views.strong(batch_u["pixel_values"]))
        loss, logs = self.supervised(out_l, batch_l)

        teacher_mask = p > 0.5
        proposal_mask = batch_u["proposal"].to(p.device) > 0.5
        has = batch_u["has_proposal"].to(p.device).bool()
        matched = (binary_iou(proposal_mask, teacher_mask) > float(self.cfg["iou_match"])) & has
        m = matched.view(-1, 1, 1, 1)
        target = torch.where(m, proposal_mask, teacher_mask).float()
        pwa = pixel_adjustment_weight(p, float(self.cfg["pwa_offset"]), float(self.cfg["pwa_mean"]),
                                      float(self.cfg["pwa_std"]))
        weight = torch.where(m, torch.ones_like(p), pwa)
        loss_u = self.seg_loss(out_u["logits"], target, weight)
        lam = self.lambda_u(step)
        loss = loss + lam * loss_u
        logs.update({"loss_unsup": float(loss_u.detach()), "lambda_u": lam,
                     "matched_rate": float(matched.float().mean()), "loss": float(loss.detach())})
        return StepOutput(loss=loss, logs=logs)
