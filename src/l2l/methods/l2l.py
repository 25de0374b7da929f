"""L2L: candidate labels from teacher + evolving prior, RPLE acceptance, self-evolving proposals (stages 4-6).

One training step (the cost is designed to stay within 2.5x a supervised step):
1. one teacher forward without grad on [labelled (proxy episode); unlabelled weak view];
2. one student forward with grad on [labelled; unlabelled strong view];
3. candidate labels `yhat = [a p + (1 - a) q > 0.5]`, `a` annealed from `alpha_start` (trust the prior) to
   `alpha_end` (trust the teacher); samples without a proposal use the teacher alone;
4. RPLE on an S/factor grid: state -> K sampled acceptance masks per image -> rewards:
   label reward on the proxy (labelled) images, scored against ground truth that never enters the state;
   utility reward on the unlabelled images, the first-order change of the labelled loss after a step on the
   accepted pixels, `<grad L_l, -grad L_u(a)>`, restricted to the network's final classifier (`refine.head`, or
   `decoder.head` without a refine head)
   and computed for all pixels at once by a double-backward directional derivative;
   -> group-normalised advantage -> one Adam step of the policy;
5. student loss `L = L_sup + lambda_u(t) L_unsup(yhat; greedy acceptance) + lambda_g [L_guide(r_l, GT) +
   ramp(t) L_guide(r_u, yhat; greedy acceptance)]`.
At `evolve_rounds` points spread over training, `on_epoch_end` rewrites the proposal bank: `q <- (1 - mu) q + mu p_teacher` on the
greedily accepted pixels (stage 6) and logs pseudo-label IoU on the proxy set. The evolving bank is the run's own copy
and feeds the candidate labels (`label_proposal`); the network's input stays the MLLM's proposal, as at test time.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from l2l.errors import ConfigError
from l2l.methods.base import StepOutput
from l2l.methods.rple import RPLE, build_state, label_reward_map
from l2l.methods.semi import (TeacherStudentMethod, binary_iou, check_unlabelled, has_proposal_weight, join_inputs,
                              sigmoid_rampup)
from l2l.methods.teacher import unwrap


def candidate_label(p: torch.Tensor, q: torch.Tensor, has_proposal: torch.Tensor,
                    alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(m, yhat)`: the mixture `m = a p + (1 - a) q` (teacher alone where there is no proposal) and `m > 0.5`."""
    has = has_proposal.to(p.device).bool().view(-1, 1, 1, 1)
    m = torch.where(has, alpha * p + (1.0 - alpha) * q.to(p.device).float(), p)
    return m, m > 0.5


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The last layer before the mask logits, where the utility reward's gradients are taken: `refine.head` when the
    network has a refine head, else `decoder.head`. The last layer keeps the double backward cheap (through the
    refine head it made an l2l step 6x a supervised one instead of ~2.5x)."""
    net = unwrap(model)
    owner = getattr(net, "refine", None)
    if owner is None:
        owner = getattr(net, "decoder", None)
    head = getattr(owner, "head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError("method l2l: the model has no `refine.head` or `decoder.head` for RPLE's utility reward; "
                          "set method.utility_weight=0 to train without it")
    return [p for p in head.parameters() if p.requires_grad]


def label_proposal(batch: dict) -> torch.Tensor:
    """The evolving proposal that feeds candidate labels: `label_proposal` when the trainer keeps an evolving bank
    beside the network's input proposals, else the input proposal itself."""
    return batch.get("label_proposal", batch["proposal"])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class L2LMethod(TeacherStudentMethod):
    """The full method; the ablations below switch one part off through class attributes."""

    name: ClassVar[str] = "l2l"
    use_rple: ClassVar[bool] = True  # False: fixed-threshold acceptance (l2l_no_rple)
    evolve: ClassVar[bool] = True  # False: the proposal bank is never rewritten (l2l_no_evolve)
    model_overrides: ClassVar[dict[str, Any]] = {}  # ModelConfig fields the trainer must set (l2l_no_sesm)
    defaults: ClassVar[dict[str, Any]] = {
        **TeacherStudentMethod.defaults,
        "alpha_start": 0.3,  # candidate-label weight of the teacher at step 0 (< 0.5: the prior decides)
        "alpha_end": 0.8,  # ... at the end of annealing (> 0.5: the teacher decides)
        "alpha_anneal": 0.5,  # fraction of training over which alpha moves linearly from start to end
        "rple_factor": 4,  # the policy decides per factor x factor block (S/4 grid)
        "rple_samples": 4,  # K acceptance masks sampled per image
        "rple_beta": 2.0,  # label reward (TP - beta FP)/N: accept a pixel when P(right) > beta/(1+beta)
        "rple_balance": True,  # label reward: foreground and background candidates weigh half each
        "rple_entropy": 0.01,  # entropy bonus of the policy
        "rple_logit_reg": 0.005,  # L2 penalty on policy logits: keeps decisions from saturating (|logit| ~ 4)
        "rple_lr": 1e-3,  # Adam learning rate of the policy
        "rple_width": 32,  # channels of the policy's conv net
        "rple_init_accept": 0.6,  # initial acceptance probability of every pixel (only with rple_rule_init off)
        "rple_rule_init": True,  # start from "accept where teacher and proposal agree" (see AcceptancePolicy)
        "rple_credit": "pixel",  # "pixel" (per-decision parts of the GRPO advantage) or "image" (plain GRPO)
        "utility_weight": 0.5,  # weight of the utility advantage next to the label advantage (0 = off)
        "proxy_every": 2,  # proxy episode (extra teacher forward on the labelled batch) every N steps
        "fixed_threshold": 0.9,  # l2l_no_rple: accept where max(m, 1 - m) >= this
        "evolve_rounds": 1,  # self-evolution rounds over the run (0 = never), evenly spaced in steps ...
        "evolve_start": 0.5,  # ... from this fraction of the training steps on (a round is a pass over D_u:
                              # on CPU schedules of a few hundred steps one round costs about half the training)
        "evolve_mu": 0.5,  # q <- (1 - mu) q + mu p on accepted pixels
        "evolve_labelled": True,  # also evolve labelled samples' proposals (their proxy-episode candidate labels)
    }

    def __init__(self, model: nn.Module, cfg: dict[str, Any], total_steps: int, bank: Any = None) -> None:
        super().__init__(model, cfg, total_steps, bank)
        c = self.cfg
        if c["rple_credit"] not in ("pixel", "image"):
            raise ConfigError(f"method.rple_credit={c['rple_credit']!r}: expected 'pixel' or 'image'")
        self.factor = int(c["rple_factor"])
        self.rple = RPLE(factor=self.factor, samples=int(c["rple_samples"]), beta=float(c["rple_beta"]),
                         entropy_coef=float(c["rple_entropy"]), logit_reg=float(c["rple_logit_reg"]),
                         lr=float(c["rple_lr"]), width=int(c["rple_width"]),
                         init_accept=float(c["rple_init_accept"]), rule_init=bool(c["rple_rule_init"]),
                         credit=str(c["rple_credit"]),
                         seed=int(c["seed"])) if self.use_rple else None
        self.utility = self.use_rple and float(c["utility_weight"]) > 0
        self.head = head_parameters(model) if self.utility else []
        self.history: list[dict[str, float]] = []  # one entry per self-evolution round

    # -- schedules --------------------------------------------------------------------------------------------
    def alpha(self, step: int) -> float:
        """Teacher weight of the candidate label: linear from alpha_start to alpha_end, then constant."""
        span = float(self.cfg["alpha_anneal"]) * self.total_steps
        t = 1.0 if span <= 0 else min(max(step / span, 0.0), 1.0)
        return float(self.cfg["alpha_start"]) + t * (float(self.cfg["alpha_end"]) - float(self.cfg["alpha_start"]))

    # -- acceptance -------------------------------------------------------------------------------------------
    def state(self, batch: dict, p: torch.Tensor, student: torch.Tensor, yhat: torch.Tensor) -> torch.Tensor:
        return build_state(p, label_proposal(batch), student, yhat, batch["boxes"], batch["prior_conf"],
                           batch["has_proposal"], self.factor)

    def upsample(self, decisions: torch.Tensor) -> torch.Tensor:
        """Block decisions `[B,1,h,w]` -> pixel weights `[B,1,S,S]`."""
        return F.interpolate(decisions.float(), scale_factor=self.factor, mode="nearest")

    def fixed_acceptance(self, m: torch.Tensor) -> torch.Tensor:
        return torch.maximum(m, 1.0 - m) >= float(self.cfg["fixed_threshold"])

    def utility_values(self, loss_sup: torch.Tensor, logits_u: torch.Tensor, yhat_u: torch.Tensor) -> torch.Tensor:
        """Per-decision utility `[B_u,1,h,w]`: summed over accepted decisions, `<grad_h L_l, -grad_h L_u(a)>`.

        With per-pixel BCE, `grad_h L_u(a) = sum_i a_i (sigmoid(z_i) - y_i) dz_i/dh / N`, so the reward is linear in
        the acceptance and needs only the directional derivative `dz_i/dh . grad_h L_l` for every pixel: one
        vector-Jacobian product with a dummy cotangent `w`, then its gradient with respect to `w`.
        """
        g_l = torch.autograd.grad(loss_sup, self.head, retain_graph=True)
        w = torch.zeros_like(logits_u, requires_grad=True)
        vjp = torch.autograd.grad(logits_u, self.head, grad_outputs=w, retain_graph=True, create_graph=True)
        directional = torch.autograd.grad(sum((a * b).sum() for a, b in zip(vjp, g_l)), w)[0]
        influence = -(torch.sigmoid(logits_u.detach().float()) - yhat_u.float()) * directional.detach().float()
        h = logits_u.shape[-1] // self.factor
        return F.avg_pool2d(influence, self.factor) / float(h * h)

    # -- the step ---------------------------------------------------------------------------------------------
    def train_step(self, batch_l: dict, batch_u: dict | None, step: int) -> StepOutput:
        batch_u = check_unlabelled(batch_u, self.name)
        device = batch_l["pixel_values"].device
        if self.rple is not None:
            self.rple.to(device)
        n_l = batch_l["pixel_values"].shape[0]
        proxy = self.use_rple and step % max(1, int(self.cfg["proxy_every"])) == 0
        self.teacher.follow_device(self.model)
        if proxy:
            joined = join_inputs(self.inputs(batch_l), self.inputs(batch_u))
            p_all = torch.sigmoid(self.teacher(**joined)["logits"].float())
            p_l, p_u = p_all[:n_l], p_all[n_l:]
        else:
            p_u = self.teacher_probs(batch_u)
        out_l, out_u = self.student_joined(batch_l, batch_u, self.views.strong(batch_u["pixel_values"]))
        loss_sup_total, logs = self.supervised(out_l, batch_l)
        # The utility reward differentiates the labelled loss of the mask logits alone (not L_guide).
        loss_sup_logits = self.seg_loss(out_l["logits"], batch_l["mask"].to(device).float()) if self.utility else None

        a = self.alpha(step)
        m_u, yhat_u = candidate_label(p_u, label_proposal(batch_u), batch_u["has_proposal"], a)
        logits_u = out_u["logits"]
        if self.rple is not None:
            accept_u, rple_logs = self._rple_step(batch_l, batch_u, out_l, logits_u, p_u, yhat_u,
                                                  p_l if proxy else None, loss_sup_logits, a)
            logs.update(rple_logs)
        else:
            accept_u = self.fixed_acceptance(m_u)
        weight_u = accept_u.float() * has_proposal_weight(batch_u, logits_u)
        target_u = m_u  # soft: the mixture itself, not its 0.5-threshold
        loss_u = self.unsup_loss(logits_u, target_u, weight_u, batch_u)
        lam = self.lambda_u(step)
        loss = loss_sup_total + lam * loss_u
        refined_u, lambda_g = out_u.get("refined"), float(self.cfg["lambda_g"])
        if refined_u is not None and lambda_g > 0:
            w_g = weight_u
            if bool(w_g.any()):
                ramp = sigmoid_rampup(step, float(self.cfg["rampup"]) * self.total_steps)
                loss_guide_u = self.seg_loss(refined_u, target_u, w_g)
                loss = loss + lambda_g * ramp * loss_guide_u
                logs["loss_guide_u"] = float(loss_guide_u.detach())
        logs.update({"loss_unsup": float(loss_u.detach()), "lambda_u": lam, "alpha": a,
                     "accept_rate": float(weight_u.mean()), "loss": float(loss.detach())})
        return StepOutput(loss=loss, logs=logs)

    def _rple_step(self, batch_l: dict, batch_u: dict, out_l: dict, logits_u: torch.Tensor, p_u: torch.Tensor,
                   yhat_u: torch.Tensor, p_l: torch.Tensor | None, loss_sup: torch.Tensor | None,
                   a: float) -> tuple[torch.Tensor, dict[str, float]]:
        """One policy update on [proxy; unlabelled] states; returns greedy acceptance `[B_u,1,S,S]` and logs."""
        f = self.factor
        state_u = self.state(batch_u, p_u, torch.sigmoid(logits_u.detach().float()), yhat_u)
        n_u, h = state_u.shape[0], state_u.shape[-1]
        zeros_u = state_u.new_zeros(n_u, 1, h, h)
        util_u = self.utility_values(loss_sup, logits_u, yhat_u) if loss_sup is not None else zeros_u
        states, label_vals, util_vals, rows_label = [state_u], [zeros_u], [util_u], [torch.zeros(n_u, dtype=torch.bool)]
        if p_l is not None:
            gt = batch_l["mask"].to(p_l.device) > 0.5
            _, yhat_l = candidate_label(p_l, label_proposal(batch_l), batch_l["has_proposal"], a)
            state_l = self.state(batch_l, p_l, torch.sigmoid(out_l["logits"].detach().float()), yhat_l)
            n_l = state_l.shape[0]
            states.insert(0, state_l)
            label_vals.insert(0, label_reward_map(yhat_l, gt, self.rple.beta, f, bool(self.cfg["rple_balance"])))
            util_vals.insert(0, state_l.new_zeros(n_l, 1, h, h))
            rows_label.insert(0, torch.ones(n_l, dtype=torch.bool))
        rows_l = torch.cat(rows_label).to(state_u.device)
        parts = {"label": (torch.cat(label_vals), 1.0, rows_l)}
        if self.utility:
            parts["utility"] = (torch.cat(util_vals), float(self.cfg["utility_weight"]), ~rows_l)
        probs, logs = self.rple.update(torch.cat(states), parts)
        greedy = probs > 0.5
        accept_u = self.upsample(greedy[-n_u:]) > 0.5
        logs["rple/accept_rate_u"] = float(accept_u.float().mean())
        if p_l is not None:
            logs.update(proxy_quality(self.upsample(greedy[: len(greedy) - n_u]) > 0.5, yhat_l, gt))
        return accept_u, logs

    # -- self-evolution ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def acceptance(self, batch: dict, p: torch.Tensor, student: torch.Tensor, m: torch.Tensor,
                   yhat: torch.Tensor) -> torch.Tensor:
        """Greedy acceptance `[B,1,S,S]` (policy, or fixed threshold without RPLE), only where a proposal exists."""
        if self.rple is not None:
            self.rple.to(p.device)
            accept = self.upsample(self.rple.greedy(self.state(batch, p, student, yhat))) > 0.5
        else:
            accept = self.fixed_acceptance(m)
        return accept & (has_proposal_weight(batch, p) > 0)

    def evolve_due(self, step: int) -> bool:
        """Whether a round is due: round k (0-based) falls at step `total * (start + k (1 - start) / rounds)`.

        Rounds are placed in steps, not epochs: at 1% labels a labelled epoch is a handful of steps, while a round
        is a pass over every unlabelled sample, so epoch-based rounds would cost more than the training itself."""
        rounds = int(self.cfg["evolve_rounds"])
        k = len(self.history)
        if not self.evolve or rounds <= 0 or k >= rounds:
            return False
        start = float(self.cfg["evolve_start"])
        return step >= self.total_steps * (start + k * (1.0 - start) / rounds)

    def on_epoch_end(self, epoch: int, context: dict[str, Any]) -> dict[str, float]:
        """When a round is due (`evolve_due`): rewrite the bank from accepted teacher evidence; log label quality."""
        if not self.evolve_due(int(context.get("step", self.total_steps))):
            return {}
        if self.bank is None:
            raise ConfigError(f"method {self.name!r}: self-evolution needs the proposal bank; "
                              "set method.evolve_rounds=0 to train without it")
        device = torch.device(context.get("device") or next(self.model.parameters()).device)
        self.teacher.follow_device(self.model)
        a = self.alpha(int(context.get("step", self.total_steps)))
        mu = float(self.cfg["evolve_mu"])
        was_training = self.model.training
        self.model.eval()
        eval_pseudo: Callable[[Any], dict[str, float]] | None = context.get("eval_pseudo")
        try:
            logs = {"evolve/round": float(len(self.history) + 1)}
            if eval_pseudo is not None and not self.history:  # round 0: the MLLM's proposals, before any write
                logs.update({f"evolve/hidden_before_{k}": float(v) for k, v in eval_pseudo(self.bank).items()})
            logs.update(self._evolve(context.get("unlabelled_loader") or [], device, a, mu, labelled=False))
            logs.update(self._evolve(context.get("proxy_loader") or [], device, a, mu, labelled=True))
        finally:
            self.model.train(was_training)
        if eval_pseudo is not None:
            logs.update({f"evolve/hidden_{k}": float(v) for k, v in eval_pseudo(self.bank).items()})
        self.history.append(logs)
        return logs

    def _evolve(self, loader: Iterable[dict], device: torch.device, a: float, mu: float,
                labelled: bool) -> dict[str, float]:
        """Evolve one loader's proposals; on labelled data also score q before/after and the pseudo-label."""
        n, accepted, pixels = 0, 0.0, 0.0
        iou_before = iou_after = iou_pseudo = 0.0
        write = not labelled or bool(self.cfg["evolve_labelled"])
        for raw in loader:
            batch = _to_device(raw if labelled else check_unlabelled(raw, self.name), device)
            p = self.teacher_probs(batch)
            student = torch.sigmoid(self.model(**self.inputs(batch))["logits"].float())
            m, yhat = candidate_label(p, label_proposal(batch), batch["has_proposal"], a)
            accept = self.acceptance(batch, p, student, m, yhat)
            q = label_proposal(batch).float()
            q_new = torch.where(accept, (1.0 - mu) * q + mu * p, q)
            if write:
                for i, sample_id in enumerate(batch["sample_ids"]):
                    self.bank.update(sample_id, p[i, 0].cpu().numpy(), accept[i, 0].cpu().numpy(), mu)
            n += p.shape[0]
            accepted += float(accept.float().sum())
            pixels += float(accept.numel())
            if labelled:
                gt = batch["mask"] > 0.5
                iou_before += float(binary_iou(q > 0.5, gt).sum())
                iou_after += float(binary_iou(q_new > 0.5, gt).sum())
                iou_pseudo += float(binary_iou(yhat & accept, gt & accept).sum())
        if n == 0:
            return {}
        prefix = "evolve/proxy_" if labelled else "evolve/unlabelled_"
        logs = {f"{prefix}accept_rate": accepted / max(pixels, 1.0)}
        if labelled:
            # mIoU in percent, as every other IoU the project reports
            logs.update({f"{prefix}q_miou_before": 100 * iou_before / n, f"{prefix}q_miou_after": 100 * iou_after / n,
                         f"{prefix}pseudo_miou_accepted": 100 * iou_pseudo / n})
        return logs

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


