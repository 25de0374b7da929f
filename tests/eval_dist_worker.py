"""A two-process `evaluate` worker for tests/test_eval_cli.py, kept light for `spawn`.

Spawned children import only this module (torch, OpenCV, the data layer, evaluation), not the test module with
its model and transformers imports. `spawn`, not `fork`: forking a parent whose OpenCV thread pool already ran
can hang the child.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from l2l.data.dataset import RESDataset
from l2l.data.processor import Processor
from l2l.evaluation.evaluator import evaluate

SIDE = 64


class TextureModel(nn.Module):
    """Logits from the image's red channel: a prediction that differs per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> dict[str, Any]:
        return {"logits": pixel_values[:, :1] + self.weight, "refined": None}


def word_tokenizer(texts: list[str], max_length: int, **_: Any) -> dict[str, torch.Tensor]:
    """Stand-in tokenizer (the model ignores text): one id per word, padded to `max_length`."""
    ids = torch.zeros(len(texts), max_length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, text in enumerate(texts):
        n = min(max_length, len(text.split()))
        ids[i, :n] = torch.arange(1, n + 1)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def processor() -> Processor:
    return Processor(SIDE, word_tokenizer, max_tokens=8)


def run(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        dataset = RESDataset(root, "refcoco/unc/val")  # 3 samples over 2 ranks: one padded duplicate
        result = evaluate(TextureModel(), dataset, processor(), batch_size=2, out_jsonl=Path(out) / "d.jsonl",
                          progress=False)
        Path(out, f"r{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
