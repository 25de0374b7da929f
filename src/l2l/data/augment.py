"""Augmentations for semi-supervised training.

A horizontal flip changes the meaning of "the man on the left", so every flip swaps left/right words
in the sentence with the pixels. The strong view is photometric only (colour jitter, blur, cutout):
its geometry equals the weak view's, so a teacher prediction on the weak view is a pixel-aligned
target for the student on the strong view.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from l2l.data.processor import IMAGENET_MEAN, IMAGENET_STD

# "left"/"right" alone or with a suffix that keeps the direction (leftmost, left-hand, rightwards, ...).
# The word boundaries keep "leftover", "bright" and "righteous" as they are.
_SIDE_WORD = re.compile(r"\b(left|right)(most|-most|hand|-hand|side|-side|wards|ward)?\b", re.IGNORECASE)


def _match_case(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _swap_side(match: re.Match[str]) -> str:
    side = match.group(1)
    other = "right" if side.lower() == "left" else "left"
    return _match_case(other, side) + (match.group(2) or "")


def flip_text(text: str) -> str:
    """Swap left and right words (leftmost <-> rightmost, left-hand <-> right-hand, ...) keeping case."""
    return _SIDE_WORD.sub(_swap_side, text)


def hflip(
    batch: dict[str, Any],
    which: torch.Tensor | None = None,
    tokenize: Callable[[Sequence[str]], dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Flip the chosen samples (bool[B], default all) of a batch: every 4-D tensor along width,
    `boxes` (resized pixels), and `texts` with left/right swapped.

    If the batch holds `input_ids`, the flipped texts are re-tokenised with `tokenize`
    (e.g. `processor.texts`), which is then required: stale token ids would contradict the image.
    """
    if "texts" not in batch:
        raise ValueError("hflip needs the batch's 'texts' so that left/right words flip with the pixels")
    size = len(batch["texts"])
    flags = torch.ones(size, dtype=torch.bool) if which is None else torch.as_tensor(which, dtype=torch.bool).cpu()
    if flags.shape != (size,):
        raise ValueError(f"hflip: 'which' has shape {tuple(flags.shape)}, expected ({size},)")
    if "input_ids" in batch and tokenize is None:
        raise ValueError("hflip: the batch has input_ids; pass tokenize= so that flipped texts are re-tokenised")
    out = dict(batch)
    width = None
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            sel = flags.to(value.device).view(-1, 1, 1, 1)
            out[key] = torch.where(sel, value.flip(-1), value)
            width = value.shape[-1] if width is None else width
    if "boxes" in batch:
        if width is None:
            raise ValueError("hflip: 'boxes' need a 4-D image tensor in the batch to know the width")
        boxes = batch["boxes"]
        flipped = boxes.clone()
        flipped[:, 0] = width - boxes[:, 2]
        flipped[:, 2] = width - boxes[:, 0]
        out["boxes"] = torch.where(flags.to(boxes.device).view(-1, 1), flipped, boxes)
    out["texts"] = [flip_text(t) if f else t for t, f in zip(batch["texts"], flags.tolist())]
    if "input_ids" in batch and tokenize is not None:
        enc = tokenize(out["texts"])
        out["input_ids"] = enc["input_ids"].to(batch["input_ids"].device)
        out["attention_mask"] = enc["attention_mask"].to(batch["input_ids"].device)
    return out


def weak_view(
    batch: dict[str, Any],
    generator: torch.Generator,
    tokenize: Callable[[Sequence[str]], dict[str, torch.Tensor]] | None = None,
    flip_prob: float = 0.5,
) -> dict[str, Any]:
    """Weak view: the Processor's resize (already done) plus a random per-sample flip with text swap.

    Build the strong view from this output so both views share the flip.
    """
    size = len(batch["texts"])
    which = torch.rand(size, generator=generator) < flip_prob
    if not bool(which.any()):
        return dict(batch)
    return hflip(batch, which, tokenize)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of one [3, H, W] image with reflect padding."""
    k = _gaussian_kernel(sigma).to(image)
    r = (k.numel() - 1) // 2
    x = image.unsqueeze(0)
    x = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return x[0]


def strong_photometric(
    pixel_values: torch.Tensor,
    generator: torch.Generator,
    jitter: float = 0.4,
    blur_prob: float = 0.5,
    cutout_prob: float = 0.5,
    cutout_max: float = 0.4,
) -> torch.Tensor:
    """Strong view of normalised float[B, 3, S, S]: per-image brightness/contrast/saturation jitter,
    Gaussian blur with probability `blur_prob`, one cutout rectangle (side up to `cutout_max` of the
    image) with probability `cutout_prob`. Geometry is unchanged; the input is not modified.
    """
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"strong_photometric expects [B, 3, H, W], got {tuple(pixel_values.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
    rgb = (pixel_values * std + mean).clamp(0.0, 1.0)
    b, _, h, w = rgb.shape
    draws = torch.rand(b, 10, generator=generator)
    grey_weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    out = []
    for i in range(b):
        img = rgb[i : i + 1]
        d = draws[i].tolist()
        brightness, contrast, saturation = (1.0 + jitter * (2.0 * d[k] - 1.0) for k in range(3))
        img = (img * brightness).clamp(0.0, 1.0)
        grey = (img * grey_weights).sum(1, keepdim=True)
        img = (grey.mean() + contrast * (img - grey.mean())).clamp(0.0, 1.0)
        grey = (img * grey_weights).sum(1, keepdim=True)
        img = (grey + saturation * (img - grey)).clamp(0.0, 1.0)[0]
        if d[3] < blur_prob:
            img = _blur(img, sigma=0.1 + 1.9 * d[4])
        if d[5] < cutout_prob:
            ch, cw = max(1, int(h * cutout_max * d[6])), max(1, int(w * cutout_max * d[7]))
            y0, x0 = int((h - ch) * d[8]), int((w - cw) * d[9])
            img = img.clone()
            img[:, y0 : y0 + ch, x0 : x0 + cw] = mean[0]  # the mean colour is 0 after normalising
        out.append(img)
    return (torch.stack(out) - mean) / std
