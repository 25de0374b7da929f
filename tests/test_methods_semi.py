"""Semi-supervised methods: every method steps, EMA math, candidate labels, RPLE, self-evolution, D_u mask guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from l2l.errors import DataError
from l2l.methods import METHODS, build_method
from l2l.methods.l2l import candidate_label
from l2l.methods.prior_only import ProposalAsLogits
from l2l.methods.rple import (ACTIONS, REJECT, RPLE, STATE_FEATURES, BCESelector, action_labels, label_quality,
                              sample_state, with_reject)
from l2l.methods.semires import pixel_adjustment_weight
from l2l.methods.semi import check_unlabelled, join_inputs, model_inputs
from l2l.methods.teacher import EMATeacher
from methods_standin import GuardedBatch, StandInModel, make_batch



pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_sample_state_features() -> None:
    b = make_batch(3, size=32)
    p = b["proposal"].clone()  # a teacher that agrees with the proposal exactly
    state = sample_state(p, b["proposal"], b["boxes"], b["prior_conf"], b["has_proposal"], 0.25)
    assert state.shape == (3, len(STATE_FEATURES)) and torch.isfinite(state).all()
    col = {name: state[:, i] for i, name in enumerate(STATE_FEATURES)}
    assert col["iou_teacher_proposal"][:2].tolist() == [1.0, 1.0]
    assert col["prior_confidence"][2] == 0 and col["has_proposal"].tolist() == [1.0, 1.0, 0.0]  # failed prior
    assert col["teacher_in_box"][:2].tolist() == [1.0, 1.0]  # the proposal lies in its box
    assert col["progress"].tolist() == [0.25] * 3
    assert float(state.min()) >= 0.0 and float(state.max()) <= 1.0


def test_action_labels_and_their_quality_by_brute_force() -> None:
    gt = torch.zeros(1, 1, 4, 4)
    gt[..., :2, :2] = 1  # 4 px
    q = torch.zeros(1, 1, 4, 4)
    q[..., :2, :] = 0.9  # 8 px, covers gt: IoU 0.5
    p = gt * 0.8  # right: IoU 1
    labels = action_labels(p, q, alpha=0.5)
    assert labels.shape == (1, 3, 4, 4) and [ACTIONS[k] for k in range(3)] == ["proposal", "teacher", "mixture"]
    quality = label_quality(labels, gt)
    # mixture: 0.85 on gt, 0.45 beside it -> equals gt
    assert quality[0].tolist() == pytest.approx([0.5, 1.0, 1.0])
    assert with_reject(quality)[0, REJECT] == 0


def test_rple_learns_which_source_each_sample_should_trust() -> None:
    torch.manual_seed(0)
    rple = RPLE(samples=8, lr=0.03, entropy_coef=0.0, seed=0)
    n = 64
    state = torch.zeros(n, len(STATE_FEATURES))
    best = torch.randint(0, 3, (n,))
    state[torch.arange(n), best] = 1.0  # the state reveals which source is right for this sample
    reward = torch.full((n, 4), -0.4)
    reward[torch.arange(n), best] = 0.5
    reward[:, REJECT] = 0.0
    start = (rple.decide(state) == best).float().mean()
    for _ in range(150):
        logs = rple.update(state, reward)
    assert float(start) < 0.5 and float((rple.decide(state) == best).float().mean()) > 0.9
    # and with every source bad it learns to reject
    rple = RPLE(samples=8, lr=0.03, entropy_coef=0.0, seed=1)
    for _ in range(100):
        rple.update(state, torch.tensor([[-0.3, -0.3, -0.3, 0.0]]).expand(n, 4))
    assert bool((rple.decide(state) == REJECT).all()) and "rple/prob_reject" in logs


def test_bce_selector_learns_correctness_and_rejects_when_nothing_is_right() -> None:
    torch.manual_seed(0)
    sel = BCESelector(lr=0.03, seed=0)
    n = 64
    state = torch.zeros(n, len(STATE_FEATURES))
    state[:, 0] = (torch.arange(n) % 2).float()
    good = torch.zeros(n, 3)
    good[::2, 1] = 1.0  # even rows: only the teacher is right; odd rows: nothing is
    for _ in range(200):
        sel.update(state, good)
    decided = sel.decide(state)
    assert bool((decided[::2] == ACTIONS.index("teacher")).all()) and bool((decided[1::2] == REJECT).all())


def test_utility_sign_matches_a_real_optimiser_step() -> None:
    """`utility_values` claims: a step of size lr on a sample's label lowers the labelled loss by lr * value."""
    method = build("l2l")
    model = method.model.eval()  # no BatchNorm coupling between the two forwards
    b_l, b_u = make_batch(3, seed=1), make_batch(3, labelled=False, seed=2)
    gt = b_l["mask"]
    out_l = model(**model_inputs(b_l))
    logits_u = model(**model_inputs(b_u))["logits"]
    loss_l = method.seg_loss(out_l["logits"], gt)
    g = torch.Generator().manual_seed(3)
    labels = torch.cat([b_u["proposal"], torch.rand(3, 1, 32, 32, generator=g),
                        1.0 - b_u["proposal"]], dim=1)  # a plausible, a random and an inverted label
    predicted = method.utility_values(loss_l, logits_u, labels)
    assert predicted.shape == (3, 3)
    lr = 1e-3
    grads = {(b, a): torch.autograd.grad(method.seg_loss(logits_u[b : b + 1], labels[b : b + 1, a : a + 1]),
                                         method.head, retain_graph=True) for b in range(3) for a in range(3)}
    base = float(loss_l.detach())
    actual = torch.zeros(3, 3)
    with torch.no_grad():
        for (b, a), step in grads.items():
            for prm, gr in zip(method.head, step):
                prm -= lr * gr
            after = float(method.seg_loss(model(**model_inputs(b_l))["logits"], gt))
            for prm, gr in zip(method.head, step):
                prm += lr * gr
            actual[b, a] = (base - after) / lr  # positive: the step lowered the labelled loss
    assert bool((torch.sign(predicted) == torch.sign(actual)).all())
    assert torch.corrcoef(torch.stack([predicted.flatten(), actual.flatten()]))[0, 1] > 0.99
    assert bool((predicted[:, 2] < 0).all())  # the inverted label hurts; the proposal-like one helps more
    assert bool((predicted[:, 0] > predicted[:, 2]).all())


