"""Refer-format reader: safe unpickling, masks, paths, validation, and the `l2l data` CLI on broken data."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from l2l.cli.main import main
from l2l.data.refer import ReferData, load_refs_pickle
from l2l.errors import DataError
from refer_fixtures import (
    build_spec,
    expected_stats,
    make_refer,
    malicious_pickles,
    py2_pickle_bytes,
    rle_mask,
    write_refer,
)


def test_python2_pickle_with_latin1_bytes_loads(tmp_path: Path) -> None:
    obj = [{"sent": "caf\xe9 on the left", "ref_id": 7, "score": 0.5, "tokens": ["caf\xe9"], "none": None}]
    blob = py2_pickle_bytes(obj)
    assert b"U" in blob and b"caf\xe9" in blob  # raw latin1 byte string, as Python 2 writes it
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(blob)  # the default ASCII decoding fails; the reader must use latin1
    path = tmp_path / "refs(unc).p"
    path.write_bytes(blob)
    assert load_refs_pickle(path) == obj


@pytest.mark.parametrize("protocol", [0, 2])
def test_plain_pickles_of_old_protocols_load(tmp_path: Path, protocol: int) -> None:
    obj = [{"ref_id": 1, "sentences": [{"sent": "left dog", "sent_id": 3}], "split": "train"}]
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    assert load_refs_pickle(path) == obj


@pytest.mark.parametrize("kind", ["reduce_protocol4", "reduce_protocol2", "global_protocol0", "builtins_eval"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, kind: str) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(malicious_pickles(sentinel)[kind])
    with pytest.raises(DataError) as err:
        load_refs_pickle(path)
    msg = str(err.value)
    assert str(path) in msg
    assert ("os.system" in msg or "posix.system" in msg) if kind != "builtins_eval" else "builtins.eval" in msg
    assert not sentinel.exists()


def test_malicious_refs_via_cli_exits_2_without_running(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_refer(tmp_path)
    sentinel = tmp_path / "pwned"
    (tmp_path / "refcoco" / "refs(unc).p").write_bytes(malicious_pickles(sentinel)["reduce_protocol4"])
    code = main(["data", "stats", "--root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc"])
    err = capsys.readouterr().err
    assert code == 2 and "refs(unc).p" in err and "system" in err and "Traceback" not in err
    assert not sentinel.exists()


def test_reader_attributes_and_paths(refer_root: Path) -> None:
    refer = ReferData(refer_root, "refcoco", "unc")
    assert refer.splits() == ["train", "val", "testA"]
    assert len(refer.refs) == 12 and len(refer.images) == 6 and len(refer.anns) == 12
    assert refer.cats == {1: "person", 2: "cat"}
    assert refer.image_path(3) == refer_root / "images/mscoco/images/train2014/COCO_train2014_000000000003.jpg"
    assert refer.ref_box(refer.refs_by_id[10]) == [2.0, 2.0, 18.0, 20.0]
    assert refer.stats() == expected_stats()


def test_shaperefs_image_path(tmp_path: Path) -> None:
    make_refer(tmp_path, dataset="shaperefs")
    refer = ReferData(tmp_path, "shaperefs", "unc")
    assert refer.image_path(2) == tmp_path / "images/shaperefs/shape_000002.png"
    refer.validate(check_images=True)


def test_polygon_mask_is_union_of_parts(refer_root: Path) -> None:
    refer = ReferData(refer_root, "refcoco", "unc")
    mask = refer.ref_mask(refer.refs_by_id[30])  # image 3 (48x32), two disjoint squares
    assert mask.dtype == np.bool_ and mask.shape == (32, 48)
    assert mask[5, 5] and mask[17, 15]  # inside each part
    assert not mask[12, 11] and not mask[30, 40]  # between the parts, and far away
    assert mask[2:10, 2:10].all() and mask[14:20, 12:18].all()
    assert mask.sum() == 64 + 36  # exactly the two squares, nothing else


@pytest.mark.parametrize("image_id", [1, 2])  # 1: compressed string counts, 2: uncompressed list counts
def test_rle_masks_decode_exactly(refer_root: Path, image_id: int) -> None:
    refer = ReferData(refer_root, "refcoco", "unc")
    mask = refer.ref_mask(refer.refs_by_id[image_id * 10 + 1])
    np.testing.assert_array_equal(mask, rle_mask(image_id))


def test_stats_json_cli_matches_counts(refer_root: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["data", "stats", "--root", str(refer_root), "--dataset", "refcoco", "--split-by", "unc", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    assert json.loads(out) == {"splits": expected_stats()}


def test_stats_text_table(refer_root: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "stats", "--root", str(refer_root), "--dataset", "refcoco", "--split-by", "unc"]) == 0
    out = capsys.readouterr().out
    assert "testA" in out and "sentences" in out


def _break_missing_image(refer_root: Path) -> tuple[str, str]:
    refs, inst = build_spec()
    write_refer(refer_root, refs, inst)
    (refer_root / "images/mscoco/images/train2014/COCO_train2014_000000000005.jpg").unlink()
    return "COCO_train2014_000000000005.jpg", "image_id 5"


def _break_ref_keys(refer_root: Path) -> tuple[str, str]:
    refs, inst = build_spec()
    del refs[3]["sentences"]
    write_refer(refer_root, refs, inst)
    return "refs(unc).p", f"ref_id {refs[3]['ref_id']} is missing sentences"


def _break_ref_ann(refer_root: Path) -> tuple[str, str]:
    refs, inst = build_spec()
    refs[2]["ann_id"] = 999
    write_refer(refer_root, refs, inst)
    return "refs(unc).p", f"ref_id {refs[2]['ref_id']} has ann_id 999"


def _break_ref_no_sentences(refer_root: Path) -> tuple[str, str]:
    refs, inst = build_spec()
    refs[5]["sentences"] = []
    write_refer(refer_root, refs, inst)
    return "refs(unc).p", f"ref_id {refs[5]['ref_id']} has no sentences"


def _break_polygon(refer_root: Path) -> tuple[str, str]:
    refs, inst = build_spec()
    inst["annotations"][4]["segmentation"] = [[2.0, 2.0, 90.0, 2.0, 90.0, 10.0, 2.0, 10.0]]
    write_refer(refer_root, refs, inst)
    return "instances.json", f"annotation id {inst['annotations'][4]['id']}"


def _break_missing_instances(refer_root: Path) -> tuple[str, str]:
    make_refer(refer_root)
    (refer_root / "refcoco/instances.json").unlink()
    return "instances.json", "not found"


def _break_missing_refs(refer_root: Path) -> tuple[str, str]:
    make_refer(refer_root)
    (refer_root / "refcoco/refs(unc).p").unlink()
    return "refs(unc).p", "not found"


@pytest.mark.parametrize(
    "breaker",
    [
        _break_missing_image,
        _break_ref_keys,
        _break_ref_ann,
        _break_ref_no_sentences,
        _break_polygon,
        _break_missing_instances,
        _break_missing_refs,
    ],
)
def test_broken_data_gives_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture, breaker) -> None:
    file_part, entry_part = breaker(tmp_path)
    for argv in (
        ["data", "stats", "--root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc", "--json"],
        ["data", "split", "--root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc", "--ratio", "0.5",
         "--out", str(tmp_path / "s.json")],
    ):
        code = main(argv)
        captured = capsys.readouterr()
        if argv[1] == "split" and breaker in (_break_missing_image, _break_polygon):
            assert code == 0  # a split only needs refs and ids; stats checks images and polygons
            continue
        assert code == 2
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert file_part in lines[0] and entry_part in lines[0], lines[0]
        assert "Traceback" not in captured.err


def test_rle_counts_must_cover_the_image(tmp_path: Path) -> None:
    refs, inst = build_spec()
    inst["annotations"][3]["segmentation"]["counts"].append(5)  # image 2's uncompressed RLE
    write_refer(tmp_path, refs, inst)
    refer = ReferData(tmp_path, "refcoco", "unc")
    with pytest.raises(DataError, match="annotation id 22"):
        refer.validate()


@pytest.mark.parametrize("bad", ["size_float", "size_str", "counts_float", "counts_negative", "garbage_string",
                                 "short_string"])
def test_malformed_rle_is_one_line_and_exit_2(bad: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refs, inst = build_spec()
    compressed = next(a for a in inst["annotations"] if isinstance(a["segmentation"], dict)
                      and isinstance(a["segmentation"]["counts"], str))
    listed = next(a for a in inst["annotations"] if isinstance(a["segmentation"], dict)
                  and isinstance(a["segmentation"]["counts"], list))
    if bad == "size_float":
        compressed["segmentation"]["size"] = [float(v) + 0.5 for v in compressed["segmentation"]["size"]]
    elif bad == "size_str":
        compressed["segmentation"]["size"] = "big"
    elif bad == "counts_float":
        listed["segmentation"]["counts"][0] += 0.5
    elif bad == "counts_negative":
        listed["segmentation"]["counts"][:2] = [listed["segmentation"]["counts"][0] + 3,
                                                listed["segmentation"]["counts"][1] - 3 - 10 ** 6]
    elif bad == "garbage_string":
        compressed["segmentation"]["counts"] = "garbage!"
    else:  # pycocotools decodes this into uninitialised memory instead of failing
        compressed["segmentation"]["counts"] = "0"
    write_refer(tmp_path, refs, inst)
    code = main(["data", "stats", "--root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "instances.json" in err and "RLE" in err


def test_unknown_dataset_and_split_by(refer_root: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset"):
        ReferData(refer_root, "refcocoX", "unc")
    with pytest.raises(DataError, match="no splitBy 'umd'"):
        ReferData(refer_root, "refcoco", "umd")


def test_encoded_rle_roundtrip_sanity() -> None:
    """The fixture's uncompressed counts agree with pycocotools' own encoding of the same mask."""
    from refer_fixtures import uncompressed_counts

    m = rle_mask(2)
    ours = mask_utils.frPyObjects({"size": list(m.shape), "counts": uncompressed_counts(m)}, *m.shape)
    np.testing.assert_array_equal(mask_utils.decode(ours).astype(bool), m)


def test_synth_command_calls_the_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    import sys
    import types

    calls = []
    fake = types.ModuleType("l2l.data.shaperefs")
    fake.generate = lambda out_root, num_images, seed, progress=True: calls.append(
        (out_root, num_images, seed, progress)) or {"images": num_images}
    monkeypatch.setitem(sys.modules, "l2l.data.shaperefs", fake)
    assert main(["data", "synth", "--out", str(tmp_path), "--images", "7", "--seed", "3", "--no-progress"]) == 0
    assert calls == [(tmp_path, 7, 3, False)]
    assert json.loads(capsys.readouterr().out) == {"images": 7}
    assert main(["data", "synth", "--out", str(tmp_path), "--images", "0"]) == 2


def test_handwritten_python2_protocol0_pickle_loads(tmp_path: Path) -> None:
    """What Python 2's `pickle.dump(refs, f)` (protocol 0) writes: STRING opcodes with latin1 bytes, PUTs."""
    blob = b"(lp0\n(dp1\nS'sent'\np2\nS'caf\xe9'\np3\nsS'ref_id'\np4\nI12\nsS'big'\np5\nL12345678901L\nsa."
    path = tmp_path / "refs(unc).p"
    path.write_bytes(blob)
    assert load_refs_pickle(path) == [{"sent": "caf\xe9", "ref_id": 12, "big": 12345678901}]


