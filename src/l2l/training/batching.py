"""From `RESDataset` items to the batch dicts of the methods contract, with resumable data order.

Data order and augmentation are pure functions of `(seed, epoch, position)`: `EpochSampler` draws the
permutation from a generator seeded by `(seed, epoch)`, and every position carries its own augmentation
seed. So a run resumed mid-epoch sees exactly the batches an uninterrupted run would, whatever the number
of DataLoader workers, and the consumed batches are skipped by starting the sampler further in.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from l2l.data.augment import hflip
from l2l.proposals.bank import bank_has_prior


def _mix(*parts: int) -> int:
    """A well-spread 63-bit seed from small integers (seed, epoch, position, salt)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class EpochSampler(Sampler):
    """Shuffled (or ordered) indices for one process, padded like `DistributedSampler`.

    Yields `(dataset_index, aug_seed)` pairs; `set_epoch` picks the permutation and `set_start(k)` skips
    the first `k` positions of this rank's share (the samples a resumed run has already consumed).
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, salt: int = 0) -> None:
        self.size, self.seed, self.shuffle, self.salt = size, int(seed), shuffle, int(salt)
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(size / world_size) if size else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def order(self) -> list[int]:
        """This rank's dataset indices for the current epoch, before skipping."""
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.salt, self.epoch))
            indices = torch.randperm(self.size, generator=g).tolist()
        else:
            indices = list(range(self.size))
        total = self.per_rank * self.world_size
        indices += indices[: total - len(indices)]  # pad so every rank gets the same number of samples
        return indices[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for pos, index in enumerate(self.order()):
            if pos >= self.start:
                yield index, _mix(self.seed, self.salt, self.epoch, pos * self.world_size + self.rank, 7)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


class SeededItems(Dataset):
    """Wraps a dataset so that `ds[(index, aug_seed)]` returns the item with its `aug_seed` and `index`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, aug_seed = key
        item = dict(self.dataset[index])
        item["index"], item["aug_seed"] = index, aug_seed
        return item


class Collator:
    """Turns a list of items into the batch dict every `Method` reads (docs/architecture.md).

    Keys: `pixel_values`, `input_ids`, `attention_mask` (from the `Processor`), `sample_ids`, `texts`,
    `indices`, `image_ids` (long[B]), `flipped` (bool[B]), `boxes` (float[B,4], the prior's box in resized pixels; the whole image
    when a sample has no usable prior), `prior_conf` (float[B], 0 without a prior), `mask` (float[B,1,S,S],
    labelled items only), and with a proposal bank `proposal` (float[B,1,S,S]) and `has_proposal` (bool[B]);
    with a `label_bank` (the evolving copy of a self-evolving method) also `label_proposal` (float[B,1,S,S]; the
    input proposal where the label bank lacks a sample); with `candidates` (a `CandidateBank`, SemiRES) also
    `candidates` (float[B,K,S,S], the image's class-agnostic masks, zero-padded to the batch's largest K) and
    `candidate_valid` (bool[B,K]).
    `flip=True` is the weak view: each item is flipped horizontally with probability 1/2 (from its own
    `aug_seed`), and its text has left/right swapped, so image, mask, proposal, box and words stay consistent.
    """

    def __init__(self, processor: Any, bank: Any = None, priors: Mapping[str, Any] | None = None, flip: bool = False,
                 label_bank: Any = None, candidates: Any = None) -> None:
        self.processor, self.bank, self.priors, self.flip = processor, bank, priors, flip
        self.label_bank = label_bank
        self.candidates = candidates

    @staticmethod
    def _proposal(bank: Any, sample_id: str, input_map: bool = True) -> np.ndarray | None:
        """The sample's map, or None: it has none, or (`input_map`) its prior failed, so it trains prior-free."""
        if bank is None:
            return None
        try:
            if input_map and not bank_has_prior(bank, sample_id):
                return None
            return np.asarray(bank.get(sample_id), dtype=np.float32)
        except KeyError:  # no proposal for this sample: it trains prior-free
            return None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        size = int(self.processor.image_size)
        boxes, sizes, confs, maps = [], [], [], []
        for item in items:
            sid, (h, w) = item["sample"].sample_id, item["image"].shape[:2]
            prior = self.priors.get(sid) if self.priors is not None else None
            usable = prior is not None and prior.status == "ok" and prior.box is not None
            boxes.append(list(prior.box) if usable else [0.0, 0.0, float(w), float(h)])
            sizes.append((h, w))
            confs.append(float(prior.confidence or 0.0) if usable else 0.0)
            maps.append(self._proposal(self.bank, sid))
        texts = [it["text"] for it in items]
        batch: dict[str, Any] = {"pixel_values": self.processor.images([it["image"] for it in items])}
        batch.update(self.processor.texts(texts))
        batch["sample_ids"] = [it["sample"].sample_id for it in items]
        batch["texts"] = texts
        batch["image_ids"] = torch.tensor([int(it["sample"].image_id) for it in items], dtype=torch.long)
        batch["indices"] = torch.tensor([int(it.get("index", -1)) for it in items], dtype=torch.long)
        batch["boxes"] = self.processor.boxes(boxes, sizes)
        batch["prior_conf"] = torch.tensor(confs, dtype=torch.float32)
        if items and all("mask" in it for it in items):
            batch["mask"] = self.processor.masks([it["mask"] for it in items])
        if self.bank is not None:
            filled = [m if m is not None else np.zeros((size, size), np.float32) for m in maps]
            batch["proposal"] = self.processor.maps(filled)
            batch["has_proposal"] = torch.tensor([m is not None for m in maps], dtype=torch.bool)
            if self.label_bank is not None:
                labels = [self._proposal(self.label_bank, sid, input_map=False) for sid in batch["sample_ids"]]
                batch["label_proposal"] = self.processor.maps(
                    [lab if lab is not None else m for lab, m in zip(labels, filled)])
        if self.candidates is not None:
            per = [self.candidates.get(it["sample"].image_id) for it in items]
            k = max((len(c) for c in per), default=0)
            stack = np.zeros((len(items), k, size, size), np.float32)
            valid = torch.zeros(len(items), k, dtype=torch.bool)
            for i, maps in enumerate(per):
                for j, m in enumerate(maps):
                    stack[i, j], valid[i, j] = m, True
            batch["candidates"] = torch.from_numpy(stack)
            batch["candidate_valid"] = valid
        which = [self.flip and np.random.default_rng(int(it.get("aug_seed", 0))).random() < 0.5 for it in items]
        batch["flipped"] = torch.tensor(which, dtype=torch.bool)
        if any(which):
            batch = hflip(batch, batch["flipped"], self.processor.texts)
        return batch


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with every tensor on `device` (lists of ids/texts unchanged)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
