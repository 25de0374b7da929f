"""Label-ratio splits: which training images are labelled in a semi-supervised run.

Labelled data is chosen by image id, so every ref of a chosen image is labelled and no image is
half labelled. The chosen ids go to a JSON file kept with the run, which makes it reproducible
even if the sampling code changes later.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from l2l.data.refer import ReferData
from l2l.errors import ConfigError, DataError

SPLIT_KEYS: tuple[str, ...] = (
    "dataset",
    "split_by",
    "split",
    "ratio",
    "seed",
    "labelled_image_ids",
    "num_images",
    "num_labelled_refs",
)


def make_split(refer: ReferData, ratio: float, seed: int, split: str = "train") -> dict[str, Any]:
    """Choose floor(ratio * #train images) images (at least one) with a seeded RNG; return the split dict."""
    if not (0.0 < float(ratio) <= 1.0):
        raise ConfigError(f"label ratio must be in (0, 1], got {ratio}")
    image_ids = sorted({int(r["image_id"]) for r in refer.refs if r["split"] == split})
    if not image_ids:
        raise DataError(f"{refer.refs_path}: no refs in split '{split}' to choose labelled images from")
    count = max(1, math.floor(float(ratio) * len(image_ids) + 1e-9))
    rng = np.random.default_rng(int(seed))
    chosen = sorted(int(i) for i in rng.choice(np.asarray(image_ids), size=count, replace=False))
    chosen_set = set(chosen)
    num_refs = sum(1 for r in refer.refs if r["split"] == split and int(r["image_id"]) in chosen_set)
    return {
        "dataset": refer.dataset,
        "split_by": refer.split_by,
        "split": split,
        "ratio": float(ratio),
        "seed": int(seed),
        "labelled_image_ids": chosen,
        "num_images": len(image_ids),
        "num_labelled_refs": num_refs,
    }


def split_from_semires(path: str | Path, refer: ReferData, split: str = "train") -> dict[str, Any]:
    """Our split dict from a SemiRES split file, so a run labels exactly the images a published table labelled.

    SemiRES's files are JSON `{"train": [{"iid", "bbox", "cat_id", "refs", "mask_id"}, ...], "val": [...]}`: the
    entries of `train` are the labelled refs (`mask_id` is the ref id), `iid` their image. We label by image, so
    the labelled images are the `iid`s of `train`; every one must be a `split` image of `refer`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: SemiRES split file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    entries = data.get("train") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: expected a JSON object with a non-empty 'train' list (a SemiRES split file)")
    chosen: set[int] = set()
    for i, entry in enumerate(entries):
        iid = entry.get("iid") if isinstance(entry, dict) else None
        if not isinstance(iid, int) or isinstance(iid, bool):
            raise DataError(f"{path}: train[{i}] has no integer 'iid'")
        chosen.add(iid)
    image_ids = {int(r["image_id"]) for r in refer.refs if r["split"] == split}
    unknown = sorted(chosen - image_ids)
    if unknown:
        raise DataError(f"{path}: {len(unknown)} labelled image(s) are not {split} images of "
                        f"{refer.dataset}({refer.split_by}), e.g. {unknown[:3]}; wrong dataset or splitBy?")
    num_refs = sum(1 for r in refer.refs if r["split"] == split and int(r["image_id"]) in chosen)
    return {
        "dataset": refer.dataset,
        "split_by": refer.split_by,
        "split": split,
        "ratio": len(chosen) / len(image_ids),
        "seed": 0,
        "labelled_image_ids": sorted(chosen),
        "num_images": len(image_ids),
        "num_labelled_refs": num_refs,
        "source": f"semires:{path.name}",
    }


def load_split(path: str | Path) -> dict[str, Any]:
    """Read and check a split file; a missing key or a wrong type is a DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a split file is a JSON object")
    missing = [k for k in SPLIT_KEYS if k not in data]
    if missing:
        raise DataError(f"{path}: split file is missing {', '.join(missing)}")
    for key in ("dataset", "split_by", "split"):
        if not isinstance(data[key], str):
            raise DataError(f"{path}: '{key}' must be a string")
    ids = data["labelled_image_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise DataError(f"{path}: 'labelled_image_ids' must be a non-empty list of integers")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: 'labelled_image_ids' has duplicates")
    if not isinstance(data["ratio"], (int, float)) or not (0.0 < float(data["ratio"]) <= 1.0):
        raise DataError(f"{path}: 'ratio' must be a number in (0, 1]")
    for key in ("seed", "num_images", "num_labelled_refs"):
        if not isinstance(data[key], int) or isinstance(data[key], bool):
            raise DataError(f"{path}: '{key}' must be an integer")
    return data
