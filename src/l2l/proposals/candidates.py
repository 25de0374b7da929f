"""Class-agnostic candidate masks per image: what SemiRES matches its teacher's mask against.

SemiRES takes SAM's automatic ("everything") masks of an image: every object SAM finds, with no idea which one a
sentence means. With a SAM checkpoint that is what `prepare_candidates` builds (`SamProposer.everything`). Without
one (ShapeRefs, CPU) the stand-in is GrabCut started from the box of *every* annotated instance of the image: the
same kind of input (one mask per object, no expression information), from exact instance boxes, so the stand-in is
if anything kinder to SemiRES than SAM would be. Only boxes are read from the annotations, never their masks.

Candidates live in a `ProposalBank` (uint8 maps at the model's side S) keyed `"<image_id>:<k>"`, next to the
proposal banks: `<cache_dir>/<dataset>_<split_by>_<split>/candidates-<source>-s<S>/`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from l2l.data.dataset import DataId, RESDataset
from l2l.data.refer import ReferData
from l2l.priors import Prior
from l2l.proposals.bank import ProposalBank, prior_key
from l2l.proposals.methods import make_proposal
from l2l.utils.io import atomic_write_json, file_lock
from l2l.proposals.prepare import data_cache_dir


class CandidateBank:
    """image_id -> the image's candidate soft maps `[S, S]` (float32 in [0, 1])."""

    def __init__(self, bank: ProposalBank, by_image: dict[int, list[str]]) -> None:
        self.bank, self.by_image = bank, by_image

    def __len__(self) -> int:
        return len(self.by_image)

    def get(self, image_id: int) -> list[np.ndarray]:
        return [np.asarray(self.bank.get(key), dtype=np.float32) for key in self.by_image.get(int(image_id), [])]

    def most(self) -> int:
        """The largest number of candidates of any image (the batch's padding size)."""
        return max((len(v) for v in self.by_image.values()), default=0)


def _instance_boxes(refer: ReferData) -> dict[int, list[list[float]]]:
    """image_id -> xyxy boxes of its annotations (bbox only: masks are never read here)."""
    boxes: dict[int, list[list[float]]] = {}
    for ann in refer.anns.values():
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w > 0 and h > 0:
            boxes.setdefault(int(ann["image_id"]), []).append([x, y, x + w, y + h])
    return boxes


def prepare_candidates(root: str | os.PathLike, data_id: str | DataId, size: int, cache_dir: str | os.PathLike,
                       sam_checkpoint: str | os.PathLike | None = None, device: str = "cpu",
                       progress: bool = False, save_every: int = 200) -> CandidateBank:
    """Build (once; cached, resumable) the candidate masks of every image of `data_id` at side `size`."""
    data_id = data_id if isinstance(data_id, DataId) else DataId.parse(str(data_id))
    dataset = RESDataset(root, data_id)
    source = "sam" if sam_checkpoint else "grabcut"
    where = data_cache_dir(cache_dir, data_id) / f"candidates-{source}-s{size}"
    with file_lock(where.with_name(where.name + ".lock")):  # a second builder waits, then finds the masks done
        return _build_candidates(root, data_id, dataset, where, size, source, sam_checkpoint, device, progress,
                                 save_every)


def _build_candidates(root: str | os.PathLike, data_id: DataId, dataset: RESDataset, where: Path, size: int,
                      source: str, sam_checkpoint: str | os.PathLike | None, device: str, progress: bool,
                      save_every: int) -> CandidateBank:
    bank = ProposalBank(where, size, source)
    counts_path = where / "images.json"
    counts: dict[str, int] = json.loads(counts_path.read_text(encoding="utf-8")) if counts_path.is_file() else {}
    first: dict[int, int] = {}
    for i, s in enumerate(dataset.samples):
        first.setdefault(int(s.image_id), i)
    todo = [img for img in first if str(img) not in counts]
    boxes = _instance_boxes(ReferData(root, data_id.dataset, data_id.split_by)) if todo and not sam_checkpoint else {}
    sam: Any = None
    from tqdm.auto import tqdm

    def save() -> None:  # rows first, then the index, then the counts that point into it
        bank.save()
        atomic_write_json(counts_path, counts)

    for done, image_id in enumerate(tqdm(todo, desc=f"candidates ({source})", unit="image", disable=not progress), 1):
        image = dataset.image(first[image_id])
        h, w = image.shape[:2]
        if sam_checkpoint:
            if sam is None:
                from l2l.proposals.sam import SamProposer

                sam = SamProposer.from_pretrained(sam_checkpoint, device=device)
            maps = sam.everything(image, image_key=image_id)
        else:
            maps = [make_proposal("grabcut", image, Prior(f"{image_id}:{k}", box, [], 1.0)).map
                    for k, box in enumerate(boxes.get(image_id, []))]
        for k, soft in enumerate(maps):
            bank.put(f"{image_id}:{k}", soft, 1.0, 1.0, prior_key(None, (h, w), extra=f"{source}:{k}"))
        counts[str(image_id)] = len(maps)
        if done % save_every == 0:
            save()
    if todo:
        save()
    by_image = {img: [f"{img}:{k}" for k in range(counts[str(img)])] for img in first}
    return CandidateBank(bank, by_image)
