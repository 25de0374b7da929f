"""Reinforced Pseudo-Label Exploration (RPLE): per sample, which label source to trust, learnt by reinforcement.

For every unlabelled sample the policy chooses one of `ACTIONS`: the (evolving) proposal `q`, the teacher `p`, their
mixture `m = a p + (1 - a) q`, or no label at all. It sees what an annotator would weigh (`STATE_FEATURES`: how much
teacher and proposal agree, how sure the teacher is, whether the teacher's mask sits in the MLLM's box, the MLLM's
confidence, training progress), never the ground truth. The state is built from the teacher and the proposal
only, so a self-evolution round (one teacher pass over D_u) sees exactly the states training saw.

Why a per-sample source choice and not per-pixel accept/reject: independent per-pixel decisions with an additive
correctness reward are one-step bandits whose optimum is a fixed threshold on P(right | state); when candidates are
mostly right it is "accept all" (what our first version learnt). Which source to believe for a *sample* depends on
the sample (a wrong-object box needs the teacher, a right box with a confused teacher needs the proposal), and the
choice has a price: a label is paid for only when it is better than `cost`, and rejecting is worth 0.

Rewards (per sample, per action; reject is 0):
- label reward on proxy episodes (labelled images held out of the supervised loss in rotation, so their states look
  like unlabelled ones): `IoU(label > 0.5, ground truth) - cost`;
- utility reward on unlabelled samples: the first-order *decrease* of the labelled loss after an SGD step on that
  sample's label, `<grad L_l, grad L_u(label)>` (positive = helpful; the sign is tested against a real step),
  normalised by its spread in the batch.
Update: K actions sampled per sample, group-normalised advantage over the K (GRPO), entropy bonus, Adam.

`BCESelector` is the no-RL ablation (`l2l_classifier`): the same state and actions, one logistic output per label
source trained with plain BCE on "this source's label is better than `cost`" on proxy episodes; it takes the most
probable source when that probability exceeds 0.5, else no label.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIONS: tuple[str, ...] = ("proposal", "teacher", "mixture", "reject")
REJECT = ACTIONS.index("reject")
MIXTURE = ACTIONS.index("mixture")

STATE_FEATURES: tuple[str, ...] = (
    "iou_teacher_proposal",  # IoU(p > .5, q > .5)
    "teacher_entropy",  # mean binary entropy of p over the union of both masks, in bits
    "disagreement",  # mean |p - q| over that union
    "teacher_area",  # sqrt of the teacher mask's share of the image
    "proposal_area",
    "teacher_in_box",  # share of the teacher's mask inside the MLLM's box
    "box_area",  # sqrt of the box's share of the image
    "teacher_on_proposal",  # mean p inside q > .5: does the teacher support the proposal?
    "proposal_on_teacher",  # mean q inside p > .5
    "prior_confidence",  # the MLLM's confidence c
    "has_proposal",
    "progress",  # training progress t / T (the teacher improves with it)
)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of Bernoulli(p) in bits (0 for certain, 1 at p = 0.5)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * torch.log(p) + (1 - p) * torch.log1p(-p)) / math.log(2.0)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of two boolean masks `[B, 1, H, W]`; two empty masks count as 1 (they agree)."""
    a, b = a.flatten(1).bool(), b.flatten(1).bool()
    inter = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x, mask = x.flatten(1), mask.flatten(1).float()
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def box_mask(boxes: torch.Tensor, valid: torch.Tensor, size: int) -> torch.Tensor:
    """`[B, 1, S, S]` bool: inside the box (resized pixels, pixel centres); all False where `valid` is False or the
    box is not finite."""
    b = boxes.shape[0]
    centres = torch.arange(size, device=boxes.device, dtype=torch.float32) + 0.5
    bx = torch.nan_to_num(boxes.float(), nan=-1.0, posinf=-1.0, neginf=-1.0)
    x1, y1, x2, y2 = (bx[:, i].view(b, 1, 1) for i in range(4))
    ok = valid.bool() & torch.isfinite(boxes.float()).all(1)
    inside = ((centres.view(1, 1, -1) >= x1) & (centres.view(1, 1, -1) <= x2)
              & (centres.view(1, -1, 1) >= y1) & (centres.view(1, -1, 1) <= y2))
    return (inside & ok.view(b, 1, 1)).unsqueeze(1)


def sample_state(p: torch.Tensor, q: torch.Tensor, boxes: torch.Tensor, prior_conf: torch.Tensor,
                 has_proposal: torch.Tensor, progress: float) -> torch.Tensor:
    """The policy's input `[B, len(STATE_FEATURES)]` from maps `[B, 1, S, S]` in [0, 1]; no ground truth."""
    has = has_proposal.to(p.device).bool()
    q = q.to(p.device).float() * has.float().view(-1, 1, 1, 1)
    pm, qm = p > 0.5, q > 0.5
    union = pm | qm
    inbox = box_mask(boxes.to(p.device), has, p.shape[-1])
    n = float(p[0].numel())
    feats = [
        mask_iou(pm, qm),
        _masked_mean(binary_entropy(p), union), _masked_mean((p - q).abs(), union),
        torch.sqrt(pm.flatten(1).float().sum(1) / n), torch.sqrt(qm.flatten(1).float().sum(1) / n),
        _masked_mean(inbox.float(), pm), torch.sqrt(inbox.flatten(1).float().sum(1) / n),
        _masked_mean(p, qm), _masked_mean(q, pm),
        prior_conf.to(p.device).float() * has.float(), has.float(),
        torch.full_like(p[:, 0, 0, 0], float(progress)),
    ]
    return torch.stack(feats, dim=1)


