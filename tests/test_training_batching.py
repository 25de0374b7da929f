"""Losses, the supervised method, resumable sampling and the batch collator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from l2l.methods import METHODS, build_method
from l2l.methods.losses import ce_dice, dice_loss, sigmoid_ce
from l2l.training.batching import Collator, EpochSampler


def test_losses_respect_weights_and_are_zero_when_perfect() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50
    assert float(ce_dice(perfect, target)) < 1e-3
    wrong = -perfect
    assert float(sigmoid_ce(wrong, target)) > 10 and float(dice_loss(wrong, target)) > 0.9
    # Weight 0 removes pixels: a loss over only the correctly predicted half is ~0.
    logits = perfect.clone()
    logits[0] = -logits[0]
    weight = torch.zeros_like(target)
    weight[1] = 1
    assert float(ce_dice(logits, target, weight)) < 1e-3
    assert float(ce_dice(logits, target, torch.zeros_like(target))) == 0.0
    with pytest.raises(ValueError, match="shape"):
        sigmoid_ce(logits, target[:, :, :4])


def test_dice_gradient_flows_under_bf16_autocast() -> None:
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ce_dice(logits.bfloat16(), target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


class _FakeNet(torch.nn.Module):
    """Returns fixed logits and, when given a proposal, a `refined` map (as SESM does)."""

    def __init__(self, use_sesm: bool) -> None:
        super().__init__()
        self.config = type("C", (), {"use_sesm": use_sesm})()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values, input_ids, attention_mask, proposal=None, has_proposal=None):
        logits = pixel_values[:, :1] + self.bias
        refined = None if proposal is None else proposal * 4 - 2 + self.bias
        return {"logits": logits, "refined": refined}


def test_supervised_adds_guide_loss_only_with_sesm_and_proposals() -> None:
    batch = {"pixel_values": torch.randn(2, 3, 8, 8), "input_ids": torch.zeros(2, 4, dtype=torch.long),
             "attention_mask": torch.ones(2, 4, dtype=torch.long), "mask": (torch.rand(2, 1, 8, 8) > 0.5).float(),
             "proposal": torch.rand(2, 1, 8, 8), "has_proposal": torch.tensor([True, False])}
    with_sesm = build_method("supervised", _FakeNet(True), {"lambda_g": 0.5}, total_steps=10)
    out = with_sesm.train_step(batch, None, 0)
    assert "loss_guide" in out.logs
    assert out.loss.item() == pytest.approx(out.logs["loss_sup"] + 0.5 * out.logs["loss_guide"], rel=1e-5)
    out.loss.backward()
    without = build_method("supervised", _FakeNet(False), {}, total_steps=10).train_step(batch, None, 0)
    assert "loss_guide" not in without.logs
    assert METHODS["supervised"].needs_unlabelled is False


def test_sampler_is_a_function_of_seed_and_epoch_and_skips_exactly() -> None:
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert sorted(i for i, _ in full) == list(range(10))
    again = EpochSampler(10, seed=3)
    again.set_epoch(1)
    again.set_start(4)
    assert list(again) == full[4:]  # same indices and same augmentation seeds after a skip
    s.set_epoch(2)
    assert [i for i, _ in s] != [i for i, _ in full]
    # Two ranks cover the data (padded to equal length) without overlap except the padding.
    shards = [EpochSampler(9, seed=3, rank=r, world_size=2) for r in range(2)]
    got = [[i for i, _ in sh] for sh in shards]
    assert len(got[0]) == len(got[1]) == 5
    assert set(got[0]) | set(got[1]) == set(range(9))


@dataclass
class _Sample:
    sample_id: str
    image_id: int = 0


class _Processor:
    """A minimal stand-in with the Processor's interface (resizing by nearest neighbour)."""

    image_size = 8

    def _resize(self, a: np.ndarray) -> np.ndarray:
        ys = np.arange(8) * a.shape[0] // 8
        xs = np.arange(8) * a.shape[1] // 8
        return a[ys][:, xs]

    def images(self, images):
        return torch.from_numpy(np.stack([self._resize(i) for i in images])).permute(0, 3, 1, 2).float()

    def texts(self, texts):
        ids = torch.tensor([[len(t), int("left" in t), int("right" in t)] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def masks(self, masks):
        return torch.from_numpy(np.stack([self._resize(m) for m in masks])).float().unsqueeze(1)

    def maps(self, maps):
        return torch.from_numpy(np.stack([self._resize(m) for m in maps])).float().unsqueeze(1)

    def boxes(self, boxes, sizes):
        out = torch.zeros(len(boxes), 4)
        for i, (b, (h, w)) in enumerate(zip(boxes, sizes)):
            out[i] = torch.tensor([b[0] * 8 / w, b[1] * 8 / h, b[2] * 8 / w, b[3] * 8 / h])
        return out


class _Bank:
    def __init__(self, maps: dict[str, np.ndarray], failed: tuple[str, ...] = ()) -> None:
        self.maps, self.failed = maps, failed

    def get(self, sid: str) -> np.ndarray:
        return self.maps[sid]

    def has_prior(self, sid: str) -> bool:
        return sid not in self.failed


@dataclass
class _Prior:
    box: list[float] | None
    confidence: float
    status: str = "ok"


def _items(n: int) -> list[dict]:
    items = []
    for k in range(n):
        image = np.zeros((16, 16, 3), np.uint8)
        image[:, :4] = 255  # a bright stripe on the left
        mask = np.zeros((16, 16), bool)
        mask[:, :4] = True
        items.append({"sample": _Sample(f"{k}:0"), "image": image, "text": "the left bar", "mask": mask,
                      "index": k, "aug_seed": 1000 + k})
    return items


def test_collator_builds_the_contract_batch_and_flips_consistently() -> None:
    items = _items(8)
    left = np.zeros((8, 8), np.float32)
    left[:, :2] = 1
    bank = _Bank({f"{k}:0": left for k in range(7)})  # the last sample has no proposal
    priors = {"0:0": _Prior([0, 0, 4, 16], 0.9), "1:0": _Prior(None, 0.0, "failed")}
    plain = Collator(_Processor(), bank=bank, priors=priors, flip=False)(items)
    assert plain["pixel_values"].shape == (8, 3, 8, 8) and plain["mask"].shape == (8, 1, 8, 8)
    assert plain["sample_ids"][0] == "0:0" and plain["texts"][0] == "the left bar"
    assert plain["has_proposal"].tolist() == [True] * 7 + [False]
    assert plain["boxes"][0].tolist() == [0, 0, 2, 8] and plain["boxes"][1].tolist() == [0, 0, 8, 8]
    assert plain["prior_conf"][:2].tolist() == pytest.approx([0.9, 0.0])
    flipped = Collator(_Processor(), bank=bank, priors=priors, flip=True)(items)
    which = flipped["flipped"]
    assert 0 < int(which.sum()) < 8  # seeded coin per item
    for k in range(8):
        f = bool(which[k])
        side = "right" if f else "left"
        assert flipped["texts"][k] == f"the {side} bar"
        assert flipped["input_ids"][k, 2 if f else 1] == 1
        # image, mask and proposal move together
        col = 7 if f else 0
        assert flipped["mask"][k, 0, 0, col] == 1 and flipped["pixel_values"][k, 0, 0, col] == 255
        if k < 7:
            assert flipped["proposal"][k, 0, 0, col] == 1
    assert flipped["boxes"][0].tolist() == ([6, 0, 8, 8] if which[0] else [0, 0, 2, 8])
    again = Collator(_Processor(), bank=bank, priors=priors, flip=True)(items)
    assert torch.equal(again["flipped"], which)  # a function of aug_seed only


def test_collator_adds_the_evolving_label_proposal_beside_the_input_proposal() -> None:
    items = _items(4)
    left = np.zeros((8, 8), np.float32)
    left[:, :2] = 1
    evolved = np.zeros((8, 8), np.float32)
    evolved[:, :3] = 0.5
    inputs = _Bank({f"{k}:0": left for k in range(4)})
    labels = _Bank({f"{k}:0": evolved for k in range(3)})  # the last sample falls back to its input proposal
    batch = Collator(_Processor(), bank=inputs, flip=True, label_bank=labels)(items)
    which = batch["flipped"]
    for k in range(4):
        col = (lambda c: 7 - c) if which[k] else (lambda c: c)
        assert batch["proposal"][k, 0, 0, col(0)] == 1 and batch["proposal"][k, 0, 0, col(2)] == 0
        expected = 0.5 if k < 3 else 0.0  # column 2: evolved map vs the input map's background
        assert batch["label_proposal"][k, 0, 0, col(2)] == expected
    assert "label_proposal" not in Collator(_Processor(), bank=inputs)(items)


def test_a_failed_prior_is_no_proposal_not_an_empty_one() -> None:
    """The bank keeps an all-zero placeholder for a failed prior; as input it would say "nothing here", so the
    sample goes down the network's no-proposal path instead (its candidate label may still use the map)."""
    items = _items(3)
    left = np.zeros((8, 8), np.float32)
    left[:, :2] = 1
    bank = _Bank({"0:0": left, "1:0": np.zeros((8, 8), np.float32), "2:0": left}, failed=("1:0",))
    batch = Collator(_Processor(), bank=bank, label_bank=bank)(items)
    assert batch["has_proposal"].tolist() == [True, False, True]
    assert not batch["proposal"][1].any()
