"""SAM proposals through `transformers` (`SamModel`, `SamProcessor`) from a local checkpoint directory.

The image encoder is by far the expensive part of SAM, and RefCOCO has several sentences per image, so the
embedding is computed once per image and kept in a small LRU cache keyed by the caller's image id (the
segment-anything predictor pattern); prompts (box + points) then cost one light mask-decoder pass each.
The soft map is the sigmoid of the best-scoring mask's logits, upsampled to the original image; quality is
the prior confidence times SAM's own predicted IoU (SAM judges the mask given the prompt, not whether the
prompt hit the referred object; the confidence covers that, as for the other methods).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from l2l.errors import CheckpointError
from l2l.proposals.methods import Proposal


class SamProposer:
    """Box + points prompts to SAM with a per-image embedding cache; call it as
    `proposer(image, box, points, confidence, image_key=...) -> Proposal`."""

    def __init__(self, model: Any, processor: Any, device: str | torch.device = "cpu", cache_size: int = 4):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = torch.device(device)
        self.cache_size = cache_size
        self._cache: OrderedDict[Any, tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = OrderedDict()
        self.embed_calls = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", cache_size: int = 4) -> "SamProposer":
        """Load `SamModel` and `SamProcessor` from a local directory (no hub access)."""
        from transformers import SamModel, SamProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"SAM checkpoint {path} has no config.json (expected a transformers SAM directory)")
        try:
            model = SamModel.from_pretrained(path, local_files_only=True)
            processor = SamProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"cannot load SAM checkpoint {path}: {exc}") from exc
        return cls(model, processor, device, cache_size)

    def _embedding(self, image: np.ndarray, image_key: Any) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(image embedding, original (H, W), resized (h, w) before padding), computed once per image key."""
        if image_key is None:
            image_key = (image.shape, hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest())
        hit = self._cache.get(image_key)
        if hit is not None:
            self._cache.move_to_end(image_key)
            return hit
        inputs = self.processor.image_processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        with torch.no_grad():
            embedding = self.model.get_image_embeddings(pixel_values)
        self.embed_calls += 1
        entry = (embedding, tuple(int(v) for v in inputs["original_sizes"][0]),
                 tuple(int(v) for v in inputs["reshaped_input_sizes"][0]))
        self._cache[image_key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def __call__(self, image: np.ndarray, box: Sequence[float], points: Sequence[tuple[float, float, int]],
                 confidence: float, image_key: Any = None) -> Proposal:
        embedding, (height, width), (rh, rw) = self._embedding(image, image_key)
        # Prompts live in the resized (longest side = target) frame, as SamProcessor maps them.
        scale = torch.tensor([rw / width, rh / height, rw / width, rh / height], dtype=torch.float32)
        boxes = (torch.tensor(box, dtype=torch.float32) * scale).view(1, 1, 4).to(self.device)
        kwargs: dict[str, torch.Tensor] = {"input_boxes": boxes}
        if points:
            xy = torch.tensor([[p[0], p[1]] for p in points], dtype=torch.float32) * scale[:2]
            kwargs["input_points"] = xy.view(1, 1, -1, 2).to(self.device)
            kwargs["input_labels"] = torch.tensor([[[int(p[2]) for p in points]]], device=self.device)
        with torch.no_grad():
            out = self.model(image_embeddings=embedding, multimask_output=True, **kwargs)
        scores = out.iou_scores[0, 0].float()
        best = int(scores.argmax())
        logits = out.pred_masks[0, :, best : best + 1].float().cpu()  # [1, 1, h', w']
        full = self.processor.image_processor.post_process_masks(
            [logits], [(height, width)], [(rh, rw)], binarize=False
        )[0]
        soft = torch.sigmoid(full[0, 0]).numpy().astype(np.float32)
        quality = float(np.clip(confidence, 0.0, 1.0) * float(scores[best].clamp(0.0, 1.0)))
        return Proposal(soft, quality, "sam")

    def everything(self, image: np.ndarray, points_per_side: int = 16, min_score: float = 0.88,
                   nms_iou: float = 0.7, image_key: Any = None) -> list[np.ndarray]:
        """SAM's automatic ("everything") masks: one single-point prompt per cell of a `points_per_side` grid, the
        best of SAM's three masks per point, kept when SAM's predicted IoU >= `min_score`, then greedy mask NMS at
        `nms_iou` (highest score first). No text and no prior: the class-agnostic candidates SemiRES matches."""
        embedding, (height, width), (rh, rw) = self._embedding(image, image_key)
        steps = (np.arange(points_per_side) + 0.5) / points_per_side
        grid = torch.tensor([[x * rw, y * rh] for y in steps for x in steps], dtype=torch.float32)
        with torch.no_grad():
            out = self.model(image_embeddings=embedding, input_points=grid.view(1, -1, 1, 2).to(self.device),
                             input_labels=torch.ones(1, len(grid), 1, dtype=torch.long, device=self.device),
                             multimask_output=True)
        scores = out.iou_scores[0].float().cpu()  # [P, 3]
        best = scores.argmax(-1)
        keep_scores = scores.gather(-1, best[:, None])[:, 0]
        logits = out.pred_masks[0].float().cpu()[torch.arange(len(grid)), best][:, None]  # [P, 1, h', w']
        full = self.processor.image_processor.post_process_masks(
            [logits.transpose(0, 1)], [(height, width)], [(rh, rw)], binarize=False)[0][0]  # [P, H, W]
        soft = torch.sigmoid(full).numpy().astype(np.float32)
        kept: list[np.ndarray] = []
        kept_bin: list[np.ndarray] = []
        for i in torch.argsort(keep_scores, descending=True).tolist():
            if float(keep_scores[i]) < min_score:
                break
            mask = soft[i] > 0.5
            if not mask.any():
                continue
            if any(float((mask & k).sum()) / float((mask | k).sum()) > nms_iou for k in kept_bin):
                continue
            kept.append(soft[i])
            kept_bin.append(mask)
        return kept