def action_labels(p: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """The soft label each non-reject action would teach: `[B, 3, S, S]` = (q, p, a p + (1 - a) q)."""
    q = q.to(p.device).float()
    return torch.cat([q, p, alpha * p + (1.0 - alpha) * q], dim=1)


def label_quality(labels: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of every action's label with the ground truth: `[B, 3]` from labels `[B, 3, S, S]`, gt `[B, 1, S, S]`."""
    return torch.stack([mask_iou(labels[:, k : k + 1] > 0.5, gt > 0.5) for k in range(labels.shape[1])], dim=1)


def with_reject(values: torch.Tensor) -> torch.Tensor:
    """`[B, 3]` rewards of the label actions -> `[B, 4]` with reject worth 0."""
    return torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)


def average_gradients_across_ranks(module: nn.Module) -> None:
    """Under torch.distributed every rank steps its own policy copy: average the gradients so the copies agree."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    for param in module.parameters():
        if param.grad is not None:
            torch.distributed.all_reduce(param.grad)
            param.grad.div_(world)


class SourcePolicy(nn.Module):
    """A small MLP: state `[B, F]` (every feature in [0, 1]) -> one logit per action `[B, 4]`.

    The output bias starts at `init_logits`: the mixture (the fixed rule L2L replaces) favoured, so RL refines a
    sensible start.
    """

    def __init__(self, features: int = len(STATE_FEATURES), width: int = 32,
                 init_logits: tuple[float, ...] = (0.0, 0.0, 1.5, 0.0)) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.out = nn.Linear(width, len(init_logits))
        nn.init.normal_(self.out.weight, std=1e-2)
        with torch.no_grad():
            self.out.bias.copy_(torch.tensor(init_logits))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(state))


class _Selector:
    """Network, optimiser, generator; checkpointable."""

    def __init__(self, policy: SourcePolicy, lr: float, seed: int) -> None:
        self.policy = policy
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(int(seed))

    def to(self, device: torch.device) -> None:
        if next(self.policy.parameters()).device != device:
            self.policy.to(device)

    def _step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients_across_ranks(self.policy)
        self.optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


class RPLE(_Selector):
    """The source policy trained by REINFORCE with a group-normalised advantage over K sampled actions."""

    def __init__(self, samples: int = 8, entropy_coef: float = 0.01, lr: float = 3e-3, width: int = 32,
                 seed: int = 0) -> None:
        if samples < 2:
            raise ValueError(f"RPLE needs at least 2 samples per image for a group advantage, got {samples}")
        super().__init__(SourcePolicy(width=width), lr, seed)
        self.samples, self.entropy_coef = int(samples), float(entropy_coef)

    @torch.no_grad()
    def decide(self, state: torch.Tensor) -> torch.Tensor:
        """Greedy actions `[B]` (long)."""
        return self.policy(state).argmax(1)

    def update(self, state: torch.Tensor, reward: torch.Tensor) -> dict[str, float]:
        """One policy step on rows `state [B, F]` with every action's reward `reward [B, 4]` (only the K sampled
        actions' rewards enter the gradient: REINFORCE, not a regression on the full table)."""
        logits = self.policy(state.detach())
        logp_all = F.log_softmax(logits, dim=1)
        probs = logp_all.exp()
        u = torch.rand((self.samples, probs.shape[0]), generator=self.generator).to(probs.device)
        actions = (u.unsqueeze(-1) > probs.detach().cumsum(1).unsqueeze(0)).sum(-1).clamp_max(probs.shape[1] - 1)
        r = reward.detach().gather(1, actions.t()).t()  # [K, B]
        adv = (r - r.mean(0, keepdim=True)) / (r.std(0, keepdim=True) + 1e-6)
        logp = logp_all.gather(1, actions.t()).t()
        entropy = -(probs * logp_all).sum(1).mean()
        loss = -(adv * logp).mean() - self.entropy_coef * entropy
        self._step(loss)
        logs = {"rple/policy_loss": float(loss.detach()), "rple/entropy": float(entropy.detach()),
                "rple/sampled_reward": float(r.mean())}
        logs.update({f"rple/prob_{name}": float(probs[:, k].detach().mean()) for k, name in enumerate(ACTIONS)})
        return logs


class BCESelector(_Selector):
    """The no-RL ablation: P(source's label beats `cost`) per label source by BCE on proxy episodes."""

    def __init__(self, lr: float = 3e-3, width: int = 32, seed: int = 0) -> None:
        super().__init__(SourcePolicy(width=width, init_logits=(0.0, 0.0, 1.5)), lr, seed)

    @torch.no_grad()
    def decide(self, state: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(self.policy(state))
        best = prob.argmax(1)
        return torch.where(prob.max(1).values > 0.5, best, torch.full_like(best, REJECT))

    def update(self, state: torch.Tensor, good: torch.Tensor) -> dict[str, float]:
        """`good [B, 3]` in {0, 1}: the source's label is better than the cost (proxy rows only)."""
        loss = F.binary_cross_entropy_with_logits(self.policy(state.detach()), good.float())
        self._step(loss)
        return {"rple/bce_loss": float(loss.detach())}
