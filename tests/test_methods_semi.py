"""Semi-supervised methods: every method steps, EMA math, candidate labels, RPLE, self-evolution, D_u mask guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from l2l.errors import DataError
from l2l.methods import METHODS, build_method
from l2l.methods.l2l import L2LMethod, candidate_label
from l2l.methods.prior_only import ProposalAsLogits
from l2l.methods.rple import (STATE_CHANNELS, RPLE, box_features, build_state, group_advantage, label_reward_map)
from l2l.methods.semires import pixel_adjustment_weight
from l2l.methods.semi import check_unlabelled, join_inputs, model_inputs
from l2l.methods.teacher import EMATeacher
from methods_standin import GuardedBatch, StandInModel, make_batch



@pytest.fixture(scope="module", autouse=True)
def one_thread():  # noqa: ANN201 - fixture
    """One intra-op thread: on the shared 2-core machine two threads make these tiny ops many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name: str, total_steps: int = 100, bank: object = None, **cfg: object):
    torch.manual_seed(0)
    cls = METHODS[name]
    model = StandInModel(**getattr(cls, "model_overrides", {}))
    return build_method(name, model, dict(cfg), total_steps, bank)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_steps_with_a_finite_loss_and_never_reads_unlabelled_masks(name: str) -> None:
    method = build(name)
    batch_l = make_batch(3, labelled=True, seed=1)
    batch_u = make_batch(4, labelled=False, seed=2, prefix="u") if method.needs_unlabelled else None
    opt = torch.optim.SGD([p for p in method.model.parameters() if p.requires_grad], lr=0.01)
    before = [p.detach().clone() for p in method.model.parameters()]
    for step in (0, 60):  # one step before, one after ramp-up/annealing
        out = method.train_step(batch_l, batch_u, step)
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        assert all(math.isfinite(v) for v in out.logs.values())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_optimizer_step(step)
    moved = any(not torch.equal(a, b) for a, b in zip(before, method.model.parameters()))
    assert moved == (name != "prior_only")
    # what is scored (the method's own network, else the trainer's EMA of the student) has the RES forward contract
    kwargs = model_inputs(batch_l)
    logits = (method.eval_model() or method.model)(**kwargs)["logits"]
    assert logits.shape == batch_l["mask"].shape and torch.isfinite(logits).all()


def test_unlabelled_batch_with_mask_is_refused() -> None:
    batch_u = dict(make_batch(2, labelled=True, seed=3))
    with pytest.raises(DataError, match="mask"):
        check_unlabelled(batch_u, "l2l")
    method = build("fixmatch")
    with pytest.raises(DataError, match="unlabelled batch carries a 'mask'"):
        method.train_step(make_batch(2, seed=1), batch_u, 0)


def test_guarded_batch_really_guards() -> None:
    batch = make_batch(2, labelled=False)
    assert isinstance(batch, GuardedBatch) and "mask" not in batch
    with pytest.raises(AssertionError):
        batch.get("mask")


def test_ema_update_math_and_buffers() -> None:
    student = StandInModel()
    teacher = EMATeacher(student, momentum=0.9, warmup=False)
    t0 = [p.detach().clone() for p in teacher.module.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
        student.bn.running_mean.fill_(3.0)
    assert teacher.update(student, step=500) == pytest.approx(0.9)
    for t_old, t_new, s in zip(t0, teacher.module.parameters(), student.parameters()):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * s.detach())
    assert torch.equal(teacher.module.bn.running_mean, student.bn.running_mean)
    assert not any(p.requires_grad for p in teacher.module.parameters())
    warm = EMATeacher(student, momentum=0.999)
    assert warm.momentum_at(0) == 0.0 and warm.momentum_at(9) == pytest.approx(0.9)
    assert warm.momentum_at(10**6) == pytest.approx(0.999)


def test_candidate_label_anneals_from_prior_to_teacher() -> None:
    method = build("l2l", total_steps=100, alpha_start=0.3, alpha_end=0.8, alpha_anneal=0.5)
    assert method.alpha(0) == pytest.approx(0.3)
    assert method.alpha(25) == pytest.approx(0.55)
    assert method.alpha(50) == pytest.approx(0.8) and method.alpha(99) == pytest.approx(0.8)
    p = torch.tensor([1.0, 0.0, 0.9]).view(3, 1, 1, 1)  # teacher says fg, bg, fg
    q = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1)  # prior says bg, fg, (no prior)
    has = torch.tensor([True, True, False])
    _, early = candidate_label(p, q, has, method.alpha(0))
    _, late = candidate_label(p, q, has, method.alpha(99))
    assert early.flatten().tolist() == [False, True, True]  # the prior decides early; no prior -> teacher
    assert late.flatten().tolist() == [True, False, True]  # the teacher decides late


