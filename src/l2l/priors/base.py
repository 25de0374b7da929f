"""The provider interface: a batch of (sample id, image, expression) in, one `Prior` per request out.

Every provider answers every request, in order, failures included (as failed priors), so the runner can
write one line per sentence and resume by sample id without knowing which provider it drives.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from l2l.priors.prior import DEFAULT_CONFIDENCE, Prior

# Names accepted by `l2l priors run --provider`.
PROVIDER_NAMES = ("qwen2.5-vl", "qwen2-vl", "openai", "jsonl", "simulated")

# Default grounding prompts per answer dialect; `{expression}` is replaced by the sentence.
PROMPTS = {
    "qwen2.5-vl": ('Locate the one object that this expression refers to: "{expression}". '
                   'Output its bounding box and one point on it in JSON format: '
                   '[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": "<object name>"}]'),
    "qwen2-vl": "Output the bounding box of <|object_ref_start|>{expression}<|object_ref_end|>",
}


@dataclass
class PriorRequest:
    """One sentence to ground. `sample` (a `RefSample`) is read only by the simulated provider."""

    sample_id: str
    image: np.ndarray  # uint8 [H, W, 3] RGB
    expression: str
    sample: Any = None


class PriorProvider(ABC):
    """Maps requests to priors; `name` is written into every prior it makes."""

    name: str = ""
    batch_size: int = 1  # how many requests the runner hands over at once

    @abstractmethod
    def predict(self, batch: Sequence[PriorRequest]) -> list[Prior]:
        """One prior per request, same order; answers that cannot be used are failed priors."""


def confidence_from_logprobs(logprobs: Sequence[float] | None) -> float:
    """Geometric-mean token probability of the answer, exp(mean log p), in [0, 1].

    A length-normalised likelihood: long answers are not penalised for their length, and a model that
    hesitates on any coordinate token gets a lower score. Without log-probabilities: DEFAULT_CONFIDENCE.
    """
    vals = [float(v) for v in (logprobs or []) if v is not None and math.isfinite(float(v))]
    if not vals:
        return DEFAULT_CONFIDENCE
    return float(min(1.0, max(0.0, math.exp(sum(vals) / len(vals)))))
