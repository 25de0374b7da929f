"""The training loop end to end on a small ShapeRefs: train/validate/save, exact resume, two processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from l2l.cli.main import main
from l2l.data.dataset import RESDataset
from l2l.data.shaperefs import generate
from l2l.evaluation.evaluator import evaluate
from l2l.model import RESModel
from l2l.training.config import load_config
from l2l.training.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
# Smaller than tiny.yaml so each run takes a few seconds on a shared 2-core machine.
FAST = ["model.image_size=32", "model.dim=16", "model.decoder_dim=16", "train.batch_size=8",
        "train.eval_batch_size=1", "data.max_val_samples=6", "train.log_every=1", "data.ratio=0.25"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shaperefs")
    generate(out, 40, seed=0, progress=False, workers=1)
    return out


def _cfg(root: Path, *extra: str) -> dict:
    return load_config(CONFIG, [f"data.root={root}", *FAST, *extra])


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_trains_validates_and_saves(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = Trainer(_cfg(root, "train.epochs=2"), run).fit()
    assert summary["epochs"] == 2 and not summary["stopped"] and not summary["resumed"]
    for name in ("config.yaml", "split.json", "checkpoint.pt", "best/model.safetensors", "best/README.md",
                 "last/config.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    records = _records(run)
    vals = [r for r in records if "val/prior_free/mIoU" in r]
    assert [r["epoch"] for r in vals] == [0, 1]
    assert vals[-1]["val/prior_free/n"] == 6
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == summary["steps"] and all(l == l for l in losses)
    assert "label_ratio | 0.25" in (run / "best" / "README.md").read_text()
    # The saved model scores what validation logged (same Processor, same data).
    model = RESModel.from_pretrained(run / "last")
    val = torch.utils.data.Subset(RESDataset(root, "shaperefs/unc/val"), range(6))
    assert evaluate(model, val, batch_size=1, progress=False) == summary["last"]["prior_free"]
    # The checkpoint loads with weights_only=True (no pickled objects).
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["step"] == summary["steps"] and state["micro_done"] == 0


def test_killed_mid_epoch_and_resumed_matches_uninterrupted(root: Path, tmp_path: Path) -> None:
    common = ("train.epochs=2", "train.checkpoint_every=1")
    a = Trainer(_cfg(root, *common), tmp_path / "a").fit()
    steps_per_epoch = a["steps"] // 2
    assert steps_per_epoch >= 3
    # Stop one step after a mid-epoch checkpoint of epoch 1: the resumed run redoes that step.
    stop = steps_per_epoch + 2
    b1 = Trainer(_cfg(root, *common, f"train.stop_after_steps={stop}", "train.checkpoint_every=2"),
                 tmp_path / "b").fit()
    assert b1["stopped"] and b1["steps"] == stop
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and 0 < ckpt["micro_done"] < steps_per_epoch  # really mid-epoch
    b = Trainer(_cfg(root, *common), tmp_path / "b").fit()
    assert b["resumed"] and b["steps"] == a["steps"]
    assert b["last"] == a["last"] and b["best"]["metrics"] == a["best"]["metrics"]
    wa, wb = _weights(tmp_path / "a" / "last"), _weights(tmp_path / "b" / "last")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "train/images_per_s"} for r in rs]  # noqa: E731
    assert strip(_records(tmp_path / "a")) == strip(_records(tmp_path / "b"))


def test_resume_refuses_a_different_model(root: Path, tmp_path: Path) -> None:
    Trainer(_cfg(root, "train.max_steps=1"), tmp_path / "r").fit()
    assert main(["train", "--config", str(CONFIG), "--root", str(root), "--out", str(tmp_path / "r"),
                 *FAST, "model.dim=32"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process_evaluation(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "l2l.cli.main", "train", "--config", str(CONFIG),
           "--root", str(root), "--out", str(run), *FAST, "train.epochs=1", "data.max_val_samples=0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints and writes
    val = [r for r in _records(run) if "val/prior_free/mIoU" in r][-1]
    n_val = len(RESDataset(root, "shaperefs/unc/val"))
    assert val["val/prior_free/n"] == n_val  # distributed padding not double-counted
    single = evaluate(RESModel.from_pretrained(run / "last"), RESDataset(root, "shaperefs/unc/val"),
                      batch_size=1, progress=False)
    assert single == {k.split("/")[-1]: v for k, v in val.items() if k.startswith("val/prior_free/")}