def test_rple_state_shape_and_box_features() -> None:
    b = make_batch(3, size=32)
    p = torch.rand(3, 1, 32, 32)
    state = build_state(p, b["proposal"], torch.rand(3, 1, 32, 32), p > 0.5, b["boxes"], b["prior_conf"],
                        b["has_proposal"], factor=4)
    assert state.shape == (3, len(STATE_CHANNELS), 8, 8)
    assert torch.isfinite(state).all()
    assert state[2, STATE_CHANNELS.index("prior_confidence")].abs().sum() == 0  # failed prior: no confidence
    inside, dist = box_features(torch.tensor([[4.0, 4.0, 12.0, 12.0]]), torch.tensor([True]), size=16, factor=4)
    # grid centres 2, 6, 10, 14: inside for 6 and 10
    assert inside[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert dist[0, 0, 1, 1] == pytest.approx(2.0 / 16) and dist[0, 0, 0, 0] == pytest.approx(-math.sqrt(8) / 16)


def test_rple_samples_k_masks() -> None:
    rple = RPLE(samples=5)
    masks = rple.sample(torch.full((2, 1, 4, 4), 0.5))
    assert masks.shape == (5, 2, 1, 4, 4) and set(masks.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("credit", ["pixel", "image"])
def test_group_advantage_has_zero_mean_over_samples(credit: str) -> None:
    reward = torch.randn(6, 3, 1, 4, 4)
    adv = group_advantage(reward, credit)
    assert adv.shape == reward.shape
    torch.testing.assert_close(adv.sum(dim=(2, 3, 4)).mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    if credit == "pixel":
        torch.testing.assert_close(adv.mean(0), torch.zeros(3, 1, 4, 4), atol=1e-5, rtol=0)
    assert group_advantage(torch.ones(4, 2, 1, 2, 2), credit).abs().max() == 0  # equal rewards: no signal


def test_label_reward_hand_case() -> None:
    yhat = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool).view(1, 1, 2, 2)
    gt = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool).view(1, 1, 2, 2)
    value = label_reward_map(yhat, gt, beta=2.0, factor=1)
    # right, wrong / right, wrong over N = 4 pixels
    assert value.flatten().tolist() == pytest.approx([0.25, -0.5, 0.25, -0.5])
    accept = torch.tensor([1.0, 1.0, 1.0, 0.0]).view(1, 1, 2, 2)  # TP = 2, FP = 1
    assert float((accept * value).sum()) == pytest.approx((2 - 2.0 * 1) / 4)
    pooled = label_reward_map(yhat, gt, beta=2.0, factor=2)  # one decision for the block: (2 - 2*2)/4
    assert pooled.flatten().tolist() == pytest.approx([-0.5])
    # balanced: 3 candidate-bg pixels and 1 candidate-fg pixel each carry half of the weight; signs unchanged
    yhat1 = torch.tensor([[1, 0], [0, 0]], dtype=torch.bool).view(1, 1, 2, 2)
    balanced = label_reward_map(yhat1, gt, beta=2.0, factor=1, balance=True).flatten()
    assert balanced.tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, -2 / 6])


@pytest.mark.parametrize("credit", ["pixel", "image"])
def test_policy_gradient_learns_to_accept_rewarded_pixels(credit: str) -> None:
    torch.manual_seed(0)
    rple = RPLE(factor=1, samples=8, lr=0.05, entropy_coef=0.0, init_accept=0.5, rule_init=False, credit=credit)
    good = (torch.rand(4, 1, 8, 8) > 0.5).float()
    state = torch.zeros(4, len(STATE_CHANNELS), 8, 8)
    state[:, 0] = good[:, 0]  # the signal is visible in the state
    value = (2 * good - 1) / 64.0  # +reward for accepting good pixels, -reward for bad ones
    rows = torch.ones(4, dtype=torch.bool)
    first, _ = rple.update(state, {"label": (value, 1.0, rows)})
    for _ in range(15):
        probs, logs = rple.update(state, {"label": (value, 1.0, rows)})
    gap0 = float(first[good > 0].mean() - first[good == 0].mean())
    gap = float(probs[good > 0].mean() - probs[good == 0].mean())
    assert abs(gap0) < 0.05 and gap > 0.3
    assert probs[good > 0].mean() > first[good > 0].mean()
    assert "rple/reward_label" in logs


