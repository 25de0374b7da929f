"""Reader for the refer format (RefCOCO, RefCOCO+, RefCOCOg and the synthetic ShapeRefs).

The layout is the one of the original `refer` toolkit so that the downloaded files work as they are:
`root/<dataset>/refs(<split_by>).p` (a pickle written by Python 2) and `root/<dataset>/instances.json`
(COCO style). A pickle can run code while it loads, so the refs file goes through an unpickler that
admits plain containers and scalars only. Every inconsistency raises `DataError` naming the file and
the entry, because a silent skip would change the benchmark.
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import json
import pickle
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pycocotools.mask as mask_utils

from l2l.errors import DataError

# dataset -> the splitBy variants the originals ship.
DATASETS: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "shaperefs": ("unc",),
}

# Listing order for splits(); anything else follows alphabetically.
SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test", "testA", "testB", "testC")

REF_KEYS: tuple[str, ...] = ("ref_id", "ann_id", "image_id", "category_id", "split", "sentences")

# Polygon vertices may sit on the far image border (x == width); allow one pixel beyond for rounding.
_POLYGON_TOLERANCE = 1.0


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building millions of small containers (it would rescan them repeatedly)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global, so loading can only build dicts, lists, strings and numbers."""

    def __init__(self, file: io.BufferedIOBase, source: Path) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        raise DataError(
            f"{self._source}: the pickle asks for the global '{module}.{name}'; refs pickles may hold only "
            "plain containers and scalars, so it was refused and nothing was run"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compressed_rle_counts(raw: bytes) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (the format pycocotools writes: 5-bit groups offset by 48,
    a continuation bit 0x20, sign bit 0x10, runs from the third on stored as differences to the run two back), or
    None for a string that is not one. Validation needs them: pycocotools decodes some malformed strings into
    masks of uninitialised memory instead of failing."""
    counts: list[int] = []
    p = 0
    while p < len(raw):
        x, k, more = 0, 0, True
        while more:
            if p >= len(raw):
                return None
            c = raw[p] - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def load_refs_pickle(path: str | Path) -> Any:
    """Load a refs pickle safely: Python-2 byte strings decode as latin1, any global is refused."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: refs file not found")
    data = path.read_bytes()
    try:
        with _gc_paused():
            return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except DataError:
        raise
    except Exception as exc:  # a truncated or corrupt pickle raises many different types
        raise DataError(f"{path}: not a readable refs pickle ({type(exc).__name__}: {exc})") from None


def _compact_polygons(seg: Any) -> Any:
    """Polygons as float64 arrays instead of lists of Python floats (a quarter of the memory: RefCOCO-size
    instance files hold tens of millions of coordinates); anything else, malformed polygons included, stays as
    it is for `_ann_rle` to check when the mask is first asked for."""
    if not isinstance(seg, list) or not all(isinstance(p, list) for p in seg):
        return seg
    try:
        arrays = [np.asarray(p, dtype=np.float64) for p in seg]
    except (TypeError, ValueError):
        return seg
    return arrays if all(a.ndim == 1 for a in arrays) else seg


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: instances file not found")
    try:
        with open(path, encoding="utf-8") as f, _gc_paused():
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


