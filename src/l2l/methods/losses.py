"""Segmentation losses shared by every method, so methods differ only in *which* pixels supervise what.

All losses take mask logits `[B, 1, S, S]`, a target in [0, 1] of the same shape (hard masks or soft
pseudo-labels) and optional per-pixel weights. A weight of 0 removes a pixel (an unaccepted pseudo-label
pixel), so the same functions serve supervised, pseudo-label and masked-consistency terms.
Losses are computed in float32 even under bf16 autocast: the log-sum-exp of BCE loses too much in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> None:
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if weight is not None and weight.shape != logits.shape:
        raise ValueError(f"weight {tuple(weight.shape)} must match logits {tuple(logits.shape)}")


def sigmoid_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy averaged over the pixels that carry weight (0 when no pixel does)."""
    _check(logits, target, weight)
    loss = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    if weight is None:
        return loss.mean()
    w = weight.float()
    return (loss * w).sum() / w.sum().clamp_min(1e-6)


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """Soft Dice per sample, averaged over samples that have any weighted pixel.

    Dice balances the tiny-object case that per-pixel CE under-weights; `smooth` keeps an empty target
    with an empty prediction at loss 0 instead of 0/0.
    """
    _check(logits, target, weight)
    prob = torch.sigmoid(logits.float()).flatten(1)
    tgt = target.float().flatten(1)
    w = torch.ones_like(prob) if weight is None else weight.float().flatten(1)
    inter = (prob * tgt * w).sum(1)
    denom = (prob * w).sum(1) + (tgt * w).sum(1)
    per_sample = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    active = (w.sum(1) > 0).float()
    return (per_sample * active).sum() / active.sum().clamp_min(1.0)


def ce_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """The standard RES objective: `ce_weight * CE + dice_weight * Dice` over the weighted pixels."""
    loss = logits.new_zeros((), dtype=torch.float32)
    if ce_weight:
        loss = loss + ce_weight * sigmoid_ce(logits, target, weight)
    if dice_weight:
        loss = loss + dice_weight * dice_loss(logits, target, weight)
    return loss


def pseudo_label_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> torch.Tensor:
    """Soft BCE + soft Dice toward a soft pseudo-label in [0, 1] (a mixture, a proposal, a matched mask), over the
    pixels that carry weight (acceptance, PWA weights, has-a-proposal); 0 (still in the graph) when none does.

    Soft, not thresholded: a hard 0/1 label at the network's side moves every edge to the pixel grid, and a
    network that copies such labels exactly loses ~5 mIoU at the original resolution that the soft map keeps.
    """
    if target.min() < 0 or target.max() > 1:
        raise ValueError("pseudo-label targets must lie in [0, 1]")
    if not bool((weight > 0).any()):
        return logits.sum() * 0.0
    return ce_dice(logits, target.float(), weight, ce_weight=ce_weight, dice_weight=dice_weight)


def edit_term(outs: list[dict], weight: float, logs: dict[str, float]) -> torch.Tensor:
    """`weight * mean |edit|` over the pixels of every forward in `outs`: the L1 price of moving the output off
    logit(q) (`out["edit"]`, 0 where a row had no proposal; see RESModel). Logs the mean edit as `edit_abs`.

    L1, not L2: its gradient is the same however small the edit, so a pixel moves off the proposal only where the
    segmentation loss pulls harder than `weight`; weak or inconsistent evidence leaves the proposal untouched."""
    edits = [o["edit"] for o in outs if o.get("edit") is not None]
    if not edits:
        return torch.zeros((), device=outs[0]["logits"].device)
    flat = torch.cat([e.flatten() for e in edits])
    logs["edit_abs"] = float(flat.detach().abs().mean())
    return weight * flat.abs().mean() if weight else flat.new_zeros(())