def test_utility_reward_equals_the_explicit_gradient_inner_product() -> None:
    method = build("l2l", rple_factor=4)
    b_l, b_u = make_batch(2, seed=1), make_batch(2, labelled=False, seed=2)
    out_l, out_u = method.student_joined(b_l, b_u, b_u["pixel_values"])
    loss_l = method.seg_loss(out_l["logits"], b_l["mask"])
    z = out_u["logits"]
    yhat = torch.rand_like(z) > 0.5
    values = method.utility_values(loss_l, z, yhat)
    decisions = (torch.rand(2, 1, 8, 8) > 0.5).float()
    accept = F.interpolate(decisions, scale_factor=4, mode="nearest")
    loss_u = (F.binary_cross_entropy_with_logits(z, yhat.float(), reduction="none") * accept).mean()
    g_l = torch.autograd.grad(loss_l, method.head, retain_graph=True)
    g_u = torch.autograd.grad(loss_u, method.head, retain_graph=True)
    # the explicit reward sums over both images; mean BCE over B*N pixels is 1/B of the per-image mean
    explicit = -sum(float((a * b).sum()) for a, b in zip(g_l, g_u)) * 2
    assert float((decisions * values).sum()) == pytest.approx(explicit, rel=1e-3, abs=1e-9)


def test_l2l_logs_rple_diagnostics() -> None:
    method = build("l2l")
    logs = method.train_step(make_batch(3, seed=1), make_batch(4, labelled=False, seed=2), 10).logs
    for key in ("rple/reward_label", "rple/reward_utility", "rple/proxy_accept_rate", "rple/proxy_label_precision",
                "rple/proxy_fg_precision", "rple/proxy_fg_recall", "rple/accept_rate_u", "rple/entropy",
                "accept_rate", "alpha", "loss_sup", "loss_unsup"):
        assert key in logs, key


def test_l2l_no_sesm_asks_for_a_model_without_prior_input() -> None:
    assert METHODS["l2l_no_sesm"].model_overrides == {"use_sesm": False}
    assert METHODS["l2l"].model_overrides == {} and METHODS["l2l_no_rple"].model_overrides == {}
    method = build("l2l_no_sesm")
    assert method.use_proposals is False


def test_no_rple_accepts_by_fixed_threshold() -> None:
    method = build("l2l_no_rple", fixed_threshold=0.9)
    assert method.rple is None
    m = torch.tensor([0.95, 0.5, 0.05, 0.89]).view(4, 1, 1, 1)
    assert method.fixed_acceptance(m).flatten().tolist() == [True, False, True, False]


def _bank(tmp_path, batches):  # noqa: ANN001, ANN202 - test helper
    from l2l.proposals.bank import ProposalBank

    bank = ProposalBank(tmp_path / "bank", size=32, method="box")
    for batch in batches:
        for sid, q in zip(batch["sample_ids"], batch["proposal"]):
            bank.put(sid, q[0].numpy(), quality=1.0, confidence=0.8, key="k")
    return bank


def test_self_evolution_rewrites_the_bank_on_accepted_pixels(tmp_path) -> None:  # noqa: ANN001
    u_batches = [make_batch(3, labelled=False, seed=s, prefix="u") for s in (5, 6)]
    l_batches = [make_batch(2, seed=7, prefix="l")]
    bank = _bank(tmp_path, u_batches + l_batches)
    seen = []
    method = build("l2l", bank=bank, evolve_rounds=2, evolve_start=0.5, evolve_mu=0.5)
    with torch.no_grad():  # a policy that accepts some pixels and rejects others
        torch.nn.init.normal_(method.rple.policy.out.weight, std=3.0)
        method.rple.policy.out.bias.zero_()
        method.rple.policy.rule.weight.zero_()
        method.rple.policy.rule.bias.zero_()
    assert method.on_epoch_end(0, {"unlabelled_loader": u_batches, "step": 49}) == {}  # before the first round
    batch = u_batches[0]
    q_before = bank.get(batch["sample_ids"][0]).copy()
    with torch.no_grad():
        p = method.teacher_probs(batch)
        method.model.eval()
        student = torch.sigmoid(method.model(**method.inputs(batch))["logits"])
        method.model.train()
        m, yhat = candidate_label(p, batch["proposal"], batch["has_proposal"], method.alpha(method.total_steps))
        accept = method.acceptance(batch, p, student, m, yhat)
    first = batch["sample_ids"][0]
    logs = method.on_epoch_end(1, {"unlabelled_loader": u_batches, "proxy_loader": l_batches, "step": 50,
                                   "eval_pseudo": lambda b: seen.append(b) or {"mIoU": float(b.get(first).mean())}})
    # scored twice: the MLLM's proposals before the first write (round 0), then the evolved bank
    assert seen == [bank, bank]
    assert logs["evolve/hidden_before_mIoU"] == pytest.approx(float(q_before.mean()))
    assert logs["evolve/hidden_mIoU"] == pytest.approx(float(bank.get(first).mean()))
    for key in ("evolve/proxy_q_miou_before", "evolve/proxy_q_miou_after", "evolve/unlabelled_accept_rate"):
        assert key in logs
    acc = accept[0, 0].numpy()
    assert acc.any() and (~acc).any()
    expected = np.where(acc, 0.5 * q_before + 0.5 * p[0, 0].numpy(), q_before)
    np.testing.assert_allclose(bank.get(batch["sample_ids"][0]), expected, atol=1.5 / 255)
    assert len(method.history) == 1
    assert method.on_epoch_end(2, {"unlabelled_loader": u_batches, "step": 74}) == {}  # round 2 is due at 75
    assert method.evolve_due(75) and not method.evolve_due(74)


