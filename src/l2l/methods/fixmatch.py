"""FixMatch/UniMatch-style baseline: confident teacher pixels on the weak view supervise the strong view.

Pseudo-label: the teacher's probability `p` (soft), kept where the teacher is confident, `max(p, 1 - p) >= threshold`
(0.95 as UniMatch; there a soft and a hard label differ by at most 0.05). Samples without a proposal carry no label.
The teacher is the shared EMA teacher; `ema_momentum: 0` gives UniMatch's online (previous-step) predictions.
UniMatch's feature-perturbation stream needs hooks inside the encoder and is not part of this baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from l2l.methods.base import StepOutput
from l2l.methods.semi import TeacherStudentMethod, TeacherStudentOptions, check_unlabelled


@dataclass
class FixMatchOptions(TeacherStudentOptions):
    threshold: float = 0.95
    """Teacher confidence a pixel needs to supervise the student."""


class FixMatchMethod(TeacherStudentMethod):
    """`L = L_sup + lambda_u(t) * CE+Dice(student_strong, p; conf >= threshold)`."""

    name: ClassVar[str] = "fixmatch"
    Options: ClassVar[type] = FixMatchOptions

    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        batch_u = check_unlabelled(batch_u, self.name)
        p = self.teacher_probs(batch_u)
        out_l, out_u = self.student_joined(batch_l, batch_u, self.views.strong(batch_u["pixel_values"]))
        loss, logs = self.supervised(out_l, batch_l)
        keep = (torch.maximum(p, 1.0 - p) >= self.opts.threshold).float()
        loss_u = self.unsup_loss(out_u["logits"], p, keep, batch_u)
        lam = self.lambda_u(step)
        loss = loss + lam * loss_u + self.edit([out_l, out_u], logs)
        logs.update({"loss_unsup": float(loss_u.detach()), "lambda_u": lam, "accept_rate": float(keep.mean()),
                     "loss": float(loss.detach())})
        return StepOutput(loss=loss, logs=logs)
