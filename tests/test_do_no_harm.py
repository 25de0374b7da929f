"""An untrained network given the MLLM's proposal *is* the prior-only baseline: training can only add to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.evaluation.evaluator import evaluate
from l2l.methods.losses import edit_term, sigmoid_ce
from l2l.methods.prior_only import ProposalAsLogits
from l2l.model import ModelConfig, RESModel
from l2l.model.modeling import prior_logits
from l2l.proposals import prepare_bank


@pytest.mark.parametrize("vision, fusion", [("tiny", "add"), ("efficientnet-lite0", "add"), ("tiny", "gate")])
def test_untrained_network_with_priors_scores_as_prior_only(root: Path, tmp_path: Path, one_thread: None,
                                                             vision: str, fusion: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(vision=vision, text="tiny", image_size=64, dim=16, decoder_dim=16, refine_dim=8,
                         pretrained=False, use_sesm=True, guidance_dropout=0.3, channels_last=False,
                         prior_fusion=fusion)
    model = RESModel(config).eval()
    data_id = DataId("shaperefs", "unc", "val")
    dataset = RESDataset(root, data_id)
    bank, _ = prepare_bank(root, data_id, method="gaussian", size=64, cache_dir=tmp_path, progress=False)
    processor = model.processor()
    net = evaluate(model, dataset, processor, bank=bank, use_priors=True, progress=False)
    prior = evaluate(ProposalAsLogits(model), dataset, processor, bank=bank, use_priors=True, progress=False)
    assert prior["mIoU"] > 20.0  # the proposals are informative, so equality is not "both empty"
    assert abs(net["mIoU"] - prior["mIoU"]) < 0.1
    assert abs(net["oIoU"] - prior["oIoU"]) < 0.1
    # and the same network without priors is an (almost) empty mask, not noise
    free = evaluate(model, dataset, processor, use_priors=False, progress=False)
    assert free["mIoU"] < 5.0


def test_edit_is_what_the_network_changed_of_the_proposal() -> None:
    torch.manual_seed(0)
    config = ModelConfig(vision="tiny", text="tiny", image_size=64, dim=16, decoder_dim=16, refine_dim=8,
                         pretrained=False, use_sesm=True, guidance_dropout=0.0, channels_last=False)
    model = RESModel(config).eval()
    pixels, ids = torch.randn(3, 3, 64, 64), torch.randint(1, 100, (3, 6))
    mask, q = torch.ones_like(ids), torch.rand(3, 1, 64, 64)
    has = torch.tensor([True, True, False])
    out = model(pixels, ids, mask, proposal=q, has_proposal=has)
    assert out["edit"].abs().max() < 1e-5  # untrained: the output is the proposal, nothing is edited
    with torch.no_grad():
        for p in model.decoder.prior_head.parameters():
            p.normal_(0.0, 0.5)
    out = model(pixels, ids, mask, proposal=q, has_proposal=has)
    expected = out["logits"][:2] - model.prior_out_scale * prior_logits(q[:2])
    assert out["edit"][:2].abs().mean() > 0.01
    assert torch.allclose(out["edit"][:2], expected, atol=1e-5)
    assert torch.equal(out["edit"][2], torch.zeros_like(out["edit"][2]))  # no proposal: nothing to edit
    assert not model(pixels, ids, mask)["edit"].any()  # no proposal given at all


def test_edit_price_moves_only_pixels_the_loss_pulls_harder_than_it() -> None:
    """Gradient descent on CE + `edit_term`: a pixel whose target differs from the proposal by less than the price
    stays on the proposal; one that differs by more moves toward its target and stops where the pull equals it."""
    prior = torch.zeros(200)  # the proposal says 0.5 everywhere
    target = torch.cat([torch.full((100,), 0.6), torch.full((100,), 0.95)])  # weak / strong disagreement
    finals = {}
    for price in (0.0, 0.3):
        edit = torch.zeros(200, requires_grad=True)
        opt = torch.optim.SGD([edit], lr=50.0)
        for _ in range(400):
            logits = (prior + edit).view(1, 1, 10, 20)
            logs: dict[str, float] = {}
            loss = sigmoid_ce(logits, target.view(1, 1, 10, 20)) + edit_term(
                [{"logits": logits, "edit": edit.view(1, 1, 10, 20)}], price, logs)
            opt.zero_grad()
            loss.backward()
            opt.step()
        finals[price] = torch.sigmoid(prior + edit.detach())
        assert logs["edit_abs"] > 0
    # without a price every pixel goes to its target
    assert torch.allclose(finals[0.0], target, atol=0.01)
    # with price 0.3: the weak disagreement (0.1 < 0.3) is left alone, the strong one (0.45) is followed to 0.3 short
    assert (finals[0.3][:100] - 0.5).abs().max() < 0.02
    assert torch.allclose(finals[0.3][100:], target[100:] - 0.3, atol=0.03)
