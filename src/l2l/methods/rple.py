"""Reinforced Pseudo-Label Exploration (RPLE, method.md stage 5): a learned per-pixel acceptance policy.

The policy sees, per pixel, what a careful annotator would look at (teacher and prior maps, their
disagreement, uncertainty, the box, the prior's confidence) and decides which candidate labels supervise the
student. It works on an `S/factor` grid (a block of `factor x factor` pixels is one decision), samples `K`
acceptance masks per image and is trained by REINFORCE with a group-normalised advantage over the `K` samples.

Both rewards are sums over pixels, so each decision's own term is known exactly. `credit="pixel"` uses that:
the advantage of a decision is its own reward term minus the mean of that term over the K samples, divided by
the group's spread (the per-pixel parts of the GRPO advantage). `credit="image"` is plain GRPO: one advantage per
sampled mask, shared by all its decisions (unbiased but ~sqrt(#decisions) noisier).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

STATE_CHANNELS: tuple[str, ...] = (
    "teacher_prob",  # p
    "proposal",  # q (the evolving prior)
    "disagreement",  # |p - q|
    "teacher_entropy",  # H(p) / ln 2, in [0, 1]
    "student_prob",  # the student's current belief
    "inside_box",  # 1 inside the prior box
    "box_distance",  # signed distance to the box edge / S (+ inside, - outside)
    "prior_confidence",  # c, broadcast
    "image_agreement",  # IoU(p > .5, q > .5), broadcast
    "candidate",  # share of candidate-foreground pixels in the block: what acceptance would teach
)


def _pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x if factor == 1 else F.avg_pool2d(x, factor)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of Bernoulli(p) in bits (0 for certain, 1 at p = 0.5)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log(p) + (1 - p) * torch.log1p(-p)) / math.log(2.0)


def box_features(boxes: torch.Tensor, valid: torch.Tensor, size: int, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside-box flag and signed distance to the box edge (/size) at the centres of the `size/factor` grid.

    `boxes` `[B, 4]` in resized pixels; rows with `valid` false (no prior, or a non-finite/empty box) get zeros.
    """
    b = boxes.shape[0]
    h = size // factor
    centres = (torch.arange(h, device=boxes.device, dtype=torch.float32) + 0.5) * factor
    y = centres.view(1, h, 1).expand(b, h, h)
    x = centres.view(1, 1, h).expand(b, h, h)
    bx = torch.nan_to_num(boxes.float(), nan=0.0, posinf=0.0, neginf=0.0)
    x1, y1, x2, y2 = (bx[:, i].view(b, 1, 1) for i in range(4))
    ok = valid.bool() & torch.isfinite(boxes.float()).all(1) & (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
    inside = (x >= x1) & (x <= x2) & (y >= y1) & (y <= y2)
    depth = torch.minimum(torch.minimum(x - x1, x2 - x), torch.minimum(y - y1, y2 - y))
    dx = torch.clamp(torch.maximum(x1 - x, x - x2), min=0.0)
    dy = torch.clamp(torch.maximum(y1 - y, y - y2), min=0.0)
    dist = torch.where(inside, depth, -torch.sqrt(dx**2 + dy**2)) / float(size)
    okf = ok.float().view(b, 1, 1)
    return (inside.float() * okf).unsqueeze(1), (dist * okf).unsqueeze(1)


def build_state(
    p: torch.Tensor,
    q: torch.Tensor,
    student: torch.Tensor,
    candidate: torch.Tensor,
    boxes: torch.Tensor,
    prior_conf: torch.Tensor,
    has_proposal: torch.Tensor,
    factor: int,
) -> torch.Tensor:
    """The policy's input `[B, len(STATE_CHANNELS), S/factor, S/factor]` from full-resolution maps `[B, 1, S, S]`.

    Ground truth is never an argument: the same state is built for proxy (labelled) and unlabelled samples.
    """
    size = p.shape[-1]
    if size % factor:
        raise ValueError(f"image size {size} is not divisible by the RPLE factor {factor}")
    has = has_proposal.to(p.device).bool()
    q = q.to(p.device).float() * has.float().view(-1, 1, 1, 1)
    agree = torch.zeros(p.shape[0], device=p.device)
    pm, qm = (p > 0.5).flatten(1), (q > 0.5).flatten(1)
    union = (pm | qm).sum(1).float()
    agree = torch.where(union > 0, (pm & qm).sum(1).float() / union.clamp_min(1.0), agree)
    agree = agree * has.float()
    inside, dist = box_features(boxes.to(p.device), has, size, factor)
    h = size // factor
    conf = (prior_conf.to(p.device).float() * has.float()).view(-1, 1, 1, 1).expand(-1, 1, h, h)
    channels = [
        _pool(p, factor),
        _pool(q, factor),
        _pool((p - q).abs(), factor),
        _pool(binary_entropy(p), factor),
        _pool(student.to(p.device).float(), factor),
        inside,
        dist,
        conf,
        agree.view(-1, 1, 1, 1).expand(-1, 1, h, h),
        _pool(candidate.to(p.device).float(), factor),
    ]
    return torch.cat(channels, dim=1)


def label_reward_map(candidate: torch.Tensor, gt: torch.Tensor, beta: float, factor: int,
                     balance: bool = False) -> torch.Tensor:
    """Per-decision label reward `[B, 1, S/f, S/f]`; summed over accepted decisions it is `(TP - beta*FP) / N`.

    TP/FP count accepted *pixels* whose candidate label is right/wrong (foreground or background), N all pixels.
    A pixel is worth accepting when P(right) > beta / (1 + beta). With `balance` each candidate class carries half
    of the image's weight (a pixel counts `N / (2 N_class)`): the accept/reject optimum per pixel is unchanged, but
    the few foreground decisions, whose errors hurt Dice most, no longer drown in the easy background ones.
    """
    right = (candidate.bool() == gt.bool()).float()
    value = right - beta * (1.0 - right)
    if balance:
        fg = candidate.bool().float()
        n = float(fg[0].numel())
        n_fg = fg.flatten(1).sum(1).clamp_min(1.0).view(-1, 1, 1, 1)
        n_bg = (1.0 - fg).flatten(1).sum(1).clamp_min(1.0).view(-1, 1, 1, 1)
        value = value * torch.where(fg > 0, n / (2.0 * n_fg), n / (2.0 * n_bg))
    h = candidate.shape[-1] // factor
    return _pool(value, factor) / float(h * h)


def group_advantage(reward: torch.Tensor, credit: str = "pixel", eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantage over the K samples (dim 0) of `reward` `[K, B, 1, h, w]`, same shape.

    Zero mean over K by construction; an image whose K samples earn the same reward gets zero advantage.
    """
    if reward.shape[0] < 2:
        raise ValueError("a group-normalised advantage needs K >= 2 samples per image")
    if credit == "image":
        total = reward.sum(dim=(2, 3, 4))  # [K, B]
        adv = (total - total.mean(0, keepdim=True)) / (total.std(0, keepdim=True) + eps)
        return adv.view(*adv.shape, 1, 1, 1).expand_as(reward)
    if credit == "pixel":
        centred = reward - reward.mean(0, keepdim=True)
        scale = centred.transpose(0, 1).flatten(1).std(1).view(1, -1, 1, 1, 1)
        return centred / (scale + eps)
    raise ValueError(f"unknown RPLE credit {credit!r} (expected 'pixel' or 'image')")


def average_gradients_across_ranks(module: nn.Module) -> None:
    """Under torch.distributed every rank steps its own policy copy: average the gradients so the copies agree."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    for param in module.parameters():
        if param.grad is not None:
            torch.distributed.all_reduce(param.grad)
            param.grad.div_(world)


class AcceptancePolicy(nn.Module):
    """A small conv net: state `[B, C, h, w]` -> acceptance logits `[B, 1, h, w]` (dilated for context).

    The logits are a learned 1x1 "rule" over the state plus a conv correction. With `rule_init` the rule starts
    as "accept where teacher and proposal agree and the teacher is certain" (logit `2.5 - 8 |p - q| - 4 H(p)`)
    and the correction at zero, so RL refines a sensible policy instead of discovering one: a near-uniform start
    needed far more steps than a CPU schedule has (ShapeRefs 1%: 9% acceptance at 46% precision after 60 steps).
    """

    def __init__(self, in_channels: int = len(STATE_CHANNELS), width: int = 32, init_accept: float = 0.6,
                 rule_init: bool = True) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.GELU(),
        )
        self.out = nn.Conv2d(width, 1, 1)
        self.rule = nn.Conv2d(in_channels, 1, 1)
        nn.init.normal_(self.out.weight, std=1e-3)
        nn.init.zeros_(self.out.bias)
        nn.init.zeros_(self.rule.weight)
        if rule_init:
            with torch.no_grad():
                self.rule.weight[0, STATE_CHANNELS.index("disagreement")] = -8.0
                self.rule.weight[0, STATE_CHANNELS.index("teacher_entropy")] = -4.0
                self.rule.bias.fill_(2.5)
        else:  # near-uniform at `init_accept`
            nn.init.constant_(self.rule.bias, math.log(init_accept / (1.0 - init_accept)))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.rule(state) + self.out(self.body(state))


class RPLE:
    """The policy, its Adam optimiser and one REINFORCE update per training step."""

    def __init__(
        self,
        factor: int = 4,
        samples: int = 4,
        beta: float = 2.0,
        entropy_coef: float = 0.01,
        logit_reg: float = 0.005,
        lr: float = 1e-3,
        width: int = 32,
        init_accept: float = 0.6,
        rule_init: bool = True,
        credit: str = "pixel",
        seed: int = 0,
    ) -> None:
        if samples < 2:
            raise ValueError(f"RPLE needs at least 2 samples per image for a group advantage, got {samples}")
        self.factor, self.samples, self.beta = int(factor), int(samples), float(beta)
        self.entropy_coef, self.logit_reg, self.credit = float(entropy_coef), float(logit_reg), credit
        self.policy = AcceptancePolicy(len(STATE_CHANNELS), width, init_accept, rule_init)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(int(seed))

    def to(self, device: torch.device) -> None:
        """Move the policy (in place, so the optimiser keeps its parameters)."""
        if next(self.policy.parameters()).device != device:
            self.policy.to(device)

    @torch.no_grad()
    def greedy(self, state: torch.Tensor) -> torch.Tensor:
        """Acting greedily (pi > 0.5) for writing labels: `[B, 1, h, w]` bool."""
        return torch.sigmoid(self.policy(state)) > 0.5

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """K Bernoulli acceptance masks `[K, B, 1, h, w]` (float 0/1) from probabilities `[B, 1, h, w]`."""
        u = torch.rand((self.samples, *probs.shape), generator=self.generator).to(probs.device)
        return (u < probs.detach().unsqueeze(0)).float()

    def update(
        self, state: torch.Tensor, parts: dict[str, tuple[torch.Tensor, float, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Sample K masks, reward them, take one policy step; returns the pre-update probabilities `[B,1,h,w]`.

        `parts[name] = (value, weight, rows)`: `value` `[B, 1, h, w]` is each decision's reward if accepted
        (0 if rejected), so a sampled mask earns `sum(mask * value)`; `rows` bool `[B]` says which images the
        part scores (for logging). The advantage is `sum_part weight * group_advantage(part)`.
        """
        state = state.detach()
        logits = self.policy(state)
        probs = torch.sigmoid(logits)
        masks = self.sample(probs)
        advantage = torch.zeros_like(masks)
        logs: dict[str, float] = {}
        for name, (value, weight, rows) in parts.items():
            reward = masks * value.detach().unsqueeze(0)
            advantage = advantage + weight * group_advantage(reward, self.credit)
            if bool(rows.any()):
                logs[f"rple/reward_{name}"] = float(reward.sum(dim=(2, 3, 4))[:, rows].mean())
        logp = -F.binary_cross_entropy_with_logits(logits.unsqueeze(0).expand_as(masks), masks, reduction="none")
        entropy = binary_entropy(probs).mean() * math.log(2.0)
        # The entropy bonus's gradient vanishes once a decision saturates; the logit penalty's does not, so a
        # policy that rejected everything while early candidates were bad can still learn to accept later.
        loss = -(advantage * logp).mean() - self.entropy_coef * entropy + self.logit_reg * logits.pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients_across_ranks(self.policy)
        self.optimizer.step()
        logs.update({"rple/policy_loss": float(loss.detach()), "rple/entropy": float(entropy.detach()),
                     "rple/mean_accept_prob": float(probs.detach().mean())})
        return probs.detach(), logs

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
