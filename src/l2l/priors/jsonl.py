"""Precomputed priors from a JSONL file (another machine's run, a different model, hand-made priors)."""

from __future__ import annotations

import os
from typing import Sequence

from l2l.priors.base import PriorProvider, PriorRequest
from l2l.priors.prior import Prior
from l2l.priors.store import load_priors


class JsonlProvider(PriorProvider):
    """Looks priors up by sample id; a sample missing from the file becomes a failed prior."""

    name = "jsonl"

    def __init__(self, path: str | os.PathLike, batch_size: int = 256) -> None:
        self.path = str(path)
        self.priors = load_priors(path)
        self.batch_size = batch_size

    def predict(self, batch: Sequence[PriorRequest]) -> list[Prior]:
        out = []
        for req in batch:
            p = self.priors.get(req.sample_id)
            out.append(p if p is not None else
                       Prior.failed(req.sample_id, f"not in {os.path.basename(self.path)}", provider=self.name))
        return out
