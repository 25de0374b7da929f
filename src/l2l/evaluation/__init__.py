"""Evaluation: `RESMetric` (the field's metrics), `evaluate` (a model over a dataset), `Predictor` (one image)."""

from l2l.evaluation.metric import METRIC_KEYS, THRESHOLDS, RESMetric, format_table

__all__ = ["METRIC_KEYS", "THRESHOLDS", "RESMetric", "format_table"]
