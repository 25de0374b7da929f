"""RESMetric on hand-computed cases, every input form, JSONL records and a two-process merge."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from l2l.evaluation import RESMetric, format_table


def _mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_hand_computed_miou_differs_from_oiou() -> None:
    metric = RESMetric()
    # sample a: small object, pred covers 1 of 2 pixels -> I=1, U=2, IoU=0.5
    metric.update(_mask((4, 4), (0, 1, 0, 1)), _mask((4, 4), (0, 1, 0, 2)), ids="a")
    # sample b: large object, pred = gt -> I=U=16, IoU=1.0
    metric.update(_mask((4, 4), (0, 4, 0, 4)), _mask((4, 4), (0, 4, 0, 4)), ids="b")
    out = metric.compute()
    assert out["n"] == 2
    assert out["mIoU"] == pytest.approx(75.0)
    assert out["oIoU"] == pytest.approx(100.0 * 17 / 18)
    assert out["P@0.5"] == pytest.approx(100.0)  # IoU 0.5 counts at X = 0.5 (>=)
    assert out["P@0.6"] == pytest.approx(50.0)
    assert out["P@0.9"] == pytest.approx(50.0)


def test_empty_prediction_and_empty_ground_truth() -> None:
    metric = RESMetric()
    gt = _mask((5, 5), (1, 3, 1, 3))
    ious = metric.update(np.zeros((5, 5), bool), gt, ids="empty_pred")  # I=0, U=4
    assert ious == [0.0]
    ious = metric.update(np.zeros((5, 5), bool), np.zeros((5, 5), bool), ids="both_empty")  # U=0 counts 0
    assert ious == [0.0]
    ious = metric.update(_mask((5, 5), (0, 1, 0, 3)), np.zeros((5, 5), bool), ids="empty_gt")  # I=0, U=3
    assert ious == [0.0]
    out = metric.compute()
    assert out == {"mIoU": 0.0, "oIoU": 0.0, "P@0.5": 0.0, "P@0.6": 0.0, "P@0.7": 0.0, "P@0.8": 0.0, "P@0.9": 0.0, "n": 3}
    assert [r["U"] for r in metric.records] == [4, 0, 3]


def test_batch_forms_agree() -> None:
    rng = np.random.default_rng(0)
    preds = rng.random((6, 9, 7)) > 0.5
    gts = rng.random((6, 9, 7)) > 0.4
    results = []
    for p, g in (
        (list(preds), list(gts)),
        (preds, gts),
        (torch.from_numpy(preds), torch.from_numpy(gts)),
        (torch.from_numpy(preds)[:, None], torch.from_numpy(gts)[:, None]),  # [B,1,H,W]
        (preds.astype(np.uint8), gts.astype(np.int64)),  # 0/1 integers
    ):
        m = RESMetric()
        m.update(p, g, ids=list(range(6)))
        results.append(m.compute())
    one_by_one = RESMetric()
    for p, g in zip(preds, gts):
        one_by_one.update(p, g)
    results.append(one_by_one.compute())
    expected_iou = [(p & g).sum() / (p | g).sum() for p, g in zip(preds, gts)]
    assert results[0]["mIoU"] == pytest.approx(100 * np.mean(expected_iou))
    for r in results[1:]:
        assert r == results[0]


def test_list_with_different_sizes_and_errors() -> None:
    m = RESMetric()
    m.update([np.ones((2, 3), bool), np.ones((5, 4), bool)], [np.ones((2, 3), bool), np.zeros((5, 4), bool)])
    assert [r["IoU"] for r in m.records] == [1.0, 0.0]
    with pytest.raises(ValueError, match="differ in size"):
        m.update(np.ones((2, 3), bool), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="boolean"):
        m.update(np.full((2, 2), 0.7), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="2 ids for 1"):
        m.update(np.ones((2, 2), bool), np.ones((2, 2), bool), ids=["a", "b"])
    m.reset()
    assert m.compute()["n"] == 0 and len(m) == 0


def test_write_jsonl_with_extra_fields(tmp_path: Path) -> None:
    m = RESMetric()
    m.update(
        np.stack([_mask((3, 3), (0, 2, 0, 2)), np.zeros((3, 3), bool)]),
        np.stack([_mask((3, 3), (0, 3, 0, 3)), _mask((3, 3), (0, 1, 0, 1))]),
        ids=["1:10", "1:11"],
        extra={"mode": "prior_free", "conf": np.array([0.25, 0.5])},
    )
    path = m.write_jsonl(tmp_path / "out" / "samples.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [
        {"sample_id": "1:10", "I": 4, "U": 9, "IoU": pytest.approx(4 / 9), "mode": "prior_free", "conf": 0.25},
        {"sample_id": "1:11", "I": 0, "U": 1, "IoU": 0.0, "mode": "prior_free", "conf": 0.5},
    ]
    table = format_table([{"data": "x/y/val", "mode": "prior_free", **m.compute()}])
    assert "mIoU" in table and "x/y/val" in table and "22.22" in table


# -- two gloo processes: the DistributedSampler pads 5 samples to 6; the padded one must count once ----------

N_SAMPLES = 5


def _fixture_masks() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.random((N_SAMPLES, 8, 8)) > 0.5, rng.random((N_SAMPLES, 8, 8)) > 0.5


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        preds, gts = _fixture_masks()
        sampler = torch.utils.data.DistributedSampler(range(N_SAMPLES), num_replicas=world, rank=rank, shuffle=False)
        indices = list(sampler)
        metric = RESMetric()
        metric.update(preds[indices], gts[indices], ids=[f"s{i}" for i in indices])
        local_n = metric.compute()["n"]
        metric.merge_distributed(num_samples=N_SAMPLES)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"local_n": local_n, **metric.compute()}))
    finally:
        dist.destroy_process_group()


def test_merge_distributed_does_not_double_count_padding(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children inherit the imported modules (a spawn re-imports torch, seconds on a loaded machine)
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    single = RESMetric()
    preds, gts = _fixture_masks()
    single.update(preds, gts, ids=[f"s{i}" for i in range(N_SAMPLES)])
    expected = single.compute()
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got.pop("local_n") == 3  # 3 + 3 = 6 records before merging: one is padding
        assert got == pytest.approx(expected)


def test_merge_without_process_group_is_noop_and_checks_count() -> None:
    m = RESMetric()
    m.update(np.ones((2, 2), bool), np.ones((2, 2), bool), ids="a")
    assert m.merge_distributed(num_samples=1).compute()["n"] == 1
    with pytest.raises(RuntimeError, match="expected 2"):
        m.merge_distributed(num_samples=2)
