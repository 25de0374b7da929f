"""`l2l data split --from-semires`: SemiRES's published split files become ours (the same labelled images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2l.cli.main import main
from l2l.data.dataset import DataId, RESDataset
from l2l.data.refer import ReferData
from l2l.data.splits import load_split


def _semires_file(refer: ReferData, path: Path, images: list[int]) -> Path:
    """A fixture in SemiRES's format: one entry per labelled ref, `mask_id` the ref id, `iid` its image."""
    train = [{"iid": int(r["image_id"]), "bbox": refer.ref_box(r), "cat_id": int(r["category_id"]),
              "refs": [s["sent"] for s in r["sentences"]], "mask_id": int(r["ref_id"])}
             for r in refer.refs if r["split"] == "train" and int(r["image_id"]) in images]
    val = [{"iid": int(r["image_id"]), "mask_id": int(r["ref_id"])} for r in refer.refs if r["split"] == "val"]
    path.write_text(json.dumps({"train": train, "val": val}))
    return path


def test_semires_split_labels_the_same_images(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refer = ReferData(root, "shaperefs", "unc")
    train_images = sorted({int(r["image_id"]) for r in refer.refs if r["split"] == "train"})
    chosen = train_images[1::7]
    src = _semires_file(refer, tmp_path / "semires_1pct.json", chosen)
    out = tmp_path / "ours.json"
    assert main(["data", "split", "--root", str(root), "--dataset", "shaperefs", "--split-by", "unc",
                 "--from-semires", str(src), "--out", str(out)]) == 0
    split = load_split(out)
    assert split["labelled_image_ids"] == chosen
    assert split["ratio"] == pytest.approx(len(chosen) / len(train_images))
    labelled = RESDataset(root, DataId("shaperefs", "unc", "train"), out, "labelled")
    assert {s.image_id for s in labelled.samples} == set(chosen)
    # every ref SemiRES labelled is labelled here (we label whole images, so possibly more)
    semires_refs = {e["mask_id"] for e in json.loads(src.read_text())["train"]}
    assert semires_refs <= {int(s.sample_id.split(":")[0]) for s in labelled.samples}


def test_semires_split_from_another_dataset_is_a_clear_error(root: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"train": [{"iid": 987654321, "mask_id": 1}]}))
    code = main(["data", "split", "--root", str(root), "--dataset", "shaperefs", "--split-by", "unc",
                 "--from-semires", str(src), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and "987654321" in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()
