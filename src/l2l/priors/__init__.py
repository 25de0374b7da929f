"""Stage 0: multimodal priors (box, points, confidence per sentence) from MLLMs or a simulation.

Providers (`l2l priors run --provider ...`): `qwen2.5-vl`, `qwen2-vl` (transformers, local checkpoint),
`openai` (any OpenAI-compatible server), `jsonl` (precomputed), `simulated` (ground truth + error model,
synthetic data only). Heavy providers are imported on use.
"""

from l2l.priors.base import PROVIDER_NAMES, PriorProvider, PriorRequest, confidence_from_logprobs
from l2l.priors.parse import Parsed, parse_answer
from l2l.priors.prior import DEFAULT_CONFIDENCE, Prior, box_iou
from l2l.priors.store import PriorsFile, load_priors, read_priors, write_priors

__all__ = [
    "DEFAULT_CONFIDENCE", "PROVIDER_NAMES", "Parsed", "Prior", "PriorProvider", "PriorRequest", "PriorsFile",
    "box_iou", "confidence_from_logprobs", "load_priors", "parse_answer", "read_priors", "write_priors",
]
