"""L2L: per-sample label sources chosen by RPLE, utility-rewarded, on cross-fitted proxy episodes; labels that evolve.

One training step (the cost is designed to stay within 2.5x a supervised step):
1. one teacher forward without grad on [labelled; unlabelled weak view]; one student forward with grad on
   [labelled; unlabelled strong view];
2. cross-fitting: the labelled images fall into `proxy_folds` folds by image id; the fold whose turn it is
   (rotating every `total_steps / (2 * folds)` steps) is left out of the supervised loss and serves as proxy
   episodes, so the teacher's states there look like those on unlabelled images, not like memorised ones;
3. for every sample, the labels each action would teach (`rple.ACTIONS`: the evolving proposal q, the teacher p, the
   mixture a p + (1 - a) q, none) and the sample's state;
4. rewards: on the proxy rows, each label's IoU with the ground truth minus `rple_cost`; on the unlabelled rows, each
   label's utility, the first-order decrease of the held-out (proxy-fold) labelled loss (CE + Dice) after an SGD
   step on that label, `<grad L_l, grad L_u(label)>`, at the output layer (`utility_parameters`); one RPLE step;
5. student loss `L = L_sup(held-in labelled) + lambda_u(t) L_u(soft label of the greedy action) + lambda_g [L_guide on
   both]`, on the label's sure pixels (`max(t, 1 - t) >= fixed_threshold`, the same mask as `l2l_no_rple`, so
   the ablation isolates the policy); no label for a sample the policy rejects or whose prior failed.
Self-evolution (`evolve_rounds` rounds from `evolve_start` on): the greedy decision rewrites the label bank where it
chooses the teacher or the mixture, `q <- (1 - mu) q + mu label`; the round is first scored on the labelled proxy
set, and the unlabelled labels are written only if it raised the proxy labels' IoU by more than `evolve_z` standard
errors of the paired per-sample gain (the evidence; a mean gain on a few dozen sentences is mostly noise).
The network's input stays the MLLM's proposal, as at test time; the evolving bank feeds the labels only.

Ablations: `l2l_no_rple` (mixture label, pixels kept where `max(m, 1 - m) >= fixed_threshold`, tune it on val),
`l2l_classifier` (the same state and actions, a BCE classifier on proxy correctness instead of RL and utility),
`l2l_no_evolve`, `l2l_no_sesm`.

One module for the method: the step, the labels, the policy update and self-evolution read the same decisions;
the policy itself lives in `rple`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from torch import nn

from l2l.errors import ConfigError
from l2l.methods.base import StepOutput
from l2l.methods.rple import (ACTIONS, MIXTURE, REJECT, RPLE, BCESelector, action_labels, label_quality, mask_iou,
                              sample_state, with_reject)
from l2l.methods.semi import (TeacherStudentMethod, TeacherStudentOptions, check_unlabelled, has_proposal_weight,
                              join_inputs, label_proposal, sigmoid_rampup)
from l2l.methods.teacher import unwrap


def candidate_label(p: torch.Tensor, q: torch.Tensor, has_proposal: torch.Tensor,
                    alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(m, m > 0.5)`: the mixture `m = a p + (1 - a) q` (teacher alone where there is no proposal)."""
    has = has_proposal.to(p.device).bool().view(-1, 1, 1, 1)
    m = torch.where(has, alpha * p + (1.0 - alpha) * q.to(p.device).float(), p)
    return m, m > 0.5


