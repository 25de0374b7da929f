"""`Predictor`: one image and one sentence in, one boolean mask out, through the same `Processor` as evaluation.

    from l2l.evaluation import Predictor, overlay
    predictor = Predictor.from_pretrained("runs/shaperefs/best")
    mask = predictor(image, "the red circle left of the square")      # np.bool_[H, W], original size
    picture = overlay(image, mask, "the red circle left of the square")  # np.uint8[H', W, 3] RGB

The mask is the network's logits upsampled to the image's own size and thresholded at probability 0.5,
exactly as `evaluate` scores them, so a demo cannot disagree with the reported metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from l2l.errors import DataError, InputError
from l2l.evaluation.evaluator import masks_at_original_size, predict_logits

def read_image(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8[H, W, 3]; a missing or unreadable file is an `InputError` naming it."""
    from l2l.data.refer import load_image

    try:
        return load_image(path)
    except DataError as exc:
        raise InputError(str(exc)) from None


def as_rgb(image: Any) -> np.ndarray:
    """Accept RGB, RGBA or grayscale uint8 arrays (what image libraries hand out) and return RGB uint8[H, W, 3]."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array or a file path, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InputError(f"image must have shape [H, W, 3], got {tuple(image.shape)}")
    return np.ascontiguousarray(image)


class Predictor:
    """Wraps a `RESModel` in eval mode; `predictor(image, text, prior=None) -> np.bool_[H, W]`.

    `prior` is optional guidance for the with-priors mode: a soft proposal map (float array in [0, 1], any
    size) or a `Prior` (box/points, turned into a proposal with `proposal_method`).
    """

    def __init__(self, model: nn.Module, processor: Any = None, proposal_method: str = "gaussian") -> None:
        """`from_pretrained` sets `proposal_method` to the one the checkpoint was trained with."""
        self.model = model.eval()
        self.processor = processor if processor is not None else model.processor()
        self.proposal_method = proposal_method

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> "Predictor":
        """Load a `save_pretrained` directory; a missing directory, config or weights file is a `CheckpointError`."""
        from l2l.model import RESModel
        from l2l.model.modeling import trained_proposal_method

        from l2l.utils.device import resolve_device

        device = resolve_device(device)
        model = RESModel.from_pretrained(directory)
        kwargs.setdefault("proposal_method", trained_proposal_method(directory))
        return cls(model.to(device), **kwargs)

    def _proposal(self, image: np.ndarray, prior: Any) -> torch.Tensor | None:
        """The proposal batch for `prior`; None for a failed `Prior` (the network's no-proposal path)."""
        if isinstance(prior, np.ndarray):
            if prior.ndim != 2 or not np.issubdtype(prior.dtype, np.number):
                raise InputError(f"prior map must be a 2-D numeric array in [0, 1], got shape {prior.shape}")
            soft = prior.astype(np.float32)
        else:
            from l2l.proposals.methods import make_proposal, prior_ok

            if not prior_ok(prior):
                return None
            soft = make_proposal(self.proposal_method, image, prior).map
        return self.processor.maps([soft])

    def _low_logits(self, image: np.ndarray | str | Path, text: str, prior: Any) -> tuple[torch.Tensor, np.ndarray]:
        image = read_image(image) if isinstance(image, (str, Path)) else as_rgb(image)
        if not isinstance(text, str) or not text.strip():
            raise InputError("the referring expression is empty; give a sentence such as 'the red cup on the left'")
        proposal = self._proposal(image, prior) if prior is not None else None
        return predict_logits(self.model, self.processor, [image], [text.strip()], proposal), image

    def logits(self, image: np.ndarray | str | Path, text: str, prior: Any = None) -> torch.Tensor:
        """Logits float[1, H, W] at the image's original size (before thresholding)."""
        low, image = self._low_logits(image, text, prior)
        return self.processor.upsample_logits(low, image.shape[:2])[0]

    def __call__(self, image: np.ndarray | str | Path, text: str, prior: Any = None) -> np.ndarray:
        """Boolean mask np.bool_[H, W] at the image's original size."""
        low, image = self._low_logits(image, text, prior)
        return masks_at_original_size(low, [image.shape[:2]], self.processor)[0].numpy()


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    text: str,
    color: tuple[int, int, int] = (255, 48, 48),
    alpha: float = 0.45,
) -> np.ndarray:
    """RGB uint8 picture: the mask tinted over the image, its contour, and the sentence in a band on top.

    The sentence goes in its own band (wrapped to the image width) so it never hides the object.
    """
    image = as_rgb(image)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != image.shape[:2]:
        raise InputError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    h, w = mask.shape
    out = image.astype(np.float32)
    tint = np.array(color, np.float32)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * tint
    out = out.round().astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    thickness = max(1, round(min(h, w) / 150))
    cv2.drawContours(out, contours, -1, color, thickness, lineType=cv2.LINE_8)
    return np.concatenate([_caption(text, w), out], axis=0)


def _caption(text: str, width: int) -> np.ndarray:
    """A dark band with `text` wrapped to `width` pixels (white, OpenCV's Hershey font)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.35, min(1.0, width / 640))
    thick = 1 if scale < 0.7 else 2
    (_, line_h), baseline = cv2.getTextSize("Ag", font, scale, thick)
    pad = max(4, line_h // 2)
    lines: list[str] = []
    for word in text.split():
        trial = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(trial, font, scale, thick)[0][0] <= width - 2 * pad:
            lines[-1] = trial
        else:
            lines.append(word)
    lines = lines or [""]
    step = line_h + baseline + pad // 2
    band = np.full((pad + step * len(lines), width, 3), 24, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (pad, pad + line_h + i * step), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return band
