"""Evaluation: `RESMetric` (the field's metrics), `evaluate` (a model over a dataset), `Predictor` (one image)."""

from l2l.evaluation.evaluator import MODES, evaluate, mode_name
from l2l.evaluation.metric import METRIC_KEYS, THRESHOLDS, RESMetric, format_table
from l2l.evaluation.predictor import Predictor, overlay, read_image

__all__ = [
    "METRIC_KEYS",
    "MODES",
    "THRESHOLDS",
    "Predictor",
    "RESMetric",
    "evaluate",
    "format_table",
    "mode_name",
    "overlay",
    "read_image",
]
