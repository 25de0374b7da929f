"""A *simulated* MLLM: priors made from ground truth with a calibrated error model (synthetic data only).

Not a model. It lets the synthetic benchmark exercise everything downstream of priors with realistic
errors and no GPU: the referred object's box with edge jitter (sometimes loose), a wrong-object rate that
prefers distractors of the same category (the typical grounding error: "the other cup"), a miss rate
(no usable box), positive points that now and then fall off the object, and a confidence that is higher
when the answer is right. Every number is a field of `SimulatedMLLMConfig`; each sample draws from its own
generator seeded by (seed, sample_id), so a prior does not depend on run order, batch size or resumption.

Defaults are calibrated to published grounding MLLMs on RefCOCO: about 90% of boxes at IoU >= 0.5
(`l2l priors report` measured 91.6% on a 300-image ShapeRefs train split; `--sim wrong_object_rate=0.12`
gives 84.9%, RefCOCO+-like). The provider name, `simulated-mllm`, is written into every prior.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from l2l.data.refer import ReferData
from l2l.errors import ConfigError
from l2l.priors.base import PriorProvider, PriorRequest
from l2l.priors.prior import Prior, box_iou

SIMULATED_NAME = "simulated-mllm"


@dataclass
class SimulatedMLLMConfig:
    """Error model of the simulated MLLM; defaults give ~90% of boxes at IoU >= 0.5 (RefCOCO-like)."""

    seed: int = 0                         # global seed, combined with each sample id
    miss_rate: float = 0.03               # answers with no usable box (recorded as failed priors)
    wrong_object_rate: float = 0.06       # answers naming another object of the image
    same_category_preference: float = 0.8  # P(wrong object is of the same category | one exists)
    jitter: float = 0.05                  # std of each box edge, as a fraction of the box side
    loose_rate: float = 0.05              # answers whose box is much looser (jitter x loose_factor)
    loose_factor: float = 4.0
    positive_points: int = 1              # points labelled 1 (Qwen2.5-VL's point_2d gives one)
    negative_points: int = 0              # points labelled 0, sampled outside the answered box
    point_off_object_rate: float = 0.1    # P(a positive point lands in the box but off the object)
    confidence_right: float = 0.8         # mean confidence of a correct answer (Beta distributed)
    confidence_wrong: float = 0.45        # mean confidence of a wrong object or a miss
    confidence_concentration: float = 8.0  # Beta a + b: higher = less spread around the means

    def validate(self) -> None:
        for name in ("miss_rate", "wrong_object_rate", "same_category_preference", "loose_rate",
                     "point_off_object_rate", "confidence_right", "confidence_wrong"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"simulated MLLM: {name} must be in [0, 1], got {v}")
        if self.miss_rate + self.wrong_object_rate > 1.0:
            raise ConfigError("simulated MLLM: miss_rate + wrong_object_rate must be <= 1")
        if self.jitter < 0 or self.loose_factor < 1 or self.confidence_concentration <= 0:
            raise ConfigError("simulated MLLM: jitter >= 0, loose_factor >= 1, confidence_concentration > 0")
        if self.positive_points < 0 or self.negative_points < 0:
            raise ConfigError("simulated MLLM: point counts must be >= 0")


def _xywh_to_xyxy(b: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y + h]


class SimulatedMLLM(PriorProvider):
    """Reads the ground truth of `refer` (the referred mask and the image's other objects)."""

    name = SIMULATED_NAME

    def __init__(self, refer: ReferData, config: SimulatedMLLMConfig | None = None, batch_size: int = 64) -> None:
        self.refer = refer
        self.config = config or SimulatedMLLMConfig()
        self.config.validate()
        self.batch_size = batch_size
        self._anns_of_image: dict[int, list[int]] = {}
        for ann_id, ann in refer.anns.items():
            self._anns_of_image.setdefault(int(ann["image_id"]), []).append(int(ann_id))

    def rng(self, sample_id: str) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, zlib.crc32(sample_id.encode("utf-8"))])

    def predict(self, batch: Sequence[PriorRequest]) -> list[Prior]:
        return [self._one(r) for r in batch]

    def _distractor(self, rng: np.random.Generator, target_ann: int, image_id: int) -> int | None:
        others = [a for a in self._anns_of_image.get(image_id, []) if a != target_ann]
        if not others:
            return None
        cat = self.refer.anns[target_ann].get("category_id")
        same = [a for a in others if self.refer.anns[a].get("category_id") == cat]
        different = [a for a in others if a not in same]
        pool = same if same and (not different or rng.random() < self.config.same_category_preference) else different
        return int(pool[rng.integers(len(pool))])

    def _jitter(self, rng: np.random.Generator, box: list[float], width: int, height: int) -> list[float]:
        cfg = self.config
        scale = cfg.jitter * (cfg.loose_factor if rng.random() < cfg.loose_rate else 1.0)
        bw, bh = box[2] - box[0], box[3] - box[1]
        d = rng.normal(0.0, scale, 4) * np.array([bw, bh, bw, bh])
        x1, y1, x2, y2 = (box[i] + d[i] for i in range(4))
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        if x2 - x1 < 1.0 or y2 - y1 < 1.0:  # jitter collapsed a tiny box: fall back to the object's box
            return [float(v) for v in box]
        return [float(x1), float(y1), float(x2), float(y2)]

    def _points(self, rng: np.random.Generator, mask: np.ndarray, box: list[float]) -> list[tuple[float, float, int]]:
        cfg = self.config
        h, w = mask.shape
        x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
        x2, y2 = max(x1 + 1, int(np.ceil(box[2]))), max(y1 + 1, int(np.ceil(box[3])))
        in_box = np.zeros_like(mask)
        in_box[y1:y2, x1:x2] = True
        points = []
        for _ in range(cfg.positive_points):
            off = rng.random() < cfg.point_off_object_rate
            region = in_box & ~mask if off else mask & in_box
            if not region.any():
                region = mask if mask.any() else in_box
            ys, xs = np.nonzero(region)
            k = rng.integers(len(xs))
            points.append((float(xs[k]) + 0.5, float(ys[k]) + 0.5, 1))
        outside = ~in_box
        for _ in range(cfg.negative_points if outside.any() else 0):
            ys, xs = np.nonzero(outside)
            k = rng.integers(len(xs))
            points.append((float(xs[k]) + 0.5, float(ys[k]) + 0.5, 0))
        return points

    def _confidence(self, rng: np.random.Generator, right: bool) -> float:
        cfg = self.config
        mean = cfg.confidence_right if right else cfg.confidence_wrong
        mean = min(max(mean, 1e-3), 1 - 1e-3)
        return float(rng.beta(mean * cfg.confidence_concentration, (1 - mean) * cfg.confidence_concentration))

    def _one(self, req: PriorRequest) -> Prior:
        s = req.sample
        if s is None:
            raise ConfigError("the simulated MLLM needs each request's RefSample (it reads ground truth)")
        cfg = self.config
        rng = self.rng(req.sample_id)
        u = rng.random()
        target = int(s.ann_id)
        true_box = _xywh_to_xyxy(self.refer.anns[target]["bbox"])
        if u < cfg.miss_rate:
            raw = json.dumps({"simulation": "miss", "target_ann_id": target})
            return Prior.failed(req.sample_id, "simulated miss: no box", raw, self.name, self._confidence(rng, False))
        answer_ann = target
        if u < cfg.miss_rate + cfg.wrong_object_rate:
            distractor = self._distractor(rng, target, int(s.image_id))
            answer_ann = -1 if distractor is None else distractor
        if answer_ann == -1:  # nothing else in the image: a hallucinated box of similar size elsewhere
            bw, bh = true_box[2] - true_box[0], true_box[3] - true_box[1]
            x1 = rng.uniform(0, max(1.0, s.width - bw))
            y1 = rng.uniform(0, max(1.0, s.height - bh))
            base = [x1, y1, min(float(s.width), x1 + bw), min(float(s.height), y1 + bh)]
            mask = np.zeros((s.height, s.width), bool)
        else:
            base = _xywh_to_xyxy(self.refer.anns[answer_ann]["bbox"])
            mask = self.refer.ann_mask(answer_ann)
        box = self._jitter(rng, base, s.width, s.height)
        right = box_iou(box, true_box) >= 0.5
        points = self._points(rng, mask, box)
        outcome = "right object" if answer_ann == target else "wrong object"
        raw = json.dumps({"simulation": outcome, "target_ann_id": target, "answer_ann_id": answer_ann,
                          "box": [round(v, 2) for v in box]})
        return Prior(req.sample_id, box, points, self._confidence(rng, right), raw, self.name)

    def describe(self) -> dict:
        """The configuration, for run logs and report headers."""
        return {"provider": self.name, **asdict(self.config)}
