"""Named dataset ids and the sample-level `RESDataset` used by training, evaluation and priors.

A sample is one sentence of one ref (evaluation iterates every sentence of every ref, as LAVT and
CRIS do). The unlabelled view of a semi-supervised split holds no mask and no way to read one, so
a method cannot peek at ground truth it is not supposed to have.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from l2l.data.refer import DATASETS, ReferData, load_image
from l2l.data.splits import load_split
from l2l.errors import DataError

SUBSETS: tuple[str, ...] = ("all", "labelled", "unlabelled")


@dataclass(frozen=True)
class DataId:
    """`dataset/split_by/split`, e.g. `refcoco/unc/val` or `shaperefs/unc/testA`."""

    dataset: str
    split_by: str
    split: str

    @classmethod
    def parse(cls, text: str) -> "DataId":
        parts = str(text).strip().split("/")
        if len(parts) != 3 or not all(parts):
            raise DataError(f"dataset id '{text}' is not of the form dataset/split_by/split (e.g. refcoco/unc/val)")
        dataset, split_by, split = parts
        if dataset not in DATASETS:
            raise DataError(f"dataset id '{text}': unknown dataset '{dataset}'; known: {', '.join(DATASETS)}")
        if split_by not in DATASETS[dataset]:
            raise DataError(
                f"dataset id '{text}': '{dataset}' has no splitBy '{split_by}'; it has: {', '.join(DATASETS[dataset])}"
            )
        return cls(dataset, split_by, split)

    def __str__(self) -> str:
        return f"{self.dataset}/{self.split_by}/{self.split}"


@dataclass(frozen=True)
class RefSample:
    """One sentence of one ref; `box` is [x1, y1, x2, y2] in original image pixels."""

    sample_id: str
    ref_id: int
    sent_id: int
    ann_id: int
    image_id: int
    category_id: int
    sentence: str
    image_path: Path
    box: tuple[float, float, float, float]
    width: int
    height: int


def _sentence_text(sent: dict) -> str:
    """The cleaned lower-case sentence (`sent`), as CRIS and most RES code feed the text encoder."""
    return str(sent.get("sent") or sent.get("raw"))


class RESDataset(Dataset):
    """Samples of one `dataset/split_by/split`, optionally restricted to the labelled or unlabelled part."""

    # Decoded images kept per dataset object (and per DataLoader worker); consecutive samples share images.
    IMAGE_CACHE_SIZE = 8

    def __init__(
        self,
        root: str | Path,
        data_id: str | DataId,
        split_file: str | Path | None = None,
        subset: str = "all",
    ) -> None:
        self.data_id = data_id if isinstance(data_id, DataId) else DataId.parse(data_id)
        if subset not in SUBSETS:
            raise DataError(f"unknown subset '{subset}'; expected one of {', '.join(SUBSETS)}")
        self.subset = subset
        refer = ReferData(root, self.data_id.dataset, self.data_id.split_by)
        if self.data_id.split not in refer.splits():
            raise DataError(
                f"{refer.refs_path}: no refs in split '{self.data_id.split}' (splits: {', '.join(refer.splits())})"
            )
        refs = refer.refs_of_split(self.data_id.split)
        self.split_info: dict[str, Any] | None = None
        if subset != "all":
            refs = self._select(refer, refs, split_file)
        elif split_file is not None:
            raise DataError(f"{split_file}: a split file needs subset 'labelled' or 'unlabelled', not 'all'")
        self.samples: list[RefSample] = []
        paths: dict[int, Path] = {}
        for ref in refs:
            image_id = int(ref["image_id"])
            img = refer.images[image_id]
            if image_id not in paths:
                paths[image_id] = refer.image_path(image_id)
            box = tuple(refer.ref_box(ref))
            for sent in ref["sentences"]:
                self.samples.append(
                    RefSample(
                        sample_id=f"{int(ref['ref_id'])}:{int(sent['sent_id'])}",
                        ref_id=int(ref["ref_id"]),
                        sent_id=int(sent["sent_id"]),
                        ann_id=int(ref["ann_id"]),
                        image_id=image_id,
                        category_id=int(ref["category_id"]),
                        sentence=_sentence_text(sent),
                        image_path=paths[image_id],
                        box=box,  # type: ignore[arg-type]
                        width=int(img["width"]),
                        height=int(img["height"]),
                    )
                )
        refer.keep_only({s.ann_id for s in self.samples})
        self.has_masks = subset != "unlabelled"
        # The unlabelled view drops the reader entirely: nothing reachable from it can decode a mask.
        self._refer: ReferData | None = refer if self.has_masks else None
        self._image_cache: OrderedDict[Path, np.ndarray] = OrderedDict()

    def _select(self, refer: ReferData, refs: list[dict], split_file: str | Path | None) -> list[dict]:
        if split_file is None:
            raise DataError(f"subset '{self.subset}' of {self.data_id} needs a split file (l2l data split)")
        info = load_split(split_file)
        if (info["dataset"], info["split_by"], info["split"]) != (
            self.data_id.dataset,
            self.data_id.split_by,
            self.data_id.split,
        ):
            raise DataError(
                f"{split_file}: split file is for {info['dataset']}/{info['split_by']}/{info['split']}, "
                f"not {self.data_id}"
            )
        split_images = {int(r["image_id"]) for r in refs}
        labelled = {int(i) for i in info["labelled_image_ids"]}
        unknown = sorted(labelled - split_images)
        if unknown:
            raise DataError(f"{split_file}: labelled image id {unknown[0]} has no refs in {self.data_id}")
        self.split_info = info
        keep = self.subset == "labelled"
        return [r for r in refs if (int(r["image_id"]) in labelled) == keep]

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> np.ndarray:
        """RGB uint8[H, W, 3] of a sample (a private copy, so callers may modify it)."""
        s = self.samples[index]
        cached = self._image_cache.get(s.image_path)
        if cached is None:
            cached = load_image(s.image_path, f"sample {s.sample_id} of {self.data_id}")
            if cached.shape[:2] != (s.height, s.width):
                raise DataError(
                    f"{s.image_path}: image is {cached.shape[1]}x{cached.shape[0]} but instances.json says "
                    f"{s.width}x{s.height} (image_id {s.image_id})"
                )
            self._image_cache[s.image_path] = cached
            while len(self._image_cache) > self.IMAGE_CACHE_SIZE:
                self._image_cache.popitem(last=False)
        else:
            self._image_cache.move_to_end(s.image_path)
        return cached.copy()

    def mask(self, index: int) -> np.ndarray:
        """Ground-truth bool[H, W] of a sample; the unlabelled view refuses."""
        if self._refer is None:
            raise DataError(f"{self.data_id}: the unlabelled subset has no masks")
        s = self.samples[index]
        return self._refer.ref_mask(self._refer.refs_by_id[s.ref_id])

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        item: dict[str, Any] = {"sample": s, "image": self.image(index), "text": s.sentence}
        if self.has_masks:
            item["mask"] = self.mask(index)
        return item

    def sample_ids(self) -> list[str]:
        return [s.sample_id for s in self.samples]