def test_utility_is_taken_at_the_refine_heads_output_conv() -> None:
    from l2l.methods.l2l import utility_parameters
    from l2l.model import ModelConfig, RESModel

    net = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=32, dim=16, decoder_dim=16, pretrained=False))
    params = utility_parameters(net)
    assert [id(p) for p in params] == [id(p) for p in net.refine.head.parameters()]
    no_refine = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=32, dim=16, decoder_dim=16,
                                     pretrained=False, refine_dim=0))
    assert any(p is no_refine.decoder.prior_head.weight for p in utility_parameters(no_refine))


def test_l2l_logs_rple_diagnostics() -> None:
    method = build("l2l", proxy_folds=1)
    logs = method.train_step(make_batch(3, seed=1), make_batch(4, labelled=False, seed=2), 10).logs
    for key in ("rple/sampled_reward", "rple/proxy_best_iou", "rple/proxy_accept_rate", "rple/proxy_accepted_iou",
                "rple/proxy_precision", "rple/proxy_recall", "rple/utility_positive", "rple/entropy",
                "rple/chose_teacher", "rple/chose_reject", "accept_rate", "alpha", "loss_sup", "loss_unsup"):
        assert key in logs, key


def test_proxy_fold_is_held_out_of_the_supervised_loss_in_rotation() -> None:
    method = build("l2l", total_steps=80, proxy_folds=4)
    batch = make_batch(8, seed=0)  # image ids 0..7: two per fold
    seen = [method.proxy_rows(batch, step) for step in range(0, 80, 10)]  # period 80 // 8 = 10 steps
    assert all(int(rows.sum()) == 2 for rows in seen)
    assert len({tuple(r.tolist()) for r in seen}) == 4  # every fold takes its turn
    # a held-out row's mask does not reach the loss
    step = 0
    rows = method.proxy_rows(batch, step)
    changed = dict(batch)
    changed["mask"] = batch["mask"].clone()
    changed["mask"][rows] = 1.0 - changed["mask"][rows]
    torch.manual_seed(0)
    a = method.supervised_weighted(method.model(**model_inputs(batch)), batch, (~rows).float().view(-1, 1, 1, 1))[0]
    b = method.supervised_weighted(method.model(**model_inputs(batch)), changed, (~rows).float().view(-1, 1, 1, 1))[0]
    assert float(a.detach()) == pytest.approx(float(b.detach()))