def test_no_evolve_leaves_the_bank_alone(tmp_path) -> None:  # noqa: ANN001
    u_batches = [make_batch(3, labelled=False, seed=5, prefix="u")]
    bank = _bank(tmp_path, u_batches)
    before = bank.get(u_batches[0]["sample_ids"][0]).copy()
    method = build("l2l_no_evolve", bank=bank, evolve_rounds=5, evolve_start=0.0)
    assert method.on_epoch_end(0, {"unlabelled_loader": u_batches, "step": 100}) == {}
    np.testing.assert_array_equal(bank.get(u_batches[0]["sample_ids"][0]), before)


def test_l2l_state_round_trip() -> None:
    a = build("l2l")
    a.train_step(make_batch(2, seed=1), make_batch(2, labelled=False, seed=2), 0)
    b = build("l2l")
    b.load_state_dict(a.state_dict())
    for pa, pb in zip(a.rple.policy.parameters(), b.rple.policy.parameters()):
        assert torch.equal(pa, pb)
    for pa, pb in zip(a.teacher.module.parameters(), b.teacher.module.parameters()):
        assert torch.equal(pa, pb)


def test_prior_only_predicts_the_thresholded_proposal() -> None:
    batch = make_batch(3)
    model = ProposalAsLogits(StandInModel())
    logits = model(**model_inputs(batch))["logits"]
    assert torch.equal(logits > 0, (batch["proposal"] > 0.5) & batch["has_proposal"].view(-1, 1, 1, 1))
    assert METHODS["prior_only"].uses_proposals_at_eval


def test_semires_pixel_weights() -> None:
    w = pixel_adjustment_weight(torch.tensor([0.5, 0.0, 1.0]))
    assert w.tolist() == pytest.approx([0.3, 1.3, 1.3], abs=1e-4)


def test_join_inputs_pads_texts() -> None:
    a, b = make_batch(2, tokens=4), make_batch(3, tokens=6, labelled=False)
    joined = join_inputs(model_inputs(a), model_inputs(b))
    assert joined["input_ids"].shape == (5, 6) and joined["attention_mask"][:2, 4:].sum() == 0
    assert joined["proposal"].shape[0] == 5 and joined["has_proposal"].dtype == torch.bool


def test_l2l_on_the_real_tiny_network() -> None:
    name = "l2l"
    from l2l.model import ModelConfig, RESModel

    torch.manual_seed(0)
    cfg = ModelConfig(vision="tiny", text="tiny", image_size=32, dim=16, decoder_dim=16,
                      **METHODS[name].model_overrides)
    model = RESModel(cfg)
    model.train()
    method = build_method(name, model, {}, 100)
    b_l, b_u = make_batch(2, size=32, seed=1), make_batch(2, size=32, labelled=False, seed=2)
    b_l["input_ids"] = b_l["input_ids"] + 1000
    b_u["input_ids"] = b_u["input_ids"] + 1000
    out = method.train_step(b_l, b_u, 0)
    assert torch.isfinite(out.loss) and "rple/reward_utility" in out.logs
    out.loss.backward()
    assert model.decoder.head.weight.grad is not None and model.refine.head.weight.grad is not None
    assert "loss_guide_l" in out.logs and "loss_guide_u" in out.logs


def test_rule_init_policy_accepts_agreement_and_rejects_conflict() -> None:
    rple = RPLE(factor=1, samples=2)
    state = torch.zeros(2, len(STATE_CHANNELS), 4, 4)
    state[1, STATE_CHANNELS.index("disagreement")] = 0.6  # teacher and proposal disagree
    state[1, STATE_CHANNELS.index("teacher_entropy")] = 0.9  # and the teacher is unsure
    accept = rple.greedy(state)
    assert bool(accept[0].all()) and not bool(accept[1].any())
