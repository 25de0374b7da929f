"""Class-agnostic candidate masks per image: what SemiRES matches its teacher's mask against.

SemiRES takes SAM's automatic ("everything") masks of an image: every object SAM finds, with no idea which one a
sentence means. With a SAM checkpoint that is what `prepare_candidates` builds (`SamProposer.everything`). Without
one (ShapeRefs, CPU) the stand-in is GrabCut started from the box of *every* annotated instance of the image: the
same kind of input (one mask per object, no expression information), from exact instance boxes, so the stand-in is
if anything kinder to SemiRES than SAM would be. Only boxes are read from the annotations, never their masks.

`matched_labels` turns a proposal bank into a pseudo-label bank: each proposal replaced by the candidate it matches
(SemiRES's IOM or CPI rule, applied to the MLLM's proposal instead of a teacher's mask), before any training.

Candidates live in a `ProposalBank` (uint8 maps at the model's side S) keyed `"<image_id>:<k>"`, next to the
proposal banks: `<cache_dir>/<dataset>_<split_by>_<split>/candidates-<source>-s<S>/`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.data.refer import ReferData
from l2l.errors import ConfigError
from l2l.priors import Prior
from l2l.proposals.bank import ProposalBank, bank_has_prior, prior_key
from l2l.proposals.methods import make_proposal
from l2l.proposals.prepare import data_cache_dir
from l2l.utils.io import atomic_write_json, file_lock

LABEL_INITS = ("proposal", "iom", "cpi")


def match_candidates(teacher_mask: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor, rule: str,
                     iou_match: float = 0.5, overlap: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """`(target [B,1,S,S], matched bool[B])` from the teacher mask `[B,1,S,S]` and soft candidates `[B,K,S,S]`.

    IOM: the best candidate by IoU, when above `iou_match`. CPI: the pixelwise max (union) of every candidate that
    covers most of P or lies mostly inside it. Unmatched rows get a zero target (the caller replaces it)."""
    b, k = candidates.shape[:2]
    if k == 0:
        return teacher_mask.new_zeros(teacher_mask.shape, dtype=torch.float32), torch.zeros(
            b, dtype=torch.bool, device=teacher_mask.device)
    pm = teacher_mask.flatten(1).bool()[:, None, :]  # [B, 1, N]
    cm = (candidates > 0.5).flatten(2)  # [B, K, N]
    inter = (cm & pm).sum(-1).float()
    size_p = pm.sum(-1).float()  # [B, 1]
    size_s = cm.sum(-1).float()
    ok = valid.bool() & (size_s > 0) & (size_p > 0)
    if rule == "iom":
        iou = torch.where(ok, inter / (size_p + size_s - inter).clamp_min(1.0), torch.full_like(inter, -1.0))
        best_iou, best = iou.max(1)
        matched = best_iou > iou_match
        target = candidates[torch.arange(b, device=candidates.device), best][:, None]
    elif rule == "cpi":
        sel = ok & ((inter / size_p.clamp_min(1.0) > overlap) | (inter / size_s.clamp_min(1.0) > overlap))
        matched = sel.any(1)
        target = torch.where(sel[:, :, None, None], candidates, torch.zeros_like(candidates)).amax(1, keepdim=True)
    else:
        raise ConfigError(f"method.match={rule!r}: expected 'iom' or 'cpi'")
    return torch.where(matched.view(-1, 1, 1, 1), target.float(), torch.zeros_like(target, dtype=torch.float32)), matched


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


def matched_labels(bank: ProposalBank, candidates: CandidateBank, dataset: RESDataset, rule: str,
                   iou_match: float = 0.5, overlap: float = 0.7) -> ProposalBank:
    """The pseudo-label bank that starts from `bank` (the MLLM's proposals) with each proposal replaced by the
    candidate it matches under `rule` (iom | cpi), kept where none matches or the prior failed.

    Why: the candidates are whole objects found without the sentence, so a proposal from a jittered or loose box
    that matches one is replaced by that object's own mask (ShapeRefs train: hidden-mask mIoU 68.4 -> 72.1 with
    IOM, `benchmarks/label_sources.py`). Built once beside `bank` as `<bank>-labels-<rule>` (locked, written under
    a temporary name, then renamed) and opened read-only; entries keep the proposal's key, quality and confidence."""
    if rule not in ("iom", "cpi"):
        raise ConfigError(f"label bank rule {rule!r}: expected 'iom' or 'cpi'")
    path = bank.path.with_name(f"{bank.path.name}-labels-{rule}")
    with file_lock(path.with_name(path.name + ".lock")):
        if not (path / "index.json").is_file():
            tmp = path.with_name(f".{path.name}.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            out = ProposalBank(tmp, bank.size, bank.method, read_size=bank.read_size)
            valid_one = torch.ones(1, 1, dtype=torch.bool)
            for s in dataset.samples:
                if s.sample_id not in bank:
                    continue
                soft = bank.stored(s.sample_id)
                cands = candidates.get(s.image_id) if bank_has_prior(bank, s.sample_id) else []
                if cands:
                    q = torch.from_numpy(np.asarray(bank.get(s.sample_id), np.float32))[None, None]
                    stack = torch.from_numpy(np.stack(cands))[None]
                    target, hit = match_candidates(q > 0.5, stack, valid_one.expand(1, len(cands)), rule,
                                                   iou_match, overlap)
                    if bool(hit[0]):
                        soft = target[0, 0].numpy()
                out.put(s.sample_id, soft, bank.quality(s.sample_id), bank.confidence(s.sample_id),
                        str(bank.key(s.sample_id)), bank.reason(s.sample_id))
            out.save()
            os.replace(tmp, path)
    return ProposalBank(path, bank.size, bank.method, readonly=True, read_size=bank.read_size)
