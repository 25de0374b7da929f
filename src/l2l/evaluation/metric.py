"""`RESMetric`: the field's referring-segmentation metrics, one record per sample.

Definitions (docs/evaluation.md, "Metrics"; as in LAVT's test code):
every sample contributes `I = |P and G|` and `U = |P or G|` in pixels;
mIoU = mean of `I/U` over samples (a sample with `U = 0` counts 0), oIoU = `sum I / sum U`,
P@X = share of samples with `I/U >= X`. Values are reported in percent.

Per-sample records (not running sums) are kept so that a distributed evaluation can gather them and drop the
duplicates a `DistributedSampler` pads with, and so that every score can be traced back to its sample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2l.utils.io import atomic_write_text

THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
METRIC_KEYS: tuple[str, ...] = ("mIoU", "oIoU", *(f"P@{t}" for t in THRESHOLDS), "n")

MaskBatch = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor]


def _check_binary(mask: np.ndarray | torch.Tensor, what: str) -> None:
    """Refuse soft maps: thresholding is the caller's decision, never a silent one here."""
    if mask.dtype in (np.bool_, torch.bool):
        return
    if isinstance(mask, torch.Tensor):
        ok = not torch.is_floating_point(mask) and not torch.is_complex(mask) and bool(((mask == 0) | (mask == 1)).all())
    else:
        ok = np.issubdtype(mask.dtype, np.integer) and bool(np.isin(mask, (0, 1)).all())
    if not ok:
        raise ValueError(f"RESMetric: {what} must be a boolean (or 0/1 integer) mask, got dtype {mask.dtype}")


def _as_batch(masks: MaskBatch, what: str) -> list[np.ndarray | torch.Tensor]:
    """One HxW mask, a list of HxW masks (sizes may differ), or a stacked [B,H,W] (or [B,1,H,W]) array/tensor."""
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        if masks.ndim == 2:
            items = [masks]
        elif masks.ndim == 3:
            items = list(masks)
        elif masks.ndim == 4 and masks.shape[1] == 1:
            items = list(masks[:, 0])
        else:
            raise ValueError(f"RESMetric: {what} has shape {tuple(masks.shape)}; expected [H,W], [B,H,W] or [B,1,H,W]")
    elif isinstance(masks, Sequence) and not isinstance(masks, (str, bytes)):
        items = []
        for m in masks:
            if not isinstance(m, (np.ndarray, torch.Tensor)):
                m = np.asarray(m)
            if m.ndim == 3 and m.shape[0] == 1:
                m = m[0]
            if m.ndim != 2:
                raise ValueError(f"RESMetric: each {what} mask must be [H,W], got shape {tuple(m.shape)}")
            items.append(m)
    else:
        raise TypeError(f"RESMetric: {what} must be an array, a tensor or a list of them, got {type(masks).__name__}")
    for m in items:
        _check_binary(m, what)
    return items


