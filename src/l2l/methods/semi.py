"""Shared plumbing of the semi-supervised methods: batch joining, the D_u mask guard, ramps, the EMA-teacher base.

Every semi-supervised step runs the student once on labelled + unlabelled samples concatenated (one forward,
one backward), which is what keeps a semi-supervised step within a small multiple of a supervised one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from l2l.errors import DataError
from l2l.methods.base import Method
from l2l.methods.losses import ce_dice, edit_term, pseudo_label_loss
from l2l.methods.supervised import LossOptions, model_uses_sesm
from l2l.methods.teacher import EMATeacher, Views


def check_unlabelled(batch_u: dict | None, method: str) -> dict:
    """Refuse an unlabelled batch that carries masks: D_u masks must never reach training code."""
    if batch_u is None:
        raise ValueError(f"method {method!r} needs an unlabelled batch (needs_unlabelled=True)")
    if "mask" in batch_u:
        raise DataError(f"method {method!r}: the unlabelled batch carries a 'mask' entry; D_u masks must never "
                        "reach training (build the unlabelled dataset with subset='unlabelled')")
    return batch_u


def _pad_tokens(ids: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(ids, (0, length - ids.shape[1])) if ids.shape[1] < length else ids


def model_inputs(batch: dict, pixel_values: torch.Tensor | None = None, use_proposals: bool = True) -> dict[str, Any]:
    """Keyword arguments of `RESModel.forward` for one batch (optionally with other pixels, e.g. the strong view)."""
    kwargs: dict[str, Any] = {
        "pixel_values": batch["pixel_values"] if pixel_values is None else pixel_values,
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
    }
    if use_proposals and batch.get("proposal") is not None:
        kwargs["proposal"] = batch["proposal"]
        kwargs["has_proposal"] = batch.get("has_proposal")
    return kwargs


def join_inputs(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Concatenate two `model_inputs` along the batch; token tensors are padded to the longer text."""
    length = max(first["input_ids"].shape[1], second["input_ids"].shape[1])
    joined: dict[str, Any] = {
        "pixel_values": torch.cat([first["pixel_values"], second["pixel_values"]]),
        "input_ids": torch.cat([_pad_tokens(first["input_ids"], length), _pad_tokens(second["input_ids"], length)]),
        "attention_mask": torch.cat([_pad_tokens(first["attention_mask"], length),
                                     _pad_tokens(second["attention_mask"], length)]),
    }
    if "proposal" in first and "proposal" in second:
        joined["proposal"] = torch.cat([first["proposal"], second["proposal"]])
        has = [inp.get("has_proposal") for inp in (first, second)]
        if all(h is not None for h in has):
            joined["has_proposal"] = torch.cat([h.bool() for h in has])
    return joined