class ReferData:
    """One dataset/splitBy in the refer layout: refs, images, annotations, categories and their masks."""

    def __init__(self, root: str | Path, dataset: str, split_by: str) -> None:
        if dataset not in DATASETS:
            raise DataError(f"unknown dataset '{dataset}'; known: {', '.join(DATASETS)}")
        if split_by not in DATASETS[dataset]:
            raise DataError(
                f"dataset '{dataset}' has no splitBy '{split_by}'; it has: {', '.join(DATASETS[dataset])}"
            )
        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        self.image_dir = (
            self.root / "images" / "shaperefs"
            if dataset == "shaperefs"
            else self.root / "images" / "mscoco" / "images" / "train2014"
        )
        self.refs_path = self.root / dataset / f"refs({split_by}).p"
        self.instances_path = self.root / dataset / "instances.json"
        refs = load_refs_pickle(self.refs_path)
        instances = _load_json(self.instances_path)
        self.images: dict[int, dict] = {}
        self.anns: dict[int, dict] = {}
        self.cats: dict[int, str] = {}
        self._read_instances(instances)
        self.refs: list[dict] = self._check_refs(refs)
        self.refs_by_id: dict[int, dict] = {int(r["ref_id"]): r for r in self.refs}

    # ----------------------------------------------------------------- loading and structure checks
    def _read_instances(self, instances: Any) -> None:
        where = self.instances_path
        if not isinstance(instances, dict):
            raise DataError(f"{where}: expected a JSON object with images/annotations/categories")
        for key in ("images", "annotations", "categories"):
            if not isinstance(instances.get(key), list):
                raise DataError(f"{where}: missing or non-list '{key}'")
        for i, img in enumerate(instances["images"]):
            if not isinstance(img, dict) or any(k not in img for k in ("id", "file_name", "height", "width")):
                raise DataError(f"{where}: images[{i}] needs id, file_name, height and width")
            if not (_is_int(img["id"]) and _is_int(img["height"]) and _is_int(img["width"])):
                raise DataError(f"{where}: images[{i}] needs integer id, height and width")
            if img["height"] <= 0 or img["width"] <= 0 or not isinstance(img["file_name"], str):
                raise DataError(f"{where}: image id {img['id']} has a non-positive size or no file name")
            self.images[img["id"]] = img
        for i, ann in enumerate(instances["annotations"]):
            if not isinstance(ann, dict) or any(k not in ann for k in ("id", "image_id", "bbox", "segmentation")):
                raise DataError(f"{where}: annotations[{i}] needs id, image_id, bbox and segmentation")
            if not (_is_int(ann["id"]) and _is_int(ann["image_id"])):
                raise DataError(f"{where}: annotations[{i}] needs integer id and image_id")
            if ann["image_id"] not in self.images:
                raise DataError(f"{where}: annotation id {ann['id']} points to unknown image_id {ann['image_id']}")
            bbox = ann["bbox"]
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise DataError(f"{where}: annotation id {ann['id']} has a bbox that is not [x, y, w, h]")
            if not all(math.isfinite(float(v)) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
                raise DataError(f"{where}: annotation id {ann['id']} has a bbox {list(bbox)} with a negative or "
                                "non-finite width/height (COCO boxes are [x, y, w, h])")
            ann["segmentation"] = _compact_polygons(ann["segmentation"])
            self.anns[ann["id"]] = ann
        for i, cat in enumerate(instances["categories"]):
            if not isinstance(cat, dict) or not _is_int(cat.get("id")) or "name" not in cat:
                raise DataError(f"{where}: categories[{i}] needs an integer id and a name")
            self.cats[cat["id"]] = str(cat["name"])

    def keep_only(self, ann_ids: set[int]) -> None:
        """Drop every annotation but `ann_ids` (and the refs of the others): a dataset view keeps the masks of its
        own split only, not RefCOCO's whole instances file once per view and loader worker."""
        self.anns = {k: v for k, v in self.anns.items() if k in ann_ids}
        self.refs = [r for r in self.refs if int(r["ann_id"]) in ann_ids]
        self.refs_by_id = {int(r["ref_id"]): r for r in self.refs}

    def _check_refs(self, refs: Any) -> list[dict]:
        where = self.refs_path
        if not isinstance(refs, list):
            raise DataError(f"{where}: expected a list of refs, found {type(refs).__name__}")
        seen: set[int] = set()
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict):
                raise DataError(f"{where}: ref #{i} is a {type(ref).__name__}, not a dict")
            missing = [k for k in REF_KEYS if k not in ref]
            if missing:
                name = f"ref_id {ref['ref_id']}" if "ref_id" in ref else f"ref #{i}"
                raise DataError(f"{where}: {name} is missing {', '.join(missing)}")
            bad = [k for k in ("ref_id", "ann_id", "image_id", "category_id") if not _is_int(ref[k])]
            if bad:
                raise DataError(f"{where}: ref #{i} has a non-integer {', '.join(bad)}")
            rid = ref["ref_id"]
            if rid in seen:
                raise DataError(f"{where}: ref_id {rid} appears twice")
            seen.add(rid)
            if int(ref["ann_id"]) not in self.anns:
                raise DataError(f"{where}: ref_id {rid} has ann_id {ref['ann_id']}, not in {self.instances_path}")
            if int(ref["image_id"]) not in self.images:
                raise DataError(
                    f"{where}: ref_id {rid} has image_id {ref['image_id']}, not in {self.instances_path}"
                )
            if int(self.anns[int(ref["ann_id"])]["image_id"]) != int(ref["image_id"]):
                raise DataError(f"{where}: ref_id {rid} has ann_id {ref['ann_id']} of another image")
            sents = ref["sentences"]
            if not isinstance(sents, list) or not sents:
                raise DataError(f"{where}: ref_id {rid} has no sentences")
            for j, sent in enumerate(sents):
                if not isinstance(sent, dict) or "sent_id" not in sent or not ("sent" in sent or "raw" in sent):
                    raise DataError(f"{where}: ref_id {rid} sentences[{j}] needs sent_id and sent")
                text = sent.get("sent", sent.get("raw"))
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{where}: ref_id {rid} sent_id {sent['sent_id']} has an empty sentence")
        return refs

    # ----------------------------------------------------------------------------- queries
    def splits(self) -> list[str]:
        """Split names present in the refs, in the conventional order (train, val, test, testA, testB)."""
        names = {str(r["split"]) for r in self.refs}
        known = [s for s in SPLIT_ORDER if s in names]
        return known + sorted(names - set(known))

    def refs_of_split(self, split: str) -> list[dict]:
        return [r for r in self.refs if r["split"] == split]

    def image_path(self, image_id: int) -> Path:
        """Where the original layout keeps the image file (not checked; see `load_image`)."""
        img = self.images.get(int(image_id))
        if img is None:
            raise DataError(f"{self.instances_path}: unknown image_id {image_id}")
        return self.image_dir / img["file_name"]

    def ref_box(self, ref: dict) -> list[float]:
        """Box of the referred annotation as [x1, y1, x2, y2] in original image pixels."""
        x, y, w, h = (float(v) for v in self.anns[int(ref["ann_id"])]["bbox"])
        return [x, y, x + w, y + h]

    def ann_mask(self, ann_id: int) -> np.ndarray:
        """Union of an annotation's polygons or its RLE as bool[H, W] at the image's size."""
        ann = self.anns[int(ann_id)]
        img = self.images[int(ann["image_id"])]
        h, w = int(img["height"]), int(img["width"])
        rle = self._ann_rle(ann, h, w)
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword deprecation, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            return mask_utils.decode(rle).astype(bool)

    def ref_mask(self, ref: dict) -> np.ndarray:
        """Ground-truth mask of a ref: bool[H, W]."""
        return self.ann_mask(int(ref["ann_id"]))

    # --------------------------------------------------------------------------- validation
    def _ann_rle(self, ann: dict, h: int, w: int, encode: bool = True) -> dict | None:
        """Check one annotation's segmentation against its image; return it as one compressed RLE if
        `encode` (validation skips the rasterising, which dominates the cost on RefCOCO's 50k refs)."""
        seg = ann["segmentation"]
        entry = f"{self.instances_path}: annotation id {ann['id']} (image_id {ann['image_id']})"
        if isinstance(seg, list):
            if not seg:
                raise DataError(f"{entry} has an empty segmentation")
            for k, poly in enumerate(seg):
                if not isinstance(poly, (list, np.ndarray)) or len(poly) < 6 or len(poly) % 2:
                    raise DataError(f"{entry}: polygon {k} needs an even number (>= 6) of coordinates")
                try:
                    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                except (TypeError, ValueError):
                    raise DataError(f"{entry}: polygon {k} has a non-numeric coordinate") from None
                if not np.isfinite(xy).all():
                    raise DataError(f"{entry}: polygon {k} has a non-finite coordinate")
                lo, hi = xy.min(axis=0), xy.max(axis=0)
                tol = _POLYGON_TOLERANCE
                if lo[0] < -tol or lo[1] < -tol or hi[0] > w + tol or hi[1] > h + tol:
                    raise DataError(
                        f"{entry}: polygon {k} spans x {lo[0]:g}..{hi[0]:g}, y {lo[1]:g}..{hi[1]:g}, "
                        f"outside the {w}x{h} image"
                    )
            return mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if encode else None
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            size = seg["size"]
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) for v in size)):
                raise DataError(f"{entry}: RLE size must be two integers [height, width], got {size!r}")
            if [int(v) for v in size] != [h, w]:
                raise DataError(f"{entry}: RLE size {list(size)} differs from the image size [{h}, {w}]")
            counts = seg["counts"]
            if isinstance(counts, list):
                if not all(_is_int(c) and c >= 0 for c in counts):
                    raise DataError(f"{entry}: RLE counts must be non-negative integers")
                if sum(counts) != h * w:
                    raise DataError(f"{entry}: RLE counts sum to {sum(counts)}, expected {h * w}")
                return mask_utils.frPyObjects(seg, h, w) if encode else None
            if isinstance(counts, (str, bytes)):
                try:
                    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
                except UnicodeEncodeError:
                    raise DataError(f"{entry}: compressed RLE counts must be ASCII") from None
                runs = _compressed_rle_counts(raw)
                if runs is None or min(runs, default=0) < 0 or sum(runs) != h * w:
                    raise DataError(f"{entry}: compressed RLE counts do not decode to a {h}x{w} mask")
                return {"size": [h, w], "counts": raw}
            raise DataError(f"{entry}: RLE counts must be a list or a string")
        raise DataError(f"{entry}: segmentation is neither polygons nor RLE")

    def validate(self, check_images: bool = False, progress: bool = False) -> None:
        """Check every referred annotation's segmentation and, if asked, that each image file decodes to the size
        `instances.json` gives (a file of random bytes would otherwise stop training at its first use; RefCOCO's
        17k train images take a few minutes on one core)."""
        for ann_id in sorted({int(r["ann_id"]) for r in self.refs}):
            ann = self.anns[ann_id]
            img = self.images[int(ann["image_id"])]
            self._ann_rle(ann, int(img["height"]), int(img["width"]), encode=False)
        if check_images:
            from tqdm.auto import tqdm

            for image_id in tqdm(sorted({int(r["image_id"]) for r in self.refs}), desc="decoding images",
                                 unit="image", disable=not progress):
                path = self.image_path(image_id)
                image = load_image(path, f"image_id {image_id}")
                img = self.images[image_id]
                if image.shape[:2] != (int(img["height"]), int(img["width"])):
                    raise DataError(f"{path}: decodes to {image.shape[1]}x{image.shape[0]}, but {self.instances_path} "
                                    f"says {img['width']}x{img['height']} (image_id {image_id})")

    def stats(self) -> dict[str, dict[str, int]]:
        """Per split: number of refs, sentences and distinct images."""
        out: dict[str, dict[str, int]] = {}
        for split in self.splits():
            refs = self.refs_of_split(split)
            out[split] = {
                "refs": len(refs),
                "sentences": sum(len(r["sentences"]) for r in refs),
                "images": len({int(r["image_id"]) for r in refs}),
            }
        return out


def load_image(path: str | Path, context: str = "") -> np.ndarray:
    """Read an image file as uint8[H, W, 3] RGB; a missing or unreadable file is a DataError."""
    import cv2

    path = Path(path)
    suffix = f" ({context})" if context else ""
    if not path.is_file():
        raise DataError(f"{path}: image file not found{suffix}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataError(f"{path}: not a readable image{suffix}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