def proxy_quality(accept: torch.Tensor, yhat: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    """Pseudo-label quality on the proxy set under the given acceptance (all pixel counts over the batch).

    `label_precision`: accepted pixels whose label is right; `fg_precision`/`fg_recall`: accepted foreground
    labels that are object, and object pixels that got an accepted foreground label.
    """
    acc, y, g = accept.bool(), yhat.bool(), gt.bool()
    fg = acc & y
    return {
        "rple/proxy_accept_rate": float(acc.float().mean()),
        "rple/proxy_label_precision": float((acc & (y == g)).sum()) / max(float(acc.sum()), 1.0),
        "rple/proxy_fg_precision": float((fg & g).sum()) / max(float(fg.sum()), 1.0),
        "rple/proxy_fg_recall": float((fg & g).sum()) / max(float(g.sum()), 1.0),
    }


class L2LNoRPLEMethod(L2LMethod):
    """Ablation: accept candidate labels where the mixture is confident (`fixed_threshold`), no policy."""

    name: ClassVar[str] = "l2l_no_rple"
    use_rple: ClassVar[bool] = False


class L2LNoSESMMethod(L2LMethod):
    """Ablation: the network takes no prior input (the trainer builds it with `use_sesm=False`); q still labels."""

    name: ClassVar[str] = "l2l_no_sesm"
    model_overrides: ClassVar[dict[str, Any]] = {"use_sesm": False}


class L2LNoEvolveMethod(L2LMethod):
    """Ablation: the proposal bank is never rewritten; candidate labels keep mixing in the initial prior."""

    name: ClassVar[str] = "l2l_no_evolve"
    evolve: ClassVar[bool] = False
