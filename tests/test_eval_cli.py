"""`evaluate` (original-resolution scoring, both modes, two processes) and the `l2l eval` command."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import eval_dist_worker  # noqa: E402

from l2l.cli.main import main  # noqa: E402
from l2l.data.dataset import RESDataset  # noqa: E402
from l2l.data.processor import Processor  # noqa: E402
from l2l.errors import ConfigError  # noqa: E402
from l2l.evaluation import RESMetric, evaluate  # noqa: E402
from l2l.priors.prior import Prior  # noqa: E402
from l2l.priors.store import write_priors  # noqa: E402

SIDE = 64


class ConstantModel(nn.Module):
    """Predicts the whole image when it gets a proposal (or always, if `always`), nothing otherwise."""

    def __init__(self, always: bool = False) -> None:
        super().__init__()
        self.always = always
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                proposal: torch.Tensor | None = None, has_proposal: torch.Tensor | None = None) -> dict[str, Any]:
        b = pixel_values.shape[0]
        on = torch.full((b,), self.always, dtype=torch.bool)
        if proposal is not None and has_proposal is not None:
            on |= has_proposal.cpu()
        logits = torch.where(on[:, None, None, None], 10.0, -10.0).expand(b, 1, SIDE, SIDE) + self.weight
        return {"logits": logits, "refined": None}


class WeightlessModel(nn.Module):
    """No parameters at all (like the prior-only baseline): evaluation must still find a device."""

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> dict[str, Any]:
        return {"logits": torch.full((pixel_values.shape[0], 1, SIDE, SIDE), 10.0), "refined": None}


class FullBank:
    """Every sample but those of ref 10 has a proposal."""

    def __contains__(self, sample_id: str) -> bool:
        return not sample_id.startswith("10:")

    def get(self, sample_id: str) -> np.ndarray:
        return np.ones((SIDE, SIDE), np.float32)


@pytest.fixture(scope="module")
def processor() -> Processor:
    return Processor.from_text_encoder("tiny", image_size=SIDE, max_tokens=8)


def _whole_image_ious(dataset: RESDataset, skip_ref: int | None = None) -> list[float]:
    """IoU of an all-foreground prediction at the ORIGINAL size: |G| / (H * W)."""
    out = []
    for i, s in enumerate(dataset.samples):
        g = dataset.mask(i)
        out.append(0.0 if s.ref_id == skip_ref else g.sum() / g.size)
    return out


def test_evaluate_scores_at_original_resolution_in_both_modes(refer_root: Path, processor: Processor, tmp_path: Path) -> None:
    dataset = RESDataset(refer_root, "refcoco/unc/train")
    everything = evaluate(ConstantModel(always=True), dataset, processor, batch_size=5, progress=False)
    assert everything["n"] == len(dataset) == 12
    assert everything["mIoU"] == pytest.approx(100 * np.mean(_whole_image_ious(dataset)))
    assert evaluate(WeightlessModel(), dataset, processor, progress=False) == everything
    free = evaluate(ConstantModel(), dataset, processor, bank=FullBank(), use_priors=False, progress=False)
    assert free["mIoU"] == 0.0
    jsonl = tmp_path / "prior.jsonl"
    prior = evaluate(ConstantModel(), dataset, processor, bank=FullBank(), use_priors=True, batch_size=4,
                     out_jsonl=jsonl, progress=False, extra={"data": "refcoco/unc/train"})
    assert prior["mIoU"] == pytest.approx(100 * np.mean(_whole_image_ious(dataset, skip_ref=10)))
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == dataset.sample_ids()
    assert {r["mode"] for r in rows} == {"prior"} and {r["data"] for r in rows} == {"refcoco/unc/train"}
    assert [r["has_prior"] for r in rows[:2]] == [False, False] and rows[2]["has_prior"]
    with pytest.raises(ConfigError, match="bank"):
        evaluate(ConstantModel(), dataset, processor, use_priors=True)


def test_evaluate_two_processes_equals_one(refer_root: Path, tmp_path: Path) -> None:
    dataset = RESDataset(refer_root, "refcoco/unc/val")
    single = evaluate(eval_dist_worker.TextureModel(), dataset, eval_dist_worker.processor(), batch_size=2,
                      progress=False)
    assert single["n"] == 3 and 0 < single["mIoU"] < 100
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(eval_dist_worker.run, args=(2, port, str(refer_root), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"r{rank}.json").read_text()) == pytest.approx(single)
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 3


def test_cli_eval_table_metrics_json_and_jsonl(refer_root: Path, checkpoint: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    dataset = RESDataset(refer_root, "refcoco/unc/train")
    priors = [Prior(s.sample_id, list(s.box), confidence=0.9, provider="test") for s in dataset.samples]
    write_priors(tmp_path / "priors.jsonl", priors)
    out = tmp_path / "eval"
    code = main(["eval", "--checkpoint", str(checkpoint), "--root", str(refer_root), "--data", "refcoco/unc/train",
                 "--data", "refcoco/unc/val", "--out", str(out), "--priors", str(tmp_path / "priors.jsonl"),
                 "--proposal-method", "box", "--batch-size", "4"])
    assert code == 0
    table = capsys.readouterr().out
    assert "mIoU" in table and "oIoU" in table and "P@0.9" in table and "original image resolution" in table
    report = json.loads((out / "metrics.json").read_text())
    assert [(r["data"], r["mode"], r["n"]) for r in report["results"]] == [
        ("refcoco/unc/train", "prior_free", 12), ("refcoco/unc/train", "prior", 12),
        ("refcoco/unc/val", "prior_free", 3), ("refcoco/unc/val", "prior", 3)]
    assert "original" in report["resolution"]
    # val has no priors in the file: those samples get the failed-prior (empty) map, still evaluated
    records = [json.loads(line) for line in (out / "refcoco_unc_train.prior.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["has_prior"] for r in records)
    recomputed = RESMetric()
    recomputed._records = records  # the file alone reproduces the reported numbers
    row = report["results"][1]
    assert recomputed.compute() == pytest.approx({k: row[k] for k in recomputed.compute()})


def test_cli_eval_simulated_priors(refer_root: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--root", str(refer_root), "--data", "refcoco/unc/val",
                 "--out", str(out), "--simulated-priors", "--modes", "prior"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert [(r["mode"], r["n"]) for r in report["results"]] == [("prior", 3)]
    assert report["priors"] == "simulated MLLM, seed 0" and report["proposal_method"] == "gaussian"


@pytest.mark.parametrize("case", ["bad_id", "no_checkpoint", "prior_mode_without_priors", "two_prior_sources"])
def test_cli_eval_errors_exit_2(case: str, refer_root: Path, checkpoint: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    args = ["eval", "--checkpoint", str(checkpoint), "--root", str(refer_root), "--data", "refcoco/unc/val",
            "--out", str(tmp_path / "e")]
    if case == "bad_id":
        args[args.index("refcoco/unc/val")] = "refcoco/val"
    elif case == "no_checkpoint":
        args[2] = str(tmp_path / "nothing")
    elif case == "prior_mode_without_priors":
        args += ["--modes", "prior"]
    else:
        args += ["--simulated-priors", "--priors", str(tmp_path / "p.jsonl")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert {"bad_id": "refcoco/val", "no_checkpoint": "nothing", "prior_mode_without_priors": "--priors",
            "two_prior_sources": "not both"}[case] in err
