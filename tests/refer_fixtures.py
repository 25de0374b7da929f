"""Tiny datasets in the real refer layout, for tests of the data layer and anything above it.

The refs pickle is written opcode by opcode the way Python 2's cPickle (protocol 2) writes it: `str`
values are raw byte strings (SHORT_BINSTRING/BINSTRING) that only load with `encoding="latin1"`.
Python 3's own pickler cannot produce that (it pickles `bytes` through a `_codecs.encode` global).
"""

from __future__ import annotations

import copy
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_utils
from skimage import data as skdata

# image_id -> (width, height, split); train has four images so that ratio splits have a choice.
IMAGES: dict[int, tuple[int, int, str]] = {
    1: (48, 32, "train"),
    2: (40, 40, "train"),
    3: (48, 32, "train"),
    4: (40, 40, "train"),
    5: (48, 32, "val"),
    6: (40, 40, "testA"),
}

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "cat"}]


def rect_mask(width: int, height: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask in column-major order, starting with a run of zeros (the COCO convention)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return counts


def rle_mask(image_id: int) -> np.ndarray:
    """The ground truth stored as RLE for the second object of images 1 (compressed) and 2 (uncompressed)."""
    w, h, _ = IMAGES[image_id]
    return rect_mask(w, h, 20, 5, 30, 25)


def file_name(dataset: str, image_id: int) -> str:
    return f"shape_{image_id:06d}.png" if dataset == "shaperefs" else f"COCO_train2014_{image_id:012d}.jpg"


def build_spec(dataset: str = "refcoco") -> tuple[list[dict], dict]:
    """Refs and instances (plain Python) of the fixture; tests may edit them before `write_refer`."""
    images, anns, refs = [], [], []
    sent_id = 100
    for image_id, (w, h, split) in IMAGES.items():
        images.append({"id": image_id, "file_name": file_name(dataset, image_id), "width": w, "height": h})
        # object 1: two disjoint rectangles as polygons (the mask is their union)
        poly = [[2.0, 2.0, 10.0, 2.0, 10.0, 10.0, 2.0, 10.0], [12.0, 14.0, 18.0, 14.0, 18.0, 20.0, 12.0, 20.0]]
        seg2: Any
        if image_id == 1:
            enc = mask_utils.encode(np.asfortranarray(rle_mask(1).astype(np.uint8)))
            seg2 = {"size": [h, w], "counts": enc["counts"].decode("ascii")}
        elif image_id == 2:
            seg2 = {"size": [h, w], "counts": uncompressed_counts(rle_mask(2))}
        else:
            seg2 = [[22.0, 4.0, 34.0, 4.0, 28.0, 24.0]]
        anns.append({"id": image_id * 10 + 1, "image_id": image_id, "category_id": 1, "bbox": [2.0, 2.0, 16.0, 18.0],
                     "segmentation": poly, "area": 100.0, "iscrowd": 0})
        anns.append({"id": image_id * 10 + 2, "image_id": image_id, "category_id": 2, "bbox": [20.0, 4.0, 14.0, 21.0],
                     "segmentation": seg2, "area": 200.0, "iscrowd": 0})
        for k, (ann_id, texts) in enumerate(
            [(image_id * 10 + 1, ["the person on the left", "leftmost person"]), (image_id * 10 + 2, ["cat right"])]
        ):
            ref_id = image_id * 10 + k
            sentences = []
            for t in texts:
                sentences.append({"sent_id": sent_id, "sent": t, "raw": t.capitalize(), "tokens": t.split()})
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": k + 1,
                         "split": split, "sent_ids": [s["sent_id"] for s in sentences],
                         "file_name": file_name(dataset, image_id), "sentences": sentences})
    return refs, {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}


def expected_stats() -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for _, (_, _, split) in IMAGES.items():
        c = out.setdefault(split, {"refs": 0, "sentences": 0, "images": 0})
        c["refs"] += 2
        c["sentences"] += 3
        c["images"] += 1
    return out


# ------------------------------------------------------------------------ Python-2 style pickle
def _py2_pickle(obj: Any, out: bytearray, memo: list[int]) -> None:
    """Append protocol-2 opcodes for obj as Python 2 would write them (str -> byte string)."""

    def put() -> None:
        out.extend(b"q" + bytes([len(memo) % 256]))  # BINPUT, as cPickle memoises containers and strings
        memo.append(1)

    if obj is None:
        out.extend(b"N")
    elif isinstance(obj, bool):
        out.extend(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        out.extend(b"K" + bytes([obj]) if 0 <= obj < 256 else b"J" + struct.pack("<i", obj))
    elif isinstance(obj, float):
        out.extend(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        raw = obj.encode("latin1")
        out.extend(b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw)
        put()
    elif isinstance(obj, list):
        out.extend(b"]")
        put()
        if obj:
            out.extend(b"(")
            for item in obj:
                _py2_pickle(item, out, memo)
            out.extend(b"e")
    elif isinstance(obj, dict):
        out.extend(b"}")
        put()
        if obj:
            out.extend(b"(")
            for key, value in obj.items():
                _py2_pickle(key, out, memo)
                _py2_pickle(value, out, memo)
            out.extend(b"u")
    else:
        raise TypeError(f"fixture pickler does not handle {type(obj).__name__}")


def py2_pickle_bytes(obj: Any) -> bytes:
    out = bytearray(b"\x80\x02")
    _py2_pickle(obj, out, [])
    out.extend(b".")
    return bytes(out)


class _RunsOnLoad:
    """Pickles to `os.system("touch <sentinel>")`: loading it with a plain unpickler creates the file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.sentinel}",))


def malicious_pickles(sentinel: Path) -> dict[str, bytes]:
    """Pickles that run code when loaded by `pickle.load`, in the opcodes of several protocols."""
    return {
        "reduce_protocol4": pickle.dumps([_RunsOnLoad(sentinel)], protocol=4),
        "reduce_protocol2": pickle.dumps({"refs": _RunsOnLoad(sentinel)}, protocol=2),
        "global_protocol0": f"cos\nsystem\n(S'touch {sentinel}'\ntR.".encode(),
        "builtins_eval": f"cbuiltins\neval\n(S'open(\"{sentinel}\", \"w\")'\ntR.".encode(),
    }


# ----------------------------------------------------------------------------------- writing
def image_dir(root: Path, dataset: str) -> Path:
    if dataset == "shaperefs":
        return root / "images" / "shaperefs"
    return root / "images" / "mscoco" / "images" / "train2014"


def write_refer(
    root: Path,
    refs: list[dict],
    instances: dict,
    dataset: str = "refcoco",
    split_by: str = "unc",
    images: bool = True,
) -> Path:
    """Write refs (Python-2 style pickle), instances.json and real small photos; returns root."""
    root = Path(root)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    (root / dataset / f"refs({split_by}).p").write_bytes(py2_pickle_bytes(refs))
    (root / dataset / "instances.json").write_text(json.dumps(instances))
    if images:
        photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]
        folder = image_dir(root, dataset)
        folder.mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(instances["images"]):
            rgb = cv2.resize(photos[k % len(photos)], (int(img["width"]), int(img["height"])), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / img["file_name"]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return root


def make_refer(root: Path, dataset: str = "refcoco", split_by: str = "unc") -> Path:
    """The unmodified fixture dataset."""
    refs, instances = build_spec(dataset)
    return write_refer(root, refs, instances, dataset, split_by)