def _inter_union(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> tuple[int, int]:
    if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
        p = torch.as_tensor(pred).bool()
        g = torch.as_tensor(gt).bool().to(p.device)
        return int((p & g).sum()), int((p | g).sum())
    p, g = pred.astype(bool, copy=False), gt.astype(bool, copy=False)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


class RESMetric:
    """Accumulates per-sample intersection/union; `compute()` gives mIoU, oIoU and P@X in percent.

    `update(pred, gt, ids, extra)`: boolean masks at the resolution they are scored at (the evaluator uses the
    original image size). `ids` are sample ids (or dataset indices): they are the key that `merge_distributed`
    uses to drop the duplicate samples a `DistributedSampler` pads the last batch with.
    """

    def __init__(self) -> None:
        self._records: list[dict[str, Any]] = []
        self._auto_ids = 0  # count of records whose id was not given (they cannot be de-duplicated)

    def reset(self) -> None:
        self._records = []
        self._auto_ids = 0

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Per-sample records `{sample_id, I, U, IoU, **extra}` in the order they were added (or merged)."""
        return list(self._records)

    def update(
        self,
        pred: MaskBatch,
        gt: MaskBatch,
        ids: Sequence[str | int] | str | int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> list[float]:
        """Score one pair or a batch; returns the per-sample IoUs (0..1).

        `extra` maps a field name to one value per sample (a sequence of length B) or to a single value shared by
        the batch; the fields are stored in the per-sample records (e.g. the mode or the prior confidence).
        """
        preds, gts = _as_batch(pred, "pred"), _as_batch(gt, "gt")
        if len(preds) != len(gts):
            raise ValueError(f"RESMetric: {len(preds)} predictions but {len(gts)} ground-truth masks")
        n = len(preds)
        if ids is None:
            id_list: list[str | int] = [f"#{self._auto_ids + k}" for k in range(n)]
            self._auto_ids += n
        else:
            id_list = [ids] if isinstance(ids, (str, int)) else list(ids)
            if len(id_list) != n:
                raise ValueError(f"RESMetric: {len(id_list)} ids for {n} samples")
        columns: dict[str, list[Any]] = {}
        for key, value in (extra or {}).items():
            if key in ("sample_id", "I", "U", "IoU"):
                raise ValueError(f"RESMetric: extra field {key!r} would overwrite a metric field")
            if isinstance(value, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(value, (str, bytes)):
                values = value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else list(value)
                if len(values) != n:
                    raise ValueError(f"RESMetric: extra field {key!r} has {len(values)} values for {n} samples")
                columns[key] = values
            else:
                columns[key] = [value] * n
        ious: list[float] = []
        for k, (p, g) in enumerate(zip(preds, gts)):
            if tuple(p.shape) != tuple(g.shape):
                raise ValueError(
                    f"RESMetric: sample {id_list[k]!r}: prediction {tuple(p.shape)} and ground truth "
                    f"{tuple(g.shape)} differ in size; resize the prediction to the ground truth first"
                )
            inter, union = _inter_union(p, g)
            iou = inter / union if union > 0 else 0.0
            ious.append(iou)
            record: dict[str, Any] = {"sample_id": id_list[k], "I": inter, "U": union, "IoU": iou}
            for key, values in columns.items():
                record[key] = values[k]
            self._records.append(record)
        return ious

    def compute(self) -> dict[str, float | int]:
        """`{"mIoU", "oIoU", "P@0.5", ..., "P@0.9"}` in percent and `"n"` (samples); all zero when empty."""
        n = len(self._records)
        if n == 0:
            return {**{k: 0.0 for k in METRIC_KEYS if k != "n"}, "n": 0}
        ious = np.array([r["IoU"] for r in self._records], dtype=np.float64)
        total_i = sum(r["I"] for r in self._records)
        total_u = sum(r["U"] for r in self._records)
        out: dict[str, float | int] = {
            "mIoU": 100.0 * float(ious.mean()),
            "oIoU": 100.0 * total_i / total_u if total_u > 0 else 0.0,
        }
        for t in THRESHOLDS:
            out[f"P@{t}"] = 100.0 * float(np.count_nonzero(ious >= t)) / n
        out["n"] = n
        return out

    def merge_distributed(self, num_samples: int | None = None) -> "RESMetric":
        """Gather every rank's records onto every rank, keeping the first record of each sample id.

        A `DistributedSampler` pads the index list so that every rank gets the same count; the padded samples
        repeat real ones, so de-duplicating by id counts each sample once. `num_samples` (e.g. `len(dataset)`),
        if given, is checked against the merged count. A no-op without an initialised process group.
        """
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if self._auto_ids:
                raise ValueError("RESMetric.merge_distributed: update() was called without ids; pass sample ids")
            gathered: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self._records)
            seen: set[str | int] = set()
            merged: list[dict[str, Any]] = []
            for part in gathered:
                for record in part or []:
                    if record["sample_id"] not in seen:
                        seen.add(record["sample_id"])
                        merged.append(record)
            self._records = merged
        if num_samples is not None and len(self._records) != num_samples:
            raise RuntimeError(f"RESMetric: {len(self._records)} unique samples after merging, expected {num_samples}")
        return self

    def write_jsonl(self, path: str | Path) -> Path:
        """Write one JSON object per sample (atomically) and return the path."""
        path = Path(path)
        lines = [json.dumps(r, default=_json_default) for r in self._records]
        atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
        return path


def _json_default(value: Any) -> Any:
    """Let numpy/torch scalars in extra fields reach the JSONL file as plain numbers."""
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_table(rows: Sequence[Mapping[str, Any]], label_keys: Sequence[str] = ("data", "mode")) -> str:
    """A fixed-width text table: one row per (data id, mode), the metric columns in the field's order."""
    headers = [*label_keys, *METRIC_KEYS]
    cells = [
        [str(row.get(k, "")) for k in label_keys]
        + [f"{row[k]:.2f}" if k != "n" else str(row[k]) for k in METRIC_KEYS]
        for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < len(label_keys) else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(c) for c in cells)])