def test_l2l_no_sesm_asks_for_a_model_without_prior_input() -> None:
    assert METHODS["l2l_no_sesm"].model_overrides == {"use_sesm": False}
    assert METHODS["l2l"].model_overrides == {} and METHODS["l2l_no_rple"].model_overrides == {}
    method = build("l2l_no_sesm")
    assert method.use_proposals is False


def test_no_rple_keeps_confident_mixture_pixels() -> None:
    method = build("l2l_no_rple", fixed_threshold=0.9, alpha_start=0.5, alpha_end=0.5)
    assert method.rple is None
    batch = make_batch(2, seed=1)
    p = torch.full_like(batch["proposal"], 1.0)
    batch["proposal"] = torch.zeros_like(p)
    batch["proposal"][0, 0, :, :16] = 1.0  # left half agrees with the teacher, right half does not
    decisions = method.decide(batch, p, 0)
    target, weight = method.pseudo_labels(batch, p, decisions, 0)
    assert bool((weight[0, 0, :, :16] == 1).all()) and bool((weight[0, 0, :, 16:] == 0).all())
    assert bool((weight[1] == 0).all())  # its prior failed


@pytest.mark.parametrize("every_source", [False, True])
def test_the_pixel_mask_reaches_the_policys_label_only_when_asked(every_source: bool) -> None:
    method = build("l2l", alpha_start=0.5, alpha_end=0.5, threshold_every_source=every_source)
    _force(method, "mixture")
    batch = make_batch(2, seed=1)
    p = torch.full_like(batch["proposal"], 1.0)
    batch["proposal"] = torch.zeros_like(p)
    batch["proposal"][:, 0, :, :16] = 1.0  # the mixture is sure on the left half (1.0), unsure on the right (0.5)
    batch["has_proposal"] = torch.ones_like(batch["has_proposal"])
    target, weight = method.pseudo_labels(batch, p, method.decide(batch, p, 0), 0)
    assert bool((weight[:, 0, :, :16] == 1).all())
    assert bool((weight[:, 0, :, 16:] == (0 if every_source else 1)).all())


def _bank(tmp_path, batches):  # noqa: ANN001, ANN202 - test helper
    from l2l.proposals.bank import ProposalBank

    bank = ProposalBank(tmp_path / "bank", size=32, method="box")
    for batch in batches:
        for sid, q in zip(batch["sample_ids"], batch["proposal"]):
            bank.put(sid, q[0].numpy(), quality=1.0, confidence=0.8, key="k")
    return bank


def _force(method, action: str) -> None:  # noqa: ANN001 - test helper
    with torch.no_grad():
        method.rple.policy.out.weight.zero_()
        method.rple.policy.out.bias.fill_(-5.0)
        method.rple.policy.out.bias[ACTIONS.index(action)] = 5.0