def split_output(out: dict[str, Any], n_first: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a joined forward's `logits`/`refined`/`edit` back into the two parts."""
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    for key in ("logits", "refined", "edit"):
        value = out.get(key)
        first[key] = None if value is None else value[:n_first]
        second[key] = None if value is None else value[n_first:]
    return first, second


def sigmoid_rampup(step: int, length: float) -> float:
    """`exp(-5 (1 - t)^2)` for t = step/length in [0, 1] (Mean Teacher's ramp): unlabelled weight grows smoothly."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def binary_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of two boolean masks `[B, 1, H, W]`; two empty masks count as 1 (they agree)."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def label_proposal(batch: dict) -> torch.Tensor:
    """The map that feeds pseudo-labels: `label_proposal` when the trainer keeps a label bank beside the network's
    input proposals (`data.label_init`, or a self-evolving method's copy), else the input proposal itself."""
    return batch.get("label_proposal", batch["proposal"])


def has_proposal_weight(batch: dict, like: torch.Tensor) -> torch.Tensor:
    """Per-pixel weight 1 for samples that have a proposal, 0 for the others (shape of `like`)."""
    has = batch.get("has_proposal")
    if has is None:
        return torch.ones_like(like)
    return has.to(like.device).float().view(-1, 1, 1, 1).expand_as(like)


def labelled_loss(out_l: dict, batch_l: dict, loss_fn: Callable[..., torch.Tensor],
                  lambda_g: float) -> tuple[torch.Tensor, dict[str, float]]:
    """`L_sup + lambda_g * L_guide` on a labelled batch: the mask supervises the logits, and the refined proposal
    wherever the sample had a proposal. Shared by every semi-supervised method so their labelled terms agree."""
    target = batch_l["mask"].to(out_l["logits"].device).float()
    loss_sup = loss_fn(out_l["logits"], target)
    loss, logs = loss_sup, {"loss_sup": float(loss_sup.detach())}
    refined = out_l.get("refined")
    if refined is not None and lambda_g > 0:
        weight = has_proposal_weight(batch_l, refined)
        if bool(weight.any()):
            loss_guide = loss_fn(refined, target, weight)
            loss = loss + lambda_g * loss_guide
            logs["loss_guide_l"] = float(loss_guide.detach())
    return loss, logs


@dataclass
class UnlabelledOptions(LossOptions):
    """Every method that learns from D_u: how much, from when, and the seed of its own random streams."""

    lambda_u: float = 1.0
    """Weight of the unlabelled loss after ramp-up."""
    rampup: float = 0.2
    """Fraction of training over which lambda_u ramps up from ~0."""
    seed: int = 0
    """Seed of the strong-view (and RPLE) generators; the config sets it to the run's seed unless given."""
    pseudo_dice_weight: float = 1.0
    """Dice weight on soft pseudo-labels (the labelled loss keeps `dice_weight`). Soft BCE is minimised where the
    prediction equals a soft target; soft Dice is not (it pushes a pixel toward 1 when its target exceeds half the
    Dice score), so on a soft proposal Dice sharpens the edges that the proposal got right."""


@dataclass
class TeacherStudentOptions(UnlabelledOptions):
    ema_momentum: float = 0.99
    """EMA teacher momentum (0.99 suits few-hundred-step CPU schedules; ~0.999 for 40-epoch GPU runs)."""


class TeacherStudentMethod(Method):
    """Base of the EMA-teacher methods: owns the teacher, the strong views and the supervised part of the loss.

    Subclasses implement `unsupervised(...)`; this class runs the joined student forward and adds
    `L_sup + lambda_g * L_guide(refined, GT)` on the labelled part.
    """

    needs_unlabelled: ClassVar[bool] = True
    needs_proposals: ClassVar[bool] = True
    teacher_warmup: ClassVar[bool] = True  # Mean Teacher's momentum warm-up (see EMATeacher)
    Options: ClassVar[type] = TeacherStudentOptions

    def __init__(self, model: nn.Module, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> None:
        super().__init__(model, cfg, total_steps, bank)
        self.teacher = EMATeacher(model, self.opts.ema_momentum, warmup=self.teacher_warmup)
        self.views = Views(self.opts.seed)
        self.use_proposals = model_uses_sesm(model)

    # -- schedule ---------------------------------------------------------------------------------------------
    def lambda_u(self, step: int) -> float:
        return self.opts.lambda_u * sigmoid_rampup(step, self.opts.rampup * self.total_steps)

    # -- forwards ---------------------------------------------------------------------------------------------
    def inputs(self, batch: dict, pixel_values: torch.Tensor | None = None) -> dict[str, Any]:
        return model_inputs(batch, pixel_values, self.use_proposals)

    def teacher_probs(self, batch: dict) -> torch.Tensor:
        """Teacher probability on the weak view (the batch's own pixels), `[B, 1, S, S]`."""
        self.teacher.follow_device(self.model)
        return torch.sigmoid(self.teacher(**self.inputs(batch))["logits"].float())

    def student_joined(self, batch_l: dict, batch_u: dict, pixels_u: torch.Tensor) -> tuple[dict, dict]:
        """One student forward on labelled (as given) + unlabelled (`pixels_u`, the strong view)."""
        out = self.model(**join_inputs(self.inputs(batch_l), self.inputs(batch_u, pixels_u)))
        return split_output(out, batch_l["pixel_values"].shape[0])

    # -- losses -----------------------------------------------------------------------------------------------
    def seg_loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return ce_dice(logits, target, weight, ce_weight=self.opts.ce_weight,
                       dice_weight=self.opts.dice_weight)

    def unsup_loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                   batch_u: dict) -> torch.Tensor:
        """The shared soft pseudo-label loss; a sample without a proposal (failed prior) contributes nothing: its
        pseudo-label would come from the prior-free teacher alone, the weakest source there is."""
        weight = weight.float() * has_proposal_weight(batch_u, logits)
        return pseudo_label_loss(logits, target, weight, ce_weight=self.opts.ce_weight,
                                 dice_weight=self.opts.pseudo_dice_weight)

    def edit(self, outs: list[dict], logs: dict[str, float]) -> torch.Tensor:
        """The shared L1 price of the student's edits of logit(q) over every row it ran on (`edit_l1`)."""
        return edit_term(outs, self.opts.edit_l1, logs)

    def supervised(self, out_l: dict, batch_l: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """`L_sup + lambda_g * L_guide` on the labelled part, as in the supervised baseline."""
        return labelled_loss(out_l, batch_l, self.seg_loss, self.opts.lambda_g)

    # -- hooks ------------------------------------------------------------------------------------------------
    def after_optimizer_step(self, step: int) -> None:
        self.teacher.update(self.model, step)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "views": self.views.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        if "views" in state:
            self.views.generator.set_state(state["views"])


__all__ = ["TeacherStudentMethod", "binary_iou", "check_unlabelled", "has_proposal_weight", "join_inputs",
           "model_inputs", "sigmoid_rampup", "split_output"]