def utility_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Where the utility's gradients are taken: the refine head's last conv, whose path to the logits is one conv, so
    the double backward stays cheap (through the decoder's heads it runs back through the full-resolution refine
    blocks: a 6.8x l2l step instead of ~2.5x); without a refine head, the decoder's output heads and the proposal's
    logit scale. The utility is measured on held-out labelled images (the proxy fold), which the supervised loss
    does not fit, so it says whether a label helps the network generalise, not whether it agrees with memorised
    images."""
    net = unwrap(model)
    refine = getattr(net, "refine", None)
    owners = [(refine, "head")] if refine is not None else [(getattr(net, "decoder", None), "head"),
                                                            (getattr(net, "decoder", None), "prior_head")]
    params: list[nn.Parameter] = []
    for owner, name in owners:
        module = getattr(owner, name, None) if owner is not None else None
        if isinstance(module, nn.Module):
            params += [p for p in module.parameters() if p.requires_grad]
    scale = getattr(net, "prior_out_scale", None)
    if refine is None and isinstance(scale, nn.Parameter) and scale.requires_grad:
        params.append(scale)
    if not params:
        raise ConfigError("method l2l: the model has no output heads for RPLE's utility reward; "
                          "set method.utility_weight=0 to train without it")
    return params


def per_sample_loss_grad(logits: torch.Tensor, labels: torch.Tensor, ce_weight: float, dice_weight: float,
                         smooth: float = 1.0) -> torch.Tensor:
    """`d L_b(y) / d z` for every sample b and every label y: `[B, A, S, S]` from logits `[B, 1, S, S]` and labels
    `[B, A, S, S]`, where `L_b(y) = ce * mean_i BCE(z_i, y_i) + dice * SoftDice(z, y)` (the loss of that one sample
    with that label, as `losses.ce_dice` computes it for one sample)."""
    s = torch.sigmoid(logits.float())
    n = float(s[0].numel())
    grad = ce_weight * (s - labels) / n
    if dice_weight:
        inter = (s * labels).flatten(2).sum(-1)[..., None, None]
        denom = s.flatten(2).sum(-1)[..., None, None] + labels.flatten(2).sum(-1)[..., None, None] + smooth
        d_prob = -(2.0 * labels * denom - (2.0 * inter + smooth)) / denom**2
        grad = grad + dice_weight * d_prob * s * (1.0 - s)
    return grad


def take_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The batch restricted to the rows where `rows` (bool [B]) is True (tensors and lists alike)."""
    idx = rows.nonzero().flatten().tolist()
    n = rows.shape[0]
    out: dict = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.shape[:1] == (n,):
            out[key] = value[rows.to(value.device)]
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in idx]
        else:
            out[key] = value
    return out


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class L2LOptions(TeacherStudentOptions):
    alpha_start: float = 0.3
    """Teacher weight of the mixture label at step 0."""
    alpha_end: float = 0.7
    """... at the end of annealing."""
    alpha_anneal: float = 0.5
    """Fraction of training over which alpha moves linearly from start to end."""
    rple_samples: int = 8
    """K actions sampled per sample for the group advantage."""
    rple_cost: float = 0.5
    """A label earns its proxy IoU minus this (rejecting earns 0)."""
    rple_entropy: float = 0.01
    """Entropy bonus of the policy."""
    rple_lr: float = 1e-2
    """Adam learning rate of the policy (and of the classifier ablation); 3e-3 barely left its start in 300 steps."""
    rple_width: int = 32
    """Hidden width of the policy MLP."""
    utility_weight: float = 1.0
    """Weight of the (batch-normalised) utility reward on unlabelled rows (0 = off)."""
    proxy_folds: int = 4
    """Cross-fitting folds of the labelled images (1 = no hold-out: every labelled row is proxy)."""
    fixed_threshold: float = 0.9
    """Teach a pixel of the chosen soft label only where max(t, 1 - t) >= this (tuned on val for l2l_no_rple)."""
    threshold_every_source: bool = True
    """Apply `fixed_threshold`'s pixel mask to every selector's label (RPLE's and the classifier's choice too): the
    policy decides per sample which source, the mask which of its pixels are sure (+3.0 val mIoU for l2l at 1%,
    two seeds); false: only l2l_no_rple masks, the policy's label is taught whole."""
    evolve_rounds: int = 2
    """Self-evolution rounds over the run (0 = never), evenly spaced in steps ..."""
    evolve_start: float = 0.4
    """... from this fraction of the training steps on (a round is a pass over D_u)."""
    evolve_mu: float = 1.0
    """q <- (1 - mu) q + mu label where the decision picks the teacher or the mixture."""
    evolve_z: float = 1.645
    """A round writes only if the proxy labels' paired IoU gain clears z standard errors (1.645: one-sided 95%;
    0: unless the proxy labels got worse, the first guard, which let a +1.6 on 53 sentences rewrite 97% of the
    bank and lower its hidden-mask mIoU)."""