def test_self_evolution_writes_the_chosen_label_when_the_proxy_set_agrees(tmp_path) -> None:  # noqa: ANN001
    u_batches = [make_batch(3, labelled=False, seed=s, prefix="u") for s in (5, 6)]
    l_batches = [make_batch(2, seed=7, prefix="l")]
    bank = _bank(tmp_path, u_batches + l_batches)
    # two proxy sentences cannot clear a noise margin: evolve_z=0 here, the margin has its own test below
    method = build("l2l", bank=bank, evolve_rounds=2, evolve_start=0.5, evolve_mu=1.0, evolve_z=0.0)
    _force(method, "teacher")
    context = {"unlabelled_loader": u_batches, "proxy_loader": l_batches}
    assert method.on_epoch_end(0, {**context, "step": 49}) == {}  # before the first round
    first = u_batches[0]["sample_ids"][0]
    q_before = bank.get(first).copy()
    with torch.no_grad():
        p = method.teacher_probs(u_batches[0])[0, 0].numpy()
    # a teacher that beats the proposal on the proxy set: make the proposals there worse than useless
    for sid in l_batches[0]["sample_ids"]:
        bank.update(sid, np.zeros((32, 32), np.float32), np.ones((32, 32), bool), 1.0)
    l_batches[0]["proposal"] = torch.zeros_like(l_batches[0]["proposal"])
    with torch.no_grad():
        torch.nn.init.constant_(method.model.decoder.head.bias, 5.0)  # the teacher says "everything"
        method.teacher.reset(method.model)
        p = method.teacher_probs(u_batches[0])[0, 0].numpy()
    logs = method.on_epoch_end(1, {**context, "step": 50})
    assert logs["evolve/written"] == 1.0 and logs["evolve/proxy_q_miou_after"] > logs["evolve/proxy_q_miou_before"]
    assert not np.allclose(q_before, p, atol=0.05)
    np.testing.assert_allclose(bank.get(first), p, atol=1.5 / 255)
    assert "evolve/hidden_mIoU" not in logs  # the hidden-mask scorer is the trainer's, never the method's
    assert method.on_epoch_end(2, {**context, "step": 74}) == {}  # round 2 is due at 75
    assert method.evolve_due(75) and not method.evolve_due(74)


def test_self_evolution_writes_nothing_when_it_would_spoil_the_proxy_labels(tmp_path) -> None:  # noqa: ANN001
    u_batches = [make_batch(3, labelled=False, seed=5, prefix="u")]
    l_batches = [make_batch(2, seed=7, prefix="l")]
    bank = _bank(tmp_path, u_batches + l_batches)
    method = build("l2l", bank=bank, evolve_rounds=1, evolve_start=0.0)
    _force(method, "teacher")
    with torch.no_grad():  # a teacher that says "nothing": worse than the proposals on the proxy set
        torch.nn.init.constant_(method.model.decoder.head.bias, -8.0)
        method.teacher.reset(method.model)
    before = {sid: bank.get(sid).copy() for sid in u_batches[0]["sample_ids"]}
    logs = method.on_epoch_end(0, {"unlabelled_loader": u_batches, "proxy_loader": l_batches, "step": 0})
    assert logs["evolve/written"] == 0.0
    assert logs["evolve/proxy_q_miou_after"] < logs["evolve/proxy_q_miou_before"]
    for sid, q in before.items():
        np.testing.assert_array_equal(bank.get(sid), q)


