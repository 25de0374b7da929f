"""`evaluate`: run a model over a dataset through the model's own `Processor` and score it with `RESMetric`.

Metrics are computed at the ORIGINAL image resolution: the logits (at the network's square input size) are
upsampled bilinearly to each image's height x width and thresholded at 0 (probability 0.5), as CRIS scores.
Two modes (docs/method.md, stage 2): "with priors" gives the network the proposal of the sample from a proposal
bank (the L2L setting), "prior-free" gives it none (cheaper inference; guidance dropout trained for it).

Under `torch.distributed` every rank scores its shard of a `DistributedSampler`, and the records are merged
on every rank without the sampler's padding (see `RESMetric.merge_distributed`); rank 0 writes the JSONL.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from l2l.errors import ConfigError, DataError
from l2l.evaluation.metric import RESMetric
from l2l.proposals.bank import bank_has_prior

MODES: tuple[str, ...] = ("prior", "prior_free")


class ProposalSource(Protocol):
    """What evaluation needs from a `ProposalBank`: the soft map of a sample (any size, values in [0, 1])."""

    def get(self, sample_id: str) -> np.ndarray: ...


def mode_name(use_priors: bool) -> str:
    return "prior" if use_priors else "prior_free"


def _list_collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep items as they are: images differ in size and are resized by the Processor, not by the loader."""
    return items


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def proposal_batch(
    bank: ProposalSource, sample_ids: Sequence[str], processor: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """`proposal` float[B,1,S,S] and `has_proposal` bool[B] for a batch; a sample the bank lacks, or whose prior
    failed, gets none (the network's no-proposal path).

    Maps go through `processor.maps`, so a bank stored at another side than the network input still fits.
    """
    side = processor.image_size
    maps, has = [], []
    for sid in sample_ids:
        m = None
        if not hasattr(bank, "__contains__") or sid in bank:  # type: ignore[operator]
            try:
                m = bank.get(sid) if bank_has_prior(bank, sid) else None
            except KeyError:
                m = None
        has.append(m is not None)
        maps.append(np.zeros((side, side), np.float32) if m is None else np.asarray(m, dtype=np.float32))
    return processor.maps(maps), torch.tensor(has, dtype=torch.bool)


def model_device(model: nn.Module) -> torch.device:
    """Where the model lives; a module without weights (e.g. the prior-only baseline) runs on the CPU."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    processor: Any,
    images: Sequence[np.ndarray],
    texts: Sequence[str],
    proposal: torch.Tensor | None = None,
    has_proposal: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Network logits float[B,1,S,S] for raw images and sentences (shared by `evaluate` and `Predictor`)."""
    device = model_device(model)
    inputs = {k: v.to(device) for k, v in processor(list(images), list(texts)).items()}
    if proposal is not None:
        inputs["proposal"] = proposal.to(device)
        inputs["has_proposal"] = (
            has_proposal.to(device) if has_proposal is not None else torch.ones(len(images), dtype=torch.bool, device=device)
        )
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(**inputs)
    return out["logits"].float()


def masks_at_original_size(logits: torch.Tensor, sizes: Sequence[tuple[int, int]], processor: Any) -> list[torch.Tensor]:
    """Upsample each sample's logits to its (H, W) and threshold at 0 -> bool[H, W] tensors (on CPU)."""
    out = []
    for i, (h, w) in enumerate(sizes):
        up = processor.upsample_logits(logits[i : i + 1], (int(h), int(w)))
        out.append((up[0, 0] > 0).cpu())
    return out


def evaluate(
    model: nn.Module,
    dataset: Any,
    processor: Any = None,
    bank: ProposalSource | None = None,
    use_priors: bool = False,
    batch_size: int = 16,
    out_jsonl: str | Path | None = None,
    progress: bool = True,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, float | int]:
    """Score `model` on every sample of `dataset` (an `RESDataset` with masks); returns `RESMetric.compute()`.

    `processor` defaults to `model.processor()`; `use_priors` needs `bank`. Distributed-aware: call it on every
    rank; every rank gets the merged metrics. `extra` fields (e.g. the data id) go into every JSONL record.
    """
    if use_priors and bank is None:
        raise ConfigError("evaluation with priors needs a proposal bank (pass --priors, or use prior-free mode)")
    if not getattr(dataset, "has_masks", True):
        raise DataError(f"{getattr(dataset, 'data_id', 'dataset')}: cannot evaluate on a subset without masks")
    processor = processor if processor is not None else model.processor()
    rank, world = _dist_info()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=num_workers, collate_fn=_list_collate
    )
    mode = mode_name(use_priors)
    metric = RESMetric()
    was_training = model.training
    model.eval()
    bar = None
    if progress and rank == 0 and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(loader), desc=f"eval {mode}", leave=False)
    try:
        for items in loader:
            ids = [it["sample"].sample_id for it in items]
            proposal = has = None
            if use_priors:
                proposal, has = proposal_batch(bank, ids, processor)  # type: ignore[arg-type]
            logits = predict_logits(
                model, processor, [it["image"] for it in items], [it["text"] for it in items], proposal, has, amp_dtype
            )
            preds = masks_at_original_size(logits, [it["mask"].shape for it in items], processor)
            fields: dict[str, Any] = {"mode": mode, **(extra or {})}
            if has is not None:
                fields["has_prior"] = has.tolist()
            metric.update(preds, [it["mask"] for it in items], ids=ids, extra=fields)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    metric.merge_distributed(num_samples=len(dataset))
    if out_jsonl is not None and rank == 0:
        metric.write_jsonl(out_jsonl)
    return metric.compute()
