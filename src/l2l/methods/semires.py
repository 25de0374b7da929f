"""SemiRES (Yang et al., 2024) in this framework, and `semires_mllm`, the same rule with the MLLM's proposal.

SemiRES, as its paper describes it and as built here:
- a supervised burn-in (`burn_in`, a fraction of the schedule) that trains on D_l alone and then initialises the
  teacher from the student; the teacher then follows the student with a slow EMA (`ema_momentum` 0.9996, no
  warm-up), as in SemiRES;
- for each unlabelled sample, the teacher's mask `P = p > 0.5` is matched against class-agnostic candidate masks
  of the image (`needs_candidates`: SAM "everything" masks, or the GrabCut-per-instance stand-in of
  `l2l.proposals.candidates`):
  IOM (`match: iom`): the candidate with the highest IoU with P, if above `iou_match` (0.5), is the label;
  CPI (`match: cpi`): the union of the candidates S with |S n P| / |P| > `cpi_overlap` or |S n P| / |S| >
  `cpi_overlap` (0.7) is the label;
- without a match, the teacher's map is the label with Pixel-Wise Adjustment weights `1.3 - N(p; 0.5, 0.1)`,
  N the Gaussian kernel with peak 1 (weight 0.3 at p = 0.5, 1.3 for confident pixels; with the normalised
  density, peak 4.0, the weight would go negative, which cannot be what a loss weight means).
Labels are soft (the matched candidate's soft map, or p), as for every pseudo-label method here.

Departures: SemiRES's teacher sees no MLLM proposal; ours is the same network as every method's, so it is given the
proposal like the student, and samples whose prior failed carry no pseudo-label (as in every method). SemiRES is
a ReLA/LAVT-size network trained for tens of epochs; here it shares the grid's network and schedule.

`semires_mllm` is the variant this project first built: the sample's own MLLM proposal is the only candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from l2l.errors import ConfigError
from l2l.methods.base import StepOutput
from l2l.methods.semi import TeacherStudentMethod, TeacherStudentOptions, check_unlabelled, label_proposal
from l2l.proposals.candidates import match_candidates


def pixel_adjustment_weight(p: torch.Tensor, offset: float = 1.3, mean: float = 0.5, std: float = 0.1) -> torch.Tensor:
    """`offset - exp(-(p - mean)^2 / (2 std^2))`: down-weight pixels the teacher is unsure about."""
    return offset - torch.exp(-((p - mean) ** 2) / (2.0 * std**2))


@dataclass
class SemiRESOptions(TeacherStudentOptions):
    ema_momentum: float = 0.9996
    """SemiRES's teacher EMA (after the burn-in initialises it)."""
    burn_in: float = 0.2
    """Fraction of the steps trained on D_l alone; then teacher <- student."""
    match: str = "iom"
    """iom (best candidate by IoU) | cpi (union of the candidates that are parts or covers)."""
    iou_match: float = 0.5
    """IOM: teacher-mask / candidate IoU above which the candidate becomes the label."""
    cpi_overlap: float = 0.7
    """CPI: |S n P| / |P| or |S n P| / |S| above which a candidate S joins the label."""
    pwa_offset: float = 1.3
    """Pixel-Wise Adjustment: weight = offset - N(p; mean, std)."""
    pwa_mean: float = 0.5
    """Mean of PWA's Gaussian."""
    pwa_std: float = 0.1
    """Std of PWA's Gaussian."""


class SemiRESMethod(TeacherStudentMethod):
    """Label = the matched class-agnostic candidate (IOM or CPI), else the teacher's map with PWA weights."""

    name: ClassVar[str] = "semires"
    needs_candidates: ClassVar[bool] = True
    teacher_warmup: ClassVar[bool] = False
    Options: ClassVar[type] = SemiRESOptions

    def __init__(self, model: Any, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> None:
        super().__init__(model, cfg, total_steps, bank)
        if self.opts.match not in ("iom", "cpi"):
            raise ConfigError(f"method.match={self.opts.match!r}: expected 'iom' or 'cpi'")
        self.burn_steps = int(round(self.opts.burn_in * self.total_steps))
        self.burned_in = self.burn_steps == 0

    def candidates(self, batch_u: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`(soft candidates [B,K,S,S], valid [B,K])` of the batch's images."""
        if "candidates" not in batch_u:
            raise ConfigError(f"method {self.name!r} needs class-agnostic candidate masks in the unlabelled batch "
                              "(the trainer adds them for methods with needs_candidates)")
        return batch_u["candidates"], batch_u["candidate_valid"]

    def _burn_in_step(self, batch_l: dict) -> StepOutput:
        out_l = self.model(**self.inputs(batch_l))
        loss, logs = self.supervised(out_l, batch_l)
        loss = loss + self.edit([out_l], logs)
        logs.update({"loss": float(loss.detach()), "burn_in": 1.0})
        return StepOutput(loss=loss, logs=logs)

    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        batch_u = check_unlabelled(batch_u, self.name)
        if step < self.burn_steps:
            return self._burn_in_step(batch_l)
        if not self.burned_in:  # the burn-in model becomes the teacher
            self.teacher.reset(self.model)
            self.burned_in = True
        p = self.teacher_probs(batch_u)
        out_l, out_u = self.student_joined(batch_l, batch_u, self.views.strong(batch_u["pixel_values"]))
        loss, logs = self.supervised(out_l, batch_l)
        cand, valid = self.candidates(batch_u)
        target, matched = match_candidates(p > 0.5, cand.to(p.device).float(), valid.to(p.device), self.opts.match,
                                           self.opts.iou_match, self.opts.cpi_overlap)
        m = matched.view(-1, 1, 1, 1)
        target = torch.where(m, target, p)
        pwa = pixel_adjustment_weight(p, self.opts.pwa_offset, self.opts.pwa_mean,
                                      self.opts.pwa_std)
        weight = torch.where(m, torch.ones_like(p), pwa)
        loss_u = self.unsup_loss(out_u["logits"], target, weight, batch_u)
        lam = self.lambda_u(step - self.burn_steps)
        loss = loss + lam * loss_u + self.edit([out_l, out_u], logs)
        logs.update({"loss_unsup": float(loss_u.detach()), "lambda_u": lam,
                     "matched_rate": float(matched.float().mean()), "loss": float(loss.detach())})
        return StepOutput(loss=loss, logs=logs)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "burned_in": self.burned_in}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.burned_in = bool(state.get("burned_in", self.burned_in))


class SemiRESMLLMMethod(SemiRESMethod):
    """SemiRES's rule with the sample's own MLLM proposal (`q > 0.5`) as the only candidate mask."""

    name: ClassVar[str] = "semires_mllm"
    needs_candidates: ClassVar[bool] = False

    def candidates(self, batch_u: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return label_proposal(batch_u), batch_u["has_proposal"].view(-1, 1)
