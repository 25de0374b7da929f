"""Dataset ids, samples, label-ratio splits and the mask-free unlabelled view."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import numpy as np
import pytest

from l2l.cli.main import main
from l2l.data.dataset import DataId, RefSample, RESDataset
from l2l.data.refer import ReferData
from l2l.data.splits import load_split, make_split
from l2l.errors import ConfigError, DataError
from refer_fixtures import IMAGES, make_refer


@pytest.fixture(scope="module")
def split_file(refer_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("splits") / "half.json"
    assert main(["data", "split", "--root", str(refer_root), "--dataset", "refcoco", "--split-by", "unc",
                 "--ratio", "0.5", "--seed", "3", "--out", str(path)]) == 0
    return path


def test_data_id_parse() -> None:
    assert DataId.parse("refcocog/umd/test") == DataId("refcocog", "umd", "test")
    assert str(DataId.parse("shaperefs/unc/testA")) == "shaperefs/unc/testA"
    for bad in ("refcoco/unc", "refcoco//val", "coco/unc/val", "refcoco+/google/val"):
        with pytest.raises(DataError):
            DataId.parse(bad)


def test_all_subset_has_one_sample_per_sentence_with_masks(refer_root: Path) -> None:
    ds = RESDataset(refer_root, "refcoco/unc/train")
    assert len(ds) == 4 * 3  # four train images, three sentences each
    s = ds.samples[0]
    assert isinstance(s, RefSample) and s.sample_id == f"{s.ref_id}:{s.sent_id}"
    assert len({x.sample_id for x in ds.samples}) == len(ds)
    item = ds[0]
    assert set(item) == {"sample", "image", "text", "mask"}
    assert item["image"].dtype == np.uint8 and item["image"].shape == (s.height, s.width, 3)
    assert item["mask"].dtype == np.bool_ and item["mask"].shape == (s.height, s.width)
    assert item["text"] == s.sentence == "the person on the left"
    assert s.box == (2.0, 2.0, 18.0, 20.0)


def test_image_is_rgb_and_a_private_copy(refer_root: Path) -> None:
    import cv2

    ds = RESDataset(refer_root, "refcoco/unc/val")
    bgr = cv2.imread(str(ds.samples[0].image_path))
    img = ds.image(0)
    np.testing.assert_array_equal(img, bgr[:, :, ::-1])
    img[:] = 0
    assert ds.image(0).any()  # the cached copy is unharmed
    assert len(ds._image_cache) <= RESDataset.IMAGE_CACHE_SIZE


def test_missing_image_names_file_and_sample(tmp_path: Path) -> None:
    make_refer(tmp_path)
    ds = RESDataset(tmp_path, "refcoco/unc/val")
    ds.samples[0].image_path.unlink()
    with pytest.raises(DataError, match=r"COCO_train2014_000000000005\.jpg.*sample 50:"):
        ds[0]


def test_split_rule(refer_root: Path) -> None:
    refer = ReferData(refer_root, "refcoco", "unc")
    train_images = {i for i, (_, _, sp) in IMAGES.items() if sp == "train"}
    a, b = make_split(refer, 0.5, seed=1), make_split(refer, 0.5, seed=1)
    assert a == b  # deterministic per seed
    assert len(a["labelled_image_ids"]) == 2 and set(a["labelled_image_ids"]) <= train_images
    assert a["num_images"] == 4 and a["num_labelled_refs"] == 4  # every ref of a chosen image
    picks = {tuple(make_split(refer, 0.5, seed=s)["labelled_image_ids"]) for s in range(12)}
    assert len(picks) > 1  # the seed matters
    assert len(make_split(refer, 0.001, seed=0)["labelled_image_ids"]) == 1  # at least one image
    assert len(make_split(refer, 1.0, seed=0)["labelled_image_ids"]) == 4
    with pytest.raises(ConfigError):
        make_split(refer, 0.0, seed=0)


def test_labelled_and_unlabelled_partition_train(refer_root: Path, split_file: Path) -> None:
    info = load_split(split_file)
    assert info["ratio"] == 0.5 and info["seed"] == 3 and info["split"] == "train"
    lab = RESDataset(refer_root, "refcoco/unc/train", split_file, subset="labelled")
    unl = RESDataset(refer_root, "refcoco/unc/train", split_file, subset="unlabelled")
    full = RESDataset(refer_root, "refcoco/unc/train")
    lab_ids, unl_ids = set(lab.sample_ids()), set(unl.sample_ids())
    assert lab_ids.isdisjoint(unl_ids) and lab_ids | unl_ids == set(full.sample_ids())
    assert {s.image_id for s in lab.samples} == set(info["labelled_image_ids"])
    assert {s.image_id for s in lab.samples}.isdisjoint({s.image_id for s in unl.samples})
    assert "mask" in lab[0]


def test_unlabelled_view_cannot_reach_masks(refer_root: Path, split_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, ref):  # any mask read from the unlabelled view would be a leak
        raise AssertionError("mask read from the unlabelled view")

    monkeypatch.setattr(ReferData, "ref_mask", boom)
    monkeypatch.setattr(ReferData, "ann_mask", boom)
    unl = RESDataset(refer_root, "refcoco/unc/train", split_file, subset="unlabelled")
    assert not unl.has_masks
    for i in range(len(unl)):
        item = unl[i]
        assert "mask" not in item and item["image"].ndim == 3
    with pytest.raises(DataError, match="no masks"):
        unl.mask(0)
    gc.collect()
    assert not any(isinstance(o, ReferData) for o in gc.get_referents(unl) + gc.get_referents(vars(unl)))
    assert all(not isinstance(v, ReferData) for v in vars(unl).values())


def test_split_file_checks(refer_root: Path, split_file: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs a split file"):
        RESDataset(refer_root, "refcoco/unc/train", subset="labelled")
    with pytest.raises(DataError, match="not refcoco/unc/val"):
        RESDataset(refer_root, "refcoco/unc/val", split_file, subset="labelled")
    bad = tmp_path / "bad.json"
    data = json.loads(split_file.read_text())
    del data["labelled_image_ids"]
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad\.json.*labelled_image_ids"):
        load_split(bad)
    data["labelled_image_ids"] = [5]  # a val image
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match="labelled image id 5"):
        RESDataset(refer_root, "refcoco/unc/train", bad, subset="unlabelled")
    with pytest.raises(DataError, match="split file not found"):
        load_split(tmp_path / "nope.json")


def test_unknown_split_is_a_data_error(refer_root: Path) -> None:
    with pytest.raises(DataError, match="no refs in split 'testB'"):
        RESDataset(refer_root, "refcoco/unc/testB")


def test_a_view_keeps_only_its_own_masks_and_decodes_them_as_pycocotools_does(root: Path) -> None:
    """RefCOCO-size instance files: a view holds its split's annotations only, polygons as arrays, same masks."""
    from pycocotools import mask as mask_utils

    raw = json.loads((root / "shaperefs" / "instances.json").read_text())
    raw_anns = {a["id"]: a for a in raw["annotations"]}
    sizes = {i["id"]: (i["height"], i["width"]) for i in raw["images"]}
    ds = RESDataset(root, "shaperefs/unc/val")
    kept = ds._refer.anns
    assert set(kept) == {s.ann_id for s in ds.samples} and len(kept) < len(raw_anns)
    polygons = [a["segmentation"] for a in kept.values() if not isinstance(a["segmentation"], dict)]  # RLE stays
    assert polygons and all(isinstance(p, np.ndarray) for seg in polygons for p in seg)
    for i, s in enumerate(ds.samples[:20]):
        h, w = sizes[s.image_id]
        seg = raw_anns[s.ann_id]["segmentation"]
        rle = ({"size": seg["size"], "counts": seg["counts"].encode()} if isinstance(seg, dict)
               else mask_utils.merge(mask_utils.frPyObjects(seg, h, w)))
        expected = mask_utils.decode(rle).astype(bool)
        np.testing.assert_array_equal(ds.mask(i), expected)