def test_non_integer_ids_and_coordinates_are_data_errors(tmp_path: Path) -> None:
    refs, inst = build_spec()
    refs[1]["ann_id"] = "12"
    write_refer(tmp_path, refs, inst)
    with pytest.raises(DataError, match=r"ref #1 has a non-integer ann_id"):
        ReferData(tmp_path, "refcoco", "unc")
    refs, inst = build_spec()
    inst["annotations"][6]["segmentation"][0][3] = "x"
    write_refer(tmp_path, refs, inst)
    with pytest.raises(DataError, match=r"annotation id 41 .*non-numeric"):
        ReferData(tmp_path, "refcoco", "unc").validate()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda inst: inst["images"][2].update(width="40"), r"images\[2\] needs integer id, height and width"),
        (lambda inst: inst["annotations"][1].update(bbox=[1, 2, 3]), "annotation id 12 has a bbox"),
        (lambda inst: inst["annotations"][1].update(image_id=77), "annotation id 12 points to unknown image_id 77"),
        (lambda inst: inst["categories"].append({"name": "dog"}), r"categories\[2\] needs an integer id"),
    ],
)
def test_malformed_instances_name_the_entry(tmp_path: Path, edit, expected: str) -> None:
    refs, inst = build_spec()
    edit(inst)
    write_refer(tmp_path, refs, inst, images=False)
    with pytest.raises(DataError, match=expected) as err:
        ReferData(tmp_path, "refcoco", "unc")
    assert "instances.json" in str(err.value)


def test_data_stats_decodes_every_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refs, inst = build_spec()
    write_refer(tmp_path, refs, inst)
    refer = ReferData(tmp_path, "refcoco", "unc")
    image_id = int(refs[0]["image_id"])
    path = refer.image_path(image_id)
    path.write_bytes(np.random.default_rng(0).bytes(2048))  # exists, but is no image
    code = main(["data", "stats", "--root", str(tmp_path), "--dataset", "refcoco", "--split-by", "unc"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and "not a readable image" in err and "Traceback" not in err


def test_negative_bbox_size_is_a_data_error(tmp_path: Path) -> None:
    refs, inst = build_spec()
    inst["annotations"][0]["bbox"] = [10, 10, -5, 8]
    write_refer(tmp_path, refs, inst)
    with pytest.raises(DataError, match="negative"):
        ReferData(tmp_path, "refcoco", "unc")
