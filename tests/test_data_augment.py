"""Flip with left/right text swap, and the geometry-preserving strong view."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2l.data.augment import flip_text, hflip, strong_photometric, weak_view


@pytest.mark.parametrize(
    ("text", "flipped"),
    [
        ("man on the left", "man on the right"),
        ("Left dog, right cat.", "Right dog, left cat."),
        ("the leftmost one", "the rightmost one"),
        ("RIGHTMOST guy", "LEFTMOST guy"),
        ("left-most chair and right-hand side", "right-most chair and left-hand side"),
        ("his lefthand glove", "his righthand glove"),
        ("leftover pizza in bright light", "leftover pizza in bright light"),
        ("copyright righteous", "copyright righteous"),
        ("second from left", "second from right"),
    ],
)
def test_flip_text_cases(text: str, flipped: str) -> None:
    assert flip_text(text) == flipped


_WORDS = ["left", "right", "leftmost", "rightmost", "left-hand", "the", "bright", "leftover", "man", ",", "Left"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_WORDS), max_size=12))
def test_flip_text_round_trip(words: list[str]) -> None:
    text = " ".join(words)
    assert flip_text(flip_text(text)) == text


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(2, 3, 4, 6, generator=g),
        "mask": (torch.rand(2, 1, 4, 6, generator=g) > 0.5).float(),
        "proposal": torch.rand(2, 1, 4, 6, generator=g),
        "boxes": torch.tensor([[1.0, 0.0, 2.0, 3.0], [0.0, 1.0, 6.0, 2.0]]),
        "texts": ["the left one", "right of the cat"],
        "sample_ids": ["1:1", "2:2"],
    }


def test_hflip_flips_every_spatial_tensor_boxes_and_texts() -> None:
    b = _batch()
    f = hflip(b)
    for key in ("pixel_values", "mask", "proposal"):
        torch.testing.assert_close(f[key], b[key].flip(-1))
    torch.testing.assert_close(f["boxes"], torch.tensor([[4.0, 0.0, 5.0, 3.0], [0.0, 1.0, 6.0, 2.0]]))
    assert f["texts"] == ["the right one", "left of the cat"]
    assert f["sample_ids"] == b["sample_ids"]
    back = hflip(f)
    for key in ("pixel_values", "mask", "proposal", "boxes"):
        torch.testing.assert_close(back[key], b[key])
    assert back["texts"] == b["texts"]


def test_hflip_only_chosen_samples_and_retokenises() -> None:
    b = _batch()
    b["input_ids"] = torch.zeros(2, 3, dtype=torch.long)
    b["attention_mask"] = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="tokenize"):
        hflip(b, torch.tensor([True, False]))

    def tok(texts):
        return {"input_ids": torch.tensor([[len(t), 0, 0] for t in texts]),
                "attention_mask": torch.ones(len(texts), 3, dtype=torch.long)}

    f = hflip(b, torch.tensor([True, False]), tok)
    torch.testing.assert_close(f["pixel_values"][0], b["pixel_values"][0].flip(-1))
    torch.testing.assert_close(f["pixel_values"][1], b["pixel_values"][1])
    assert f["texts"] == ["the right one", "right of the cat"]
    assert f["input_ids"][:, 0].tolist() == [len("the right one"), len("right of the cat")]


def test_weak_view_is_seeded() -> None:
    b = _batch()
    a1 = weak_view(b, torch.Generator().manual_seed(5))
    a2 = weak_view(b, torch.Generator().manual_seed(5))
    assert a1["texts"] == a2["texts"]
    torch.testing.assert_close(a1["pixel_values"], a2["pixel_values"])


def test_strong_view_keeps_geometry_and_input() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 24, 24, generator=g)
    x0 = x.clone()
    y = strong_photometric(x, torch.Generator().manual_seed(1), blur_prob=1.0, cutout_prob=1.0)
    assert y.shape == x.shape and torch.isfinite(y).all()
    torch.testing.assert_close(x, x0)  # input untouched
    assert not torch.allclose(y, x)
    assert ((y[:, :, :, :] == 0).all(dim=1)).flatten(1).any(dim=1).all()  # a cutout filled with the mean colour
    y2 = strong_photometric(x, torch.Generator().manual_seed(1), blur_prob=1.0, cutout_prob=1.0)
    torch.testing.assert_close(y, y2)  # deterministic for a generator state
    # photometric only: a left-half-bright image stays brighter on the left (no flip, no shift)
    z = torch.full((1, 3, 24, 24), -1.5)
    z[..., :12] = 1.5
    s = strong_photometric(z, torch.Generator().manual_seed(2), cutout_prob=0.0)
    assert s[..., :10].mean() > s[..., 14:].mean()