@pytest.mark.parametrize("gains, written", [
    ([0.30, -0.20, 0.25, -0.15, 0.10, -0.05], 0.0),  # mean +0.04 on six sentences: noise, the bank stays
    ([0.05, 0.04, 0.06, 0.05, 0.03, 0.05], 1.0),     # the same size, every sentence gains: written
])
def test_self_evolution_writes_only_a_gain_beyond_the_proxy_noise(tmp_path, gains, written) -> None:  # noqa: ANN001
    u_batches = [make_batch(3, labelled=False, seed=5, prefix="u")]
    bank = _bank(tmp_path, u_batches)
    method = build("l2l", bank=bank, evolve_rounds=1, evolve_start=0.0)
    proxy = {f"l{i}": {"written": False, "rank": 0, "before": 0.5, "after": 0.5 + g} for i, g in enumerate(gains)}
    unlabelled = {sid: {"written": True, "rank": 0} for sid in u_batches[0]["sample_ids"]}
    label = (torch.ones(32, 32), torch.ones(32, 32, dtype=torch.bool))
    method._evolve = lambda loader, device, step, labelled: (  # noqa: E731 - the outcomes under test
        (proxy, {}) if labelled else (unlabelled, {sid: label for sid in unlabelled}))
    before = {sid: bank.get(sid).copy() for sid in unlabelled}
    logs = method.on_epoch_end(0, {"unlabelled_loader": u_batches, "proxy_loader": [], "step": 0})
    assert logs["evolve/proxy_gain"] > 0 and logs["evolve/written"] == written
    changed = any(not np.array_equal(bank.get(sid), q) for sid, q in before.items())
    assert changed == bool(written)


def test_no_evolve_leaves_the_bank_alone(tmp_path) -> None:  # noqa: ANN001
    u_batches = [make_batch(3, labelled=False, seed=5, prefix="u")]
    bank = _bank(tmp_path, u_batches)
    before = bank.get(u_batches[0]["sample_ids"][0]).copy()
    method = build("l2l_no_evolve", bank=bank, evolve_rounds=5, evolve_start=0.0)
    assert method.on_epoch_end(0, {"unlabelled_loader": u_batches, "step": 100}) == {}
    np.testing.assert_array_equal(bank.get(u_batches[0]["sample_ids"][0]), before)


@pytest.mark.parametrize("name", ["l2l", "l2l_classifier"])
def test_l2l_state_round_trip(name: str) -> None:
    a = build(name, proxy_folds=1)
    a.train_step(make_batch(2, seed=1), make_batch(2, labelled=False, seed=2), 0)
    b = build(name, proxy_folds=1)
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
    from l2l.model import ModelConfig, RESModel

    torch.manual_seed(0)
    model = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=32, dim=16, decoder_dim=16, pretrained=False))
    model.train()
    method = build_method("l2l", model, {"proxy_folds": 1}, 100)
    b_l, b_u = make_batch(2, size=32, seed=1), make_batch(2, size=32, labelled=False, seed=2)
    b_l["input_ids"] = b_l["input_ids"] + 1000
    b_u["input_ids"] = b_u["input_ids"] + 1000
    out = method.train_step(b_l, b_u, 0)
    assert torch.isfinite(out.loss) and "rple/utility_positive" in out.logs
    out.loss.backward()
    assert model.decoder.head.weight.grad is not None and model.refine.head.weight.grad is not None
    assert "loss_guide_l" in out.logs


@pytest.mark.parametrize(("dice", "settles_at_target"), [(0.0, True), (1.0, False)])
def test_soft_pseudo_label_loss_settles_at_its_target_only_without_dice(dice: float, settles_at_target: bool) -> None:
    """Gradient descent on free logits toward a soft proposal (a blurred disc): soft BCE alone recovers the
    proposal's soft edge; with soft Dice the edge is sharpened away from it (why `pseudo_dice_weight` exists)."""
    from l2l.methods.losses import pseudo_label_loss

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    radius = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2).sqrt()
    target = torch.sigmoid((8.0 - radius) / 1.5).view(1, 1, 32, 32)
    logits = torch.zeros_like(target, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(1500):
        opt.zero_grad()
        pseudo_label_loss(logits, target, torch.ones_like(target), dice_weight=dice).backward()
        opt.step()
    gap = (torch.sigmoid(logits) - target).abs().max().item()
    assert (gap < 0.02) == settles_at_target, gap
