"""An untrained network given the MLLM's proposal *is* the prior-only baseline: training can only add to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.evaluation.evaluator import evaluate
from l2l.methods.prior_only import ProposalAsLogits
from l2l.model import ModelConfig, RESModel
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
