"""ShapeRefs: determinism, unique referents, disjoint splits, box-vs-mask gap, refer layout."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO

from l2l.data import shaperefs
from l2l.data.refer import ReferData, load_refs_pickle
from l2l.data.shaperefs_grammar import (
    COLOUR_WORDS,
    NOUNS,
    Filter,
    Query,
    Scene,
    SceneObject,
    refers_uniquely,
    resolve,
)
from l2l.data.shaperefs_scene import CATEGORIES, PHOTOS

N = 30
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")
SEED = 3


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("shaperefs")
    stats = shaperefs.generate(root, N, SEED, progress=False, workers=1)
    return root, stats


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(generated: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = generated
    shaperefs.generate(tmp_path / "again", N, SEED, progress=False, workers=1)
    first, second = _files(root), _files(tmp_path / "again")
    assert len(first) == N + 2
    assert first == second
    shaperefs.generate(tmp_path / "other", 4, SEED + 1, progress=False, workers=1)
    other = _files(tmp_path / "other")
    name = "images/shaperefs/" + shaperefs.file_name(1)
    assert other[name] != first[name]


def test_worker_count_does_not_change_the_output(
    generated: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = generated
    monkeypatch.setattr(shaperefs, "PARALLEL_MIN_IMAGES", 1)
    shaperefs.generate(tmp_path / "two", N, SEED, progress=False, workers=2)
    assert _files(root) == _files(tmp_path / "two")


def _mirror(scene: Scene, query: Query) -> tuple[Scene, Query]:
    """The horizontally flipped scene and the expression with left and right swapped."""
    swap = {"left": "right", "right": "left"}
    objs = tuple(replace(o, cx=scene.width - o.cx) for o in scene.objects)
    d = query.direction
    if query.kind == "corner":
        v, h = d.split()
        d = f"{v} {swap[h]}"
    else:
        d = swap.get(d, d)
    return Scene(scene.width, scene.height, objs), replace(query, direction=d)


def _check_wording(q: Query, sent: str) -> None:
    """The sentence says what the query means: its noun, colour and side words."""
    words = f" {sent} "
    if q.filter.category:
        assert any(f" {n} " in words for n in NOUNS[q.filter.category]), (q, sent)
    if q.filter.colour:
        assert any(f" {c} " in words for c in COLOUR_WORDS[q.filter.colour]), (q, sent)
    side = q.direction.split()[-1] if q.direction else ""
    if side in ("left", "right") and q.kind != "compare":
        assert side in sent and {"left": "right", "right": "left"}[side] not in sent, (q, sent)


def test_every_expression_names_exactly_one_object(generated: tuple[Path, dict]) -> None:
    root, _ = generated
    data = ReferData(root, "shaperefs", "unc")
    splits = shaperefs.split_of_images(N, SEED)
    checked = 0
    for index in range(N):
        rec = shaperefs.make_image(SEED, index, splits[index])
        # The resolver saw the positions of the written (visible) masks.
        for obj, ann in zip(rec.scene.objects, rec.annotations):
            x, y, w, h = data.anns[ann["id"]]["bbox"]
            assert obj.cx == pytest.approx(x + w / 2) and obj.cy == pytest.approx(y + h / 2)
            assert CATEGORIES[data.anns[ann["id"]]["category_id"] - 1] == obj.category
        written = [[s["sent"] for s in r["sentences"]] for r in data.refs if r["image_id"] == index + 1]
        assert written == [[s for _raw, s, _tok in ref.sentences] for ref in rec.refs]
        for ref in rec.refs:
            for q, (_raw, sent, _tok) in zip(ref.queries, ref.sentences):
                _check_wording(q, sent)
                assert resolve(rec.scene, q) == [ref.target]
                assert refers_uniquely(rec.scene, q, ref.target)
                assert refers_uniquely(*_mirror(rec.scene, q), ref.target)  # the text-aware flip keeps it
                checked += 1
    assert checked >= N


def _obj(cx: float, cy: float, category: str = "star", colour: str = "red", scale: float = 30.0) -> SceneObject:
    return SceneObject(category, colour, "small", scale, cx, cy, False)


def test_resolver_rejects_near_ties_and_accepts_clear_cases() -> None:
    # margin = 0.05 * 200 = 10 pixels
    clear = Scene(200, 200, (_obj(20, 100), _obj(100, 100), _obj(180, 100)))
    tied = Scene(200, 200, (_obj(20, 100), _obj(26, 100), _obj(180, 100)))
    left = Query(Filter("star"), "extreme", "left")
    assert refers_uniquely(clear, left, 0)
    assert resolve(tied, left) == [0, 1] and not refers_uniquely(tied, left, 0)
    second = Query(Filter("star"), "ordinal", "left", rank=2)
    assert refers_uniquely(clear, second, 1) and not refers_uniquely(clear, second, 2)
    assert refers_uniquely(clear, Query(Filter("star"), "middle"), 1)
    assert not refers_uniquely(clear, Query(Filter("star")), 0)  # three stars: category alone is ambiguous
    # one star on the right: "the star on the left" would mislead
    lone = Scene(200, 200, (_obj(170, 100), _obj(30, 100, "ring")))
    assert not refers_uniquely(lone, left, 0)
    assert refers_uniquely(lone, Query(Filter("star"), "extreme", "right"), 0)


def test_resolver_comparatives_and_relations() -> None:
    scene = Scene(200, 200, (
        _obj(40, 60, scale=50), _obj(150, 60, scale=30), _obj(100, 150, "ring", "blue"),
        _obj(60, 150, "ring", "green"),
    ))
    assert refers_uniquely(scene, Query(Filter("star"), "compare", "bigger"), 0)
    assert refers_uniquely(scene, Query(Filter("star"), "compare", "smaller"), 1)
    close = replace(scene, objects=(replace(scene.objects[0], scale=34.0),) + scene.objects[1:])
    assert not refers_uniquely(close, Query(Filter("star"), "compare", "bigger"), 0)
    right_of_blue = Query(Filter("star"), "relation", "right", landmark=Filter("ring", colour="blue"))
    assert refers_uniquely(scene, right_of_blue, 1)
    # an ambiguous landmark ("the ring": two rings) makes the relation ambiguous
    assert not refers_uniquely(scene, Query(Filter("star"), "relation", "right", landmark=Filter("ring")), 1)
    near_green = Query(Filter("star"), "relation", "near", landmark=Filter("ring", colour="green"))
    assert refers_uniquely(scene, near_green, 0)


def test_splits_disjoint_and_test_sets_differ_as_stated(generated: tuple[Path, dict]) -> None:
    root, stats = generated
    data = ReferData(root, "shaperefs", "unc")
    images: dict[str, set[int]] = {}
    for ref in data.refs:
        images.setdefault(ref["split"], set()).add(int(ref["image_id"]))
    assert set(images) == {"train", "val", "testA", "testB"}
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not images[a] & images[b], (a, b)
    for ref in data.refs:
        is_photo = data.cats[int(ref["category_id"])] in PHOTOS
        if ref["split"] == "testA":
            assert is_photo
        if ref["split"] == "testB":
            assert not is_photo
    assert stats["splits"]["train"]["images"] == len(images["train"])


def test_box_used_as_mask_scores_at_most_75_miou(generated: tuple[Path, dict]) -> None:
    root, stats = generated
    data = ReferData(root, "shaperefs", "unc")
    ious = []
    for ref in data.refs:
        mask = data.ref_mask(ref)
        x1, y1, x2, y2 = (int(round(v)) for v in data.ref_box(ref))
        box = np.zeros_like(mask)
        box[y1:y2, x1:x2] = True
        iou = (mask & box).sum() / (mask | box).sum()
        ious += [iou] * len(ref["sentences"])
    miou = 100 * float(np.mean(ious))
    assert miou <= 75.0
    assert stats["box_mIoU"] == pytest.approx(miou, abs=0.01)


def test_files_follow_the_refer_layout(generated: tuple[Path, dict]) -> None:
    root, stats = generated
    refs_path = root / "shaperefs" / "refs(unc).p"
    assert refs_path.read_bytes()[:2] == b"\x80\x02"  # pickle protocol 2
    refs = load_refs_pickle(refs_path)
    keys = {"ref_id", "ann_id", "image_id", "category_id", "split", "sent_ids", "file_name", "sentences"}
    coco = COCO(str(root / "shaperefs" / "instances.json"))
    data = ReferData(root, "shaperefs", "unc")
    assert stats["refs"] == len(refs) and stats["sentences"] == sum(len(r["sentences"]) for r in refs)
    assert 0.5 < stats["polygon_annotation_share"] < 1.0  # polygons as in RefCOCO, RLE for holes
    for ref in refs:
        assert set(ref) == keys
        assert [s["sent_id"] for s in ref["sentences"]] == ref["sent_ids"]
        for s in ref["sentences"]:
            assert set(s) == {"sent_id", "sent", "raw", "tokens"}
            assert s["sent"] == s["sent"].lower() and s["tokens"] == s["sent"].split()
        ann = coco.anns[ref["ann_id"]]
        assert ann["image_id"] == ref["image_id"] and ann["iscrowd"] == 0
        assert np.array_equal(coco.annToMask(ann).astype(bool), data.ref_mask(ref))
        assert int(ann["area"]) == int(data.ref_mask(ref).sum())
        img = cv2.imread(str(data.image_path(ref["image_id"])))
        meta = coco.imgs[ref["image_id"]]
        assert img.shape == (meta["height"], meta["width"], 3) and ref["file_name"] == meta["file_name"]
    with open(root / "shaperefs" / "instances.json", encoding="utf-8") as f:
        cats = json.load(f)["categories"]
    assert [c["name"] for c in cats] == list(CATEGORIES)


def test_render_grid_writes_png(generated: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = generated
    out = shaperefs.render_grid(root, tmp_path / "grid.png", n=2)
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100


def _decode(seg: list | dict, h: int, w: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) else dict(
        seg, counts=seg["counts"].encode("ascii"))
    return mask_utils.decode(rle).astype(bool)


def test_segmentation_decodes_to_exactly_the_mask() -> None:
    h, w = 40, 50
    star = np.zeros((h, w), np.uint8)
    cv2.fillPoly(star, [np.array([[25, 2], [30, 15], [45, 15], [33, 24], [38, 38], [25, 29], [12, 38], [17, 24],
                                  [5, 15], [20, 15]], np.int32)], 1)
    ring = np.zeros((h, w), np.uint8)
    cv2.circle(ring, (20, 20), 12, 1, -1)
    cv2.circle(ring, (20, 20), 6, 0, -1)
    pieces = np.zeros((h, w), np.uint8)
    pieces[3, 3] = 1  # a single pixel
    pieces[10:30, 40] = 1  # a one-pixel line
    pieces[30:35, 5:15] = 1
    pieces[38:40, 45:50] = 1  # touching the image corner
    for mask, kind in ((star, list), (ring, dict), (pieces, list)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        seg = shaperefs.segmentation_of(mask.astype(bool), rle)
        assert isinstance(seg, kind)
        assert np.array_equal(_decode(seg, h, w), mask.astype(bool))