class L2LMethod(TeacherStudentMethod):
    """The full method; the ablations below switch one part off through class attributes."""

    name: ClassVar[str] = "l2l"
    selector: ClassVar[str] = "rple"  # rple | classifier | threshold
    evolves: ClassVar[bool] = True  # False: the label bank is never rewritten (l2l_no_evolve)
    Options: ClassVar[type] = L2LOptions

    def __init__(self, model: nn.Module, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> None:
        super().__init__(model, cfg, total_steps, bank)
        o = self.opts
        self.rple: RPLE | BCESelector | None = None
        if self.selector == "rple":
            self.rple = RPLE(samples=o.rple_samples, entropy_coef=o.rple_entropy,
                             lr=o.rple_lr, width=o.rple_width, seed=o.seed)
        elif self.selector == "classifier":
            self.rple = BCESelector(lr=o.rple_lr, width=o.rple_width, seed=o.seed)
        self.utility = self.selector == "rple" and o.utility_weight > 0
        self.head = utility_parameters(model) if self.utility else []
        if o.proxy_folds < 1:
            raise ConfigError(f"method.proxy_folds={o.proxy_folds} must be at least 1")
        self.history: list[dict[str, float]] = []  # one entry per self-evolution round

    # -- schedules --------------------------------------------------------------------------------------------
    def alpha(self, step: int) -> float:
        """Teacher weight of the mixture label: linear from alpha_start to alpha_end, then constant."""
        span = self.opts.alpha_anneal * self.total_steps
        t = 1.0 if span <= 0 else min(max(step / span, 0.0), 1.0)
        return self.opts.alpha_start + t * (self.opts.alpha_end - self.opts.alpha_start)

    def proxy_rows(self, batch_l: dict, step: int) -> torch.Tensor:
        """bool `[B_l]`: the labelled rows held out of the supervised loss at `step` (proxy episodes)."""
        folds = self.opts.proxy_folds
        n = batch_l["pixel_values"].shape[0]
        if folds == 1 or self.rple is None:
            return torch.ones(n, dtype=torch.bool) if self.rple is not None else torch.zeros(n, dtype=torch.bool)
        ids = batch_l.get("image_ids")
        if ids is None:
            raise ConfigError("method l2l with proxy_folds > 1 needs `image_ids` in the labelled batch")
        period = max(1, self.total_steps // (2 * folds))
        return (ids.cpu().long() % folds) == (step // period) % folds

    # -- labels -----------------------------------------------------------------------------------------------
    def state(self, batch: dict, p: torch.Tensor, step: int) -> torch.Tensor:
        return sample_state(p, label_proposal(batch), batch["boxes"], batch["prior_conf"], batch["has_proposal"],
                            min(1.0, step / self.total_steps))

    def decide(self, batch: dict, p: torch.Tensor, step: int) -> torch.Tensor:
        """Greedy action per sample `[B]` (`rple.ACTIONS` indices); the mixture for the threshold ablation."""
        if self.rple is None:
            return torch.full((p.shape[0],), MIXTURE, dtype=torch.long, device=p.device)
        self.rple.to(p.device)
        return self.rple.decide(self.state(batch, p, step))

    def pseudo_labels(self, batch: dict, p: torch.Tensor, decisions: torch.Tensor,
                      step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(soft target [B,1,S,S], weight [B,1,S,S])` of the chosen sources; weight 0 where rejected or the prior
        failed; with the threshold ablation, the mixture kept where it is confident."""
        labels = action_labels(p, label_proposal(batch), self.alpha(step))
        pick = decisions.clamp_max(labels.shape[1] - 1).to(p.device)
        target = labels[torch.arange(p.shape[0], device=p.device), pick][:, None]
        weight = (decisions != REJECT).to(p.device).float().view(-1, 1, 1, 1).expand_as(target).clone()
        if self.rple is None or self.opts.threshold_every_source:
            weight = weight * (torch.maximum(target, 1.0 - target) >= self.opts.fixed_threshold).float()
        return target, weight * has_proposal_weight(batch, target)

    def utility_values(self, loss_sup: torch.Tensor, logits_u: torch.Tensor, labels_u: torch.Tensor) -> torch.Tensor:
        """`[B_u, A]`: `<grad L_l, grad L_b(label)>` for every unlabelled sample b and label source, over
        `utility_parameters`. Positive: a step on that label lowers the labelled loss (to first order, by `lr` times
        this). Linear in the loss's logit gradient, so one directional derivative `dz/dtheta . grad L_l` serves
        every sample and source: a vector-Jacobian product with a dummy cotangent `w`, then its gradient in `w`."""
        g_l = torch.autograd.grad(loss_sup, self.head, retain_graph=True, allow_unused=True)
        g_l = [torch.zeros_like(p) if g is None else g for p, g in zip(self.head, g_l)]
        w = torch.zeros_like(logits_u, requires_grad=True)
        vjp = torch.autograd.grad(logits_u, self.head, grad_outputs=w, retain_graph=True, create_graph=True,
                                  allow_unused=True)
        inner = sum((a * b).sum() for a, b in zip(vjp, g_l) if a is not None)
        if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
            return logits_u.new_zeros(logits_u.shape[0], labels_u.shape[1])
        directional = torch.autograd.grad(inner, w)[0].detach().float()
        e = per_sample_loss_grad(logits_u.detach(), labels_u, self.opts.ce_weight,
                                 self.opts.pseudo_dice_weight)
        return (e * directional).flatten(2).sum(-1)

    # -- the step ---------------------------------------------------------------------------------------------
    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        batch_u = check_unlabelled(batch_u, self.name)
        device = batch_l["pixel_values"].device
        self.teacher.follow_device(self.model)
        proxy = self.proxy_rows(batch_l, step).to(device)
        # the teacher sees the proxy rows and the unlabelled batch (no other labelled row needs its opinion)
        batch_p = take_rows(batch_l, proxy)
        n_p = int(proxy.sum())
        p_all = torch.sigmoid(self.teacher(**join_inputs(self.inputs(batch_p), self.inputs(batch_u)))["logits"].float())
        p_l, p_u = p_all[:n_p], p_all[n_p:]
        out_l, out_u = self.student_joined(batch_l, batch_u, self.views.strong(batch_u["pixel_values"]))
        if self.rple is None or self.opts.proxy_folds == 1 or not bool(proxy.any()):
            loss, logs = self.supervised(out_l, batch_l)
        else:  # the proxy fold is out of the supervised loss
            loss, logs = self.supervised_weighted(out_l, batch_l, (~proxy).float().view(-1, 1, 1, 1))
        logits_u = out_u["logits"]
        logs["rple/proxy_rows"] = float(proxy.float().sum())
        if self.rple is not None:
            logs.update(self._selector_step(batch_l, batch_u, out_l, logits_u, p_l, p_u, proxy, step))
        decisions = self.decide(batch_u, p_u, step)
        target_u, weight_u = self.pseudo_labels(batch_u, p_u, decisions, step)
        loss_u = self.unsup_loss(logits_u, target_u, weight_u, batch_u)
        lam = self.lambda_u(step)
        loss = loss + lam * loss_u
        refined_u, lambda_g = out_u.get("refined"), self.opts.lambda_g
        if refined_u is not None and lambda_g > 0 and bool((weight_u > 0).any()):
            ramp = sigmoid_rampup(step, self.opts.rampup * self.total_steps)
            loss_guide_u = self.unsup_loss(refined_u, target_u, weight_u, batch_u)
            loss = loss + lambda_g * ramp * loss_guide_u
            logs["loss_guide_u"] = float(loss_guide_u.detach())
        loss = loss + self.edit([out_l, out_u], logs)
        has = batch_u["has_proposal"].to(device).bool()
        for k, name in enumerate(ACTIONS):
            logs[f"rple/chose_{name}"] = float(((decisions == k) & has).float().sum() / has.float().sum().clamp_min(1))
        logs.update({"loss_unsup": float(loss_u.detach()), "lambda_u": lam, "alpha": self.alpha(step),
                     "accept_rate": float(weight_u.mean()), "loss": float(loss.detach())})
        return StepOutput(loss=loss, logs=logs)

    def supervised_weighted(self, out_l: dict, batch_l: dict, keep: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """`L_sup + lambda_g L_guide` on the rows with `keep` 1 (the held-in folds)."""
        target = batch_l["mask"].to(out_l["logits"].device).float()
        w = keep.to(target.device).expand_as(target)
        loss_sup = self.seg_loss(out_l["logits"], target, w)
        loss, logs = loss_sup, {"loss_sup": float(loss_sup.detach())}
        refined, lambda_g = out_l.get("refined"), self.opts.lambda_g
        if refined is not None and lambda_g > 0:
            w_g = w * has_proposal_weight(batch_l, refined)
            if bool(w_g.any()):
                loss_guide = self.seg_loss(refined, target, w_g)
                loss = loss + lambda_g * loss_guide
                logs["loss_guide_l"] = float(loss_guide.detach())
        return loss, logs

    def _selector_step(self, batch_l: dict, batch_u: dict, out_l: dict, logits_u: torch.Tensor, p_l: torch.Tensor,
                       p_u: torch.Tensor, proxy: torch.Tensor, step: int) -> dict[str, float]:
        """One update of the policy (or classifier) from proxy and unlabelled rows with a proposal."""
        assert self.rple is not None
        device = p_u.device
        self.rple.to(device)
        a = self.alpha(step)
        cost = self.opts.rple_cost
        logs: dict[str, float] = {}
        states, rewards = [], []
        gt = batch_l["mask"].to(device) > 0.5
        has_p = batch_l["has_proposal"].to(device).bool()[proxy]  # p_l holds the proxy rows only
        quality_l = None
        if bool(has_p.any()):
            rows = take_rows(take_rows(batch_l, proxy), has_p)
            p_h = p_l[has_p]
            labels_l = action_labels(p_h, label_proposal(rows), a)
            quality_l = label_quality(labels_l, gt[proxy][has_p])
            states.append(self.state(rows, p_h, step))
            rewards.append(with_reject(quality_l - cost))
            logs["rple/proxy_best_iou"] = float(quality_l.max(1).values.mean())
        if isinstance(self.rple, BCESelector):
            if quality_l is not None:
                logs.update(self.rple.update(states[0], quality_l > cost))
                logs.update(self._proxy_logs(states[0], quality_l))
            return logs
        has_u = batch_u["has_proposal"].to(device).bool()
        if self.utility and bool(has_u.any()):
            # the labelled loss the utility is measured on: the held-out proxy rows when there are any
            rows_w = proxy.float().view(-1, 1, 1, 1) if bool(proxy.any()) else torch.ones_like(gt[:, :1, :1, :1]).float()
            loss_sup = self.seg_loss(out_l["logits"], gt.float(), rows_w.expand_as(gt).float())
            labels_u = action_labels(p_u, label_proposal(batch_u), a)
            util = self.utility_values(loss_sup, logits_u, labels_u)[has_u]
            scale = util.std() if util.numel() > 1 else util.abs().mean()
            util = util / (scale + 1e-12)
            state_u = self.state(batch_u, p_u, step)[has_u]
            states.append(state_u)
            rewards.append(with_reject(self.opts.utility_weight * util))
            logs["rple/utility_best_share"] = float((util.argmax(1) == MIXTURE).float().mean())
            logs["rple/utility_positive"] = float((util > 0).float().mean())
        if states:
            logs.update(self.rple.update(torch.cat(states), torch.cat(rewards)))
        if quality_l is not None:
            logs.update(self._proxy_logs(states[0], quality_l))
        return logs

    def _proxy_logs(self, state_l: torch.Tensor, quality_l: torch.Tensor) -> dict[str, float]:
        """Quality of the greedy decision on the proxy rows: acceptance, the IoU of accepted labels, and the share
        of rows where it picked a label at least as good as the best source minus 0.05."""
        assert self.rple is not None
        choice = self.rple.decide(state_l)
        accepted = choice != REJECT
        chosen = with_reject(quality_l).gather(1, choice.view(-1, 1))[:, 0]
        good = quality_l.max(1).values > self.opts.rple_cost
        return {"rple/proxy_accept_rate": float(accepted.float().mean()),
                "rple/proxy_accepted_iou": float(chosen[accepted].mean()) if bool(accepted.any()) else 0.0,
                "rple/proxy_precision": float((good & accepted).float().sum() / accepted.float().sum().clamp_min(1)),
                "rple/proxy_recall": float((good & accepted).float().sum() / good.float().sum().clamp_min(1)),
                "rple/proxy_near_best": float((chosen >= quality_l.max(1).values - 0.05).float().mean())}

    # -- self-evolution ---------------------------------------------------------------------------------------
    def evolve_due(self, step: int) -> bool:
        """Whether a round is due: round k (0-based) falls at step `total * (start + k (1 - start) / rounds)`."""
        rounds = self.opts.evolve_rounds
        k = len(self.history)
        if not self.evolves or rounds <= 0 or k >= rounds:
            return False
        start = self.opts.evolve_start
        return step >= self.total_steps * (start + k * (1.0 - start) / rounds)

    def evolves_at(self, step: int) -> bool:
        return self.evolve_due(step)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, context: dict[str, Any]) -> dict[str, float]:
        """When a round is due: rewrite the label bank from the greedy decisions, if the proxy set says it helps.

        Under torch.distributed each rank decides on its own share of the loaders; the per-sample outcomes are
        gathered, so every rank takes the same "does it help" decision and logs the same numbers; each sample's row
        is written by the lowest rank that holds it (padding repeats a few samples on other ranks), and rank 0
        writes the index once every rank has flushed its rows. The bank then equals the one-process result."""
        step = int(context.get("step", self.total_steps))
        if not self.evolve_due(step):
            return {}
        if self.bank is None:
            raise ConfigError(f"method {self.name!r}: self-evolution needs the proposal bank; "
                              "set method.evolve_rounds=0 to train without it")
        device = torch.device(context.get("device") or next(self.model.parameters()).device)
        was_training = self.model.training
        self.model.eval()
        try:
            logs = {"evolve/round": float(len(self.history) + 1)}
            proxy, proxy_writes = self._evolve(context.get("proxy_loader") or [], device, step, labelled=True)
            proxy_all = _gather_records(proxy)
            logs.update(_round_logs(proxy_all, "evolve/proxy_", labelled=True))
            gain, se = paired_gain(proxy_all)
            logs["evolve/proxy_gain"], logs["evolve/proxy_gain_se"] = 100 * gain, 100 * se
            z = self.opts.evolve_z
            helps = gain >= 0 if z <= 0 else bool(proxy_all) and gain > 0 and gain - z * se >= 0
            logs["evolve/written"] = float(helps)
            if helps:
                unl, writes = self._evolve(context.get("unlabelled_loader") or [], device, step, labelled=False)
                unl_all = _gather_records(unl)
                logs.update(_round_logs(unl_all, "evolve/unlabelled_", labelled=False))
                self._write_round({**proxy_all, **unl_all}, {**proxy_writes, **writes})
        finally:
            self.model.train(was_training)
        self.history.append(logs)
        return logs

    def _write_round(self, records: dict[str, dict[str, Any]], writes: dict[str, tuple[torch.Tensor, torch.Tensor]]
                     ) -> None:
        """Write this rank's rows, count every rank's updates in the index, save once (rank 0)."""
        assert self.bank is not None
        rank, distributed = _rank_world()
        for sample_id, rec in records.items():
            if not rec["written"]:
                continue
            if rec["rank"] == rank:
                label, accept = writes[sample_id]
                self.bank.update(sample_id, label, accept, self.opts.evolve_mu)
            else:
                self.bank.mark_evolved(sample_id)
        self.bank.flush()
        if distributed:
            torch.distributed.barrier()
        if rank == 0:
            self.bank.save()
        if distributed:
            torch.distributed.barrier()
            self.bank.refresh()

    def _evolve(self, loader: Iterable[dict], device: torch.device, step: int, labelled: bool
                ) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Greedy decisions over one loader -> ({sample_id: outcome}, {sample_id: (label map, pixels to write)})."""
        records: dict[str, dict[str, Any]] = {}
        writes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        mu = self.opts.evolve_mu
        rank, _ = _rank_world()
        for raw in loader:
            batch = _to_device(raw if labelled else check_unlabelled(raw, self.name), device)
            p = self.teacher_probs(batch)
            decisions = self.decide(batch, p, step)
            target, weight = self.pseudo_labels(batch, p, decisions, step)
            q = label_proposal(batch).float()
            rows = (decisions == ACTIONS.index("teacher")) | (decisions == MIXTURE)  # the proposal stays elsewhere
            accept = rows.to(device).view(-1, 1, 1, 1) & (weight > 0)
            q_new = torch.where(accept, (1.0 - mu) * q + mu * target, q)
            if labelled:
                gt = batch["mask"] > 0.5
                before, after = mask_iou(q > 0.5, gt), mask_iou(q_new > 0.5, gt)
            for i, sample_id in enumerate(batch["sample_ids"]):
                written = bool(accept[i].any())
                rec: dict[str, Any] = {"written": written, "rank": rank}
                if labelled:
                    rec.update(before=float(before[i]), after=float(after[i]))
                records.setdefault(sample_id, rec)
                if written:
                    writes[sample_id] = (target[i, 0].cpu(), accept[i, 0].cpu())
        return records, writes

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "history": list(self.history)}
        if self.rple is not None:
            state["rple"] = self.rple.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.rple is not None:
            self.rple.load_state_dict(state["rple"])
        self.history = list(state.get("history", []))


class L2LNoRPLEMethod(L2LMethod):
    """Ablation: the mixture label on pixels where it is confident (`fixed_threshold`), no policy."""

    name: ClassVar[str] = "l2l_no_rple"
    ablation_of: ClassVar[str] = "l2l"
    selector: ClassVar[str] = "threshold"


class L2LClassifierMethod(L2LMethod):
    """Ablation: the same state and label sources, chosen by a BCE classifier of proxy correctness (no RL, no
    utility reward)."""

    name: ClassVar[str] = "l2l_classifier"
    ablation_of: ClassVar[str] = "l2l"
    selector: ClassVar[str] = "classifier"


class L2LNoSESMMethod(L2LMethod):
    """Ablation: the network takes no prior input (the trainer builds it with `use_sesm=False`); q still labels."""

    name: ClassVar[str] = "l2l_no_sesm"
    ablation_of: ClassVar[str] = "l2l"
    model_overrides: ClassVar[dict[str, Any]] = {"use_sesm": False}


class L2LNoEvolveMethod(L2LMethod):
    """Ablation: the label bank is never rewritten; labels keep mixing in the initial prior."""

    name: ClassVar[str] = "l2l_no_evolve"
    ablation_of: ClassVar[str] = "l2l"
    evolves: ClassVar[bool] = False


def _rank_world() -> tuple[int, bool]:
    """(this process's rank, whether several processes take part)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size() > 1
    return 0, False


def _gather_records(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every rank's per-sample outcomes, merged; a sample padding repeats on several ranks keeps the lowest rank's."""
    rank, distributed = _rank_world()
    if not distributed:
        return records
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, records)
    merged: dict[str, dict[str, Any]] = {}
    for part in parts:
        for sample_id, rec in part.items():
            merged.setdefault(sample_id, rec)
    return merged


def paired_gain(records: dict[str, dict[str, Any]]) -> tuple[float, float]:
    """(mean IoU gain after - before over the labelled records, its standard error); SE 0 below two records."""
    d = np.array([r["after"] - r["before"] for r in records.values()], dtype=np.float64)
    if d.size == 0:
        return 0.0, 0.0
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se


def _round_logs(records: dict[str, dict[str, Any]], prefix: str, labelled: bool) -> dict[str, float]:
    """A round's logs from the merged per-sample outcomes (IoU in percent, as every IoU the project reports)."""
    n = len(records)
    if n == 0:
        return {}
    logs = {f"{prefix}write_rate": sum(r["written"] for r in records.values()) / n}
    if labelled:
        logs[f"{prefix}q_miou_before"] = 100 * sum(r["before"] for r in records.values()) / n
        logs[f"{prefix}q_miou_after"] = 100 * sum(r["after"] for r in records.values()) / n
    return logs
