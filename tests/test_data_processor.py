"""Processor: shapes, normalisation, tokenisation, interpolation per input kind, upsampling back."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from l2l.data.processor import IMAGENET_MEAN, IMAGENET_STD, Processor, tokenizer_source
from l2l.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def proc() -> Processor:
    return Processor.from_text_encoder("minilm", image_size=32, max_tokens=8)


def test_images_are_squashed_and_normalised(proc: Processor) -> None:
    a = np.full((20, 50, 3), 255, np.uint8)
    b = np.zeros((64, 16, 3), np.uint8)
    b[..., 0] = 124  # about the ImageNet red mean
    x = proc.images([a, b])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    expected_white = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 5, 5], expected_white)
    assert abs(float(x[1, 0].mean())) < 0.02
    torch.testing.assert_close(proc.denormalize(x)[0], torch.ones(3, 32, 32))


def test_texts_pad_and_truncate(proc: Processor) -> None:
    enc = proc.texts(["the man on the left", "a very long sentence " * 10])
    assert set(enc) == {"input_ids", "attention_mask"}
    assert enc["input_ids"].shape == (2, 8) and enc["input_ids"].dtype == torch.long
    assert enc["attention_mask"][0].tolist() == [1] * 7 + [0]  # [CLS] 5 words [SEP] pad
    assert enc["attention_mask"][1].tolist() == [1] * 8
    assert enc["input_ids"][1, -1].item() == proc.tokenizer.sep_token_id
    assert proc.tokenizer.decode(enc["input_ids"][0], skip_special_tokens=True) == "the man on the left"


def test_tiny_uses_the_same_tokenizer_and_default_max_tokens() -> None:
    p = Processor.from_text_encoder("tiny", image_size=16)
    assert p.max_tokens == 20 and p.texts(["x"])["input_ids"].shape == (1, 20)
    assert tokenizer_source("tiny") == tokenizer_source("minilm")
    assert tokenizer_source("hf:/some/dir") == "/some/dir"
    with pytest.raises(ConfigError):
        tokenizer_source("clip")


def test_masks_are_centre_aligned_area_fractions_and_maps_stay_soft(proc: Processor) -> None:
    m = np.zeros((64, 64), bool)
    m[:, :32] = True
    out = proc.masks([m])  # 64 -> 32: every target pixel covers 2x2 source pixels
    assert out.shape == (1, 1, 32, 32)
    assert out[0, 0, :, :16].eq(1).all() and out[0, 0, :, 16:].eq(0).all()
    # An edge between source pixels 46 and 47 cuts target column 23 in half: a soft target, not a coin flip.
    m = np.zeros((64, 64), bool)
    m[20:47, 20:47] = True
    out = proc.masks([m])[0, 0]
    torch.testing.assert_close(out[15, 23], torch.tensor(0.5))
    torch.testing.assert_close(out[23, 15], torch.tensor(0.5))
    # No shift: the target's centre of mass is the object's, in target pixels (OpenCV's nearest moves it).
    ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")
    cy, cx = float((out * ys).sum() / out.sum()), float((out * xs).sum() / out.sum())
    assert abs(cy - 33.5 / 2) < 0.05 and abs(cx - 33.5 / 2) < 0.05  # nearest: 17.0
    soft = np.tile(np.linspace(0, 1, 10, dtype=np.float32), (10, 1))
    s = proc.maps([soft])
    assert s.shape == (1, 1, 32, 32) and 0.0 <= s.min() and s.max() <= 1.0
    assert len(s.unique()) > 10  # interpolated, not nearest


def test_a_perfectly_fitted_target_scores_high_at_the_original_size() -> None:
    """Small objects at a 1.5x downscale (ShapeRefs at 128 px): the target upsampled back, as `l2l eval` scores a
    prediction, must keep the object; the binary nearest-neighbour target lost about an eighth of it."""
    proc = Processor(128, tokenizer=None)
    rng = np.random.default_rng(0)
    ious = []
    for _ in range(40):
        m = np.zeros((190, 190), np.uint8)
        cx, cy, r = rng.uniform(30, 160), rng.uniform(30, 160), rng.uniform(6, 14)
        cv2.circle(m, (int(cx), int(cy)), int(r), 1, thickness=-1)
        mask = m.astype(bool)
        up = Processor.upsample_logits(proc.masks([mask]) - 0.5, mask.shape)[0, 0] > 0
        ious.append(float((up.numpy() & mask).sum() / (up.numpy() | mask).sum()))
    assert np.mean(ious) > 0.95, np.mean(ious)


def test_boxes_scale_to_resized_pixels(proc: Processor) -> None:
    b = proc.boxes([[10, 5, 50, 20]], [(40, 100)])  # (H, W)
    torch.testing.assert_close(b, torch.tensor([[3.2, 4.0, 16.0, 16.0]]))


def test_upsample_logits_back_to_original_size() -> None:
    logits = torch.zeros(1, 8, 8)
    logits[:, :, 4:] = 5.0
    up = Processor.upsample_logits(logits, (30, 50))
    assert up.shape == (1, 30, 50)
    assert (up[0, :, :20] < 0.1).all() and (up[0, :, 30:] > 4.9).all()
    assert Processor.upsample_logits(torch.zeros(3, 1, 8, 8), (5, 7)).shape == (3, 1, 5, 7)
    with pytest.raises(InputError):
        Processor.upsample_logits(torch.zeros(8, 8), (5, 5))


def test_bad_image_is_an_input_error(proc: Processor) -> None:
    with pytest.raises(InputError, match="image 0"):
        proc.images([np.zeros((4, 4), np.uint8)])
