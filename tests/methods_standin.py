"""A tiny stand-in for `RESModel` (same forward contract, a `decoder.head`, a BN buffer) and batch factories.

Methods tests use it so they run in milliseconds and do not depend on the real network's internals.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class StandInModel(nn.Module):
    """Image + proposal conv features modulated by a bag-of-words text vector; logits at half res, upsampled."""

    def __init__(self, use_sesm: bool = True, width: int = 8, vocab: int = 50) -> None:
        super().__init__()
        self.config = SimpleNamespace(use_sesm=use_sesm)
        self.embed = nn.Embedding(vocab, width)
        self.stem = nn.Conv2d(4, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.decoder = nn.Module()
        self.decoder.head = nn.Conv2d(width, 1, 1)
        self.sesm_out = nn.Conv2d(width, 1, 1) if use_sesm else None

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                proposal: torch.Tensor | None = None, has_proposal: torch.Tensor | None = None) -> dict[str, Any]:
        b, _, h, w = pixel_values.shape
        q = proposal if (proposal is not None and self.sesm_out is not None) else pixel_values.new_zeros(b, 1, h, w)
        if has_proposal is not None:
            q = q * has_proposal.float().view(-1, 1, 1, 1)
        m = attention_mask.float().unsqueeze(-1)
        text = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp_min(1.0)
        x = F.relu(self.bn(self.stem(torch.cat([pixel_values, q], 1)))) * (1 + text[:, :, None, None])
        x = F.avg_pool2d(x, 2)
        logits = F.interpolate(self.decoder.head(x), size=(h, w), mode="bilinear", align_corners=False)
        refined = None
        if self.sesm_out is not None:
            refined = F.interpolate(self.sesm_out(x), size=(h, w), mode="bilinear", align_corners=False)
        # as RESModel: what the output changed of the proposal's logits, 0 for rows without one
        use = q.new_ones(b) if has_proposal is None else has_proposal.float()
        edit = None if proposal is None else (logits - torch.logit(q.clamp(1e-4, 1 - 1e-4))) * use.view(-1, 1, 1, 1)
        return {"logits": logits, "refined": refined, "edit": edit}


class GuardedBatch(dict):
    """An unlabelled batch that fails the test if any code asks it for a mask."""

    def __getitem__(self, key: str) -> Any:
        if key == "mask":
            raise AssertionError("a method read 'mask' from the unlabelled batch")
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key == "mask":
            raise AssertionError("a method read 'mask' from the unlabelled batch")
        return super().get(key, default)


def make_batch(b: int = 3, size: int = 32, labelled: bool = True, seed: int = 0, tokens: int = 6,
               prefix: str = "s") -> dict[str, Any]:
    """A batch per docs/architecture.md "Methods contract": rectangle objects, jittered proposals, one failed prior."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(b, 1, size, size)
    proposals = torch.zeros(b, 1, size, size)
    boxes = torch.zeros(b, 4)
    for i in range(b):
        x1, y1 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        x2, y2 = x1 + size // 3, y1 + size // 3
        masks[i, 0, y1:y2, x1:x2] = 1.0
        proposals[i, 0, max(0, y1 - 2):y2 + 1, max(0, x1 - 1):x2 + 2] = 0.8
        boxes[i] = torch.tensor([x1 - 1.0, y1 - 2.0, x2 + 2.0, y2 + 1.0])
    has = torch.ones(b, dtype=torch.bool)
    has[-1] = False
    proposals[-1] = 0.0
    boxes[-1] = float("nan")
    batch: dict[str, Any] = {
        "pixel_values": torch.randn(b, 3, size, size, generator=g) + 2.0 * masks,
        "input_ids": torch.randint(1, 50, (b, tokens), generator=g),
        "attention_mask": torch.ones(b, tokens, dtype=torch.long),
        "sample_ids": [f"{prefix}{seed}_{i}:0" for i in range(b)],
        "image_ids": torch.arange(b) + 100 * seed,
        "texts": [f"object {i}" for i in range(b)],
        "boxes": boxes,
        "prior_conf": torch.where(has, torch.full((b,), 0.8), torch.zeros(b)),
        "proposal": proposals,
        "has_proposal": has,
        # class-agnostic candidates (SemiRES): the object itself and a distractor square; one image has only one
        "candidates": torch.stack([masks[:, 0] * 0.9, torch.roll(masks[:, 0], size // 2, -1) * 0.9], 1),
        "candidate_valid": torch.tensor([[True, i > 0] for i in range(b)]),
    }
    if labelled:
        batch["mask"] = masks
        return batch
    return GuardedBatch(batch)
