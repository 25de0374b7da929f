"""Label-bank quality against the hidden masks of D_u (ShapeRefs only): evaluation code, never given to a method.

The trainer calls it around every self-evolution round, so the bank's mIoU per round is logged next to the
proxy-set numbers the method itself sees; the method never receives the scorer or the masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np

from l2l.data.dataset import DataId, RESDataset
from l2l.evaluation.metric import RESMetric


def hidden_label_scorer(root: str | Path, data_id: DataId, sample_ids: Iterable[str]) -> Callable[[Any], dict[str, float]]:
    """A function `bank -> {"mIoU", "oIoU"}` scoring the bank's maps of `sample_ids` (resized to each image, > 0.5)
    against their ground-truth masks, read here from a full view of the split."""
    full = RESDataset(root, data_id)
    wanted = set(sample_ids)
    indices = [i for i, s in enumerate(full.samples) if s.sample_id in wanted]

    def score(bank: Any) -> dict[str, float]:
        metric = RESMetric()
        for i in indices:
            sample = full.samples[i]
            try:
                soft = np.asarray(bank.get(sample.sample_id), dtype=np.float32)
            except KeyError:
                continue
            pred = cv2.resize(soft, (sample.width, sample.height), interpolation=cv2.INTER_LINEAR) > 0.5
            metric.update([pred], [full.mask(i)], ids=[sample.sample_id])
        out = metric.compute()
        return {"mIoU": float(out["mIoU"]), "oIoU": float(out["oIoU"])}

    return score
