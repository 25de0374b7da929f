"""The training loop end to end on a small ShapeRefs: train/validate/save, exact resume, two processes."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from l2l.cli.main import main
from l2l.data.dataset import RESDataset
from l2l.evaluation.evaluator import evaluate
from l2l.model import RESModel
from l2l.training.config import load_config
from l2l.training.trainer import Trainer

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
# Smaller than tiny.yaml so each run takes a few seconds on a shared 2-core machine.
FAST = ["model.image_size=32", "model.dim=16", "model.decoder_dim=16", "train.batch_size=8",
        "train.eval_batch_size=1", "data.max_val_samples=6", "train.log_every=1", "data.ratio=0.25"]


pytestmark = pytest.mark.usefixtures("one_thread")


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
    assert len(losses) == summary["steps"] and all(loss == loss for loss in losses)
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


def test_priors_reach_the_model_and_validation_reports_both_modes(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "sesm"
    summary = Trainer(_cfg(root, "model.use_sesm=true", "data.proposal=box", "train.max_steps=2"), run).fit()
    records = _records(run)
    assert all("train/loss_guide" in r for r in records if "train/loss" in r)
    assert summary["last"]["main"] == "prior" and {"prior", "prior_free"} <= set(summary["last"])
    assert "prior/mIoU" in (run / "best" / "README.md").read_text()


def test_prior_only_is_scored_without_training(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "prior_only"
    summary = Trainer(_cfg(root, "method.name=prior_only", "data.proposal=box"), run).fit()
    assert summary["steps"] == 0 and summary["last"]["main"] == "prior"
    assert summary["last"]["prior"]["mIoU"] > 20  # a box proposal overlaps its object
    assert not (run / "best").exists()  # there is no network to save


def test_semi_supervised_resume_continues_the_unlabelled_stream(root: Path, tmp_path: Path) -> None:
    """FixMatch: unlabelled batches, EMA teacher and method state come back exactly after a mid-epoch stop."""
    common = ("method.name=fixmatch", "data.proposal=box", "train.batch_size=4", "train.unlabelled_batch_size=4", "data.ratio=0.3",
              "train.epochs=2", "train.checkpoint_every=2")
    a = Trainer(_cfg(root, *common), tmp_path / "a").fit()
    stop = a["steps"] // 2 + 3
    assert Trainer(_cfg(root, *common, f"train.stop_after_steps={stop}"), tmp_path / "b").fit()["stopped"]
    b = Trainer(_cfg(root, *common), tmp_path / "b").fit()
    assert b["resumed"] and b["last"] == a["last"]
    wa, wb = _weights(tmp_path / "a" / "last"), _weights(tmp_path / "b" / "last")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_a_different_model(root: Path, tmp_path: Path) -> None:
    Trainer(_cfg(root, "train.max_steps=1"), tmp_path / "r").fit()
    assert main(["train", "--config", str(CONFIG), "--root", str(root), "--out", str(tmp_path / "r"),
                 *FAST, "model.dim=32"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(fn: Any, root: Path, run: Path) -> None:
    """`fn(rank, port, root, run)` in two forked processes (a 2-rank gloo job); fails the test after 120 s."""
    ctx = torch.multiprocessing.start_processes(fn, args=(_free_port(), root, run), nprocs=2, start_method="fork",
                                                join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two-process job did not finish in 120 s")


def _rank_main(rank: int, port: int, root: Path, run: Path) -> None:
    """One rank of a 2-process gloo job (what torchrun's environment variables tell each process)."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    cv2.setNumThreads(0)  # the parent's OpenCV thread pool does not survive fork; run resizes inline
    try:
        trainer = Trainer(_cfg(root, "train.epochs=1", "data.max_val_samples=0"), run)
        summary = trainer.fit()
        state = trainer.model.state_dict()
        digest = [float(v.double().sum()) for v in state.values() if v.is_floating_point()]
        (run / f"rank{rank}.json").write_text(json.dumps({"last": summary["last"], "digest": digest}))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_match_one_process_evaluation(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    _run_two_ranks(_rank_main, root, run)
    per_rank = [json.loads((run / f"rank{r}.json").read_text()) for r in range(2)]
    assert per_rank[0]["digest"] == per_rank[1]["digest"]  # averaged gradients and buffers: one model
    assert per_rank[0]["last"] == per_rank[1]["last"]  # every rank gets the merged metrics
    records = _records(run)
    val = [r for r in records if "val/prior_free/mIoU" in r][-1]
    n_val = len(RESDataset(root, "shaperefs/unc/val"))
    assert val["val/prior_free/n"] == n_val  # the distributed sampler's padding is not double-counted
    single = evaluate(RESModel.from_pretrained(run / "last"), RESDataset(root, "shaperefs/unc/val"),
                      batch_size=1, progress=False)
    assert single == per_rank[0]["last"]["prior_free"]


def test_validates_at_start_and_every_n_steps_and_best_is_the_val_argmax(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = Trainer(_cfg(root, "train.epochs=4", "train.val_every=100", "train.val_every_steps=2",
                           "train.validate_at_start=true"), run).fit()
    vals = [r for r in _records(run) if "val/prior_free/mIoU" in r]
    per_epoch = summary["steps"] // 4
    # step 0, then the first epoch end after each multiple of 2 steps, and always the last
    expected = [0] + sorted({e * per_epoch for e in range(1, 5) if (e * per_epoch) // 2 > ((e - 1) * per_epoch) // 2}
                            | {summary["steps"]})
    assert [r["step"] for r in vals] == expected
    best = max(vals, key=lambda r: r["val/prior_free/mIoU"])  # first maximum wins, as the trainer's strict ">"
    card = (run / "best" / "README.md").read_text()
    assert f"step | {best['step']}" in card
    assert summary["best"]["step"] == best["step"]


def test_epochs_zero_lets_max_steps_decide(root: Path, tmp_path: Path) -> None:
    summary = Trainer(_cfg(root, "train.epochs=0", "train.max_steps=5", "train.val_every=0"), tmp_path / "run").fit()
    vals = [r for r in _records(tmp_path / "run") if "val/prior_free/mIoU" in r]
    assert summary["steps"] == 5 and [r["step"] for r in vals] == [5]  # val_every=0: validated once, at the end


def _evolve_once(trainer: Trainer) -> dict:
    """One self-evolution round of an l2l trainer right now, with a fixed teacher and policy (the mixture of a
    per-sample teacher map that depends on the pixels only), so the outcome is the same however samples are sharded."""
    from l2l.methods.rple import MIXTURE

    method = trainer.method
    method.teacher_probs = lambda batch: torch.sigmoid(4 * batch["pixel_values"].mean(1, keepdim=True))
    method.decide = lambda batch, p, step: torch.full((p.shape[0],), MIXTURE, dtype=torch.long)
    context = {**trainer._epoch_context(), "step": trainer.total_steps, "proxy_loader": []}
    return method.on_epoch_end(0, context)


EVOLVE = ["method.name=l2l", "data.proposal=gaussian", "model.use_sesm=true", "train.unlabelled_batch_size=3",
          "data.ratio=0.5", "method.evolve_z=0"]  # no proxy set here: z=0 writes unless the proxy labels got worse


def _evolve_rank(rank: int, port: int, root: Path, run: Path) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    cv2.setNumThreads(0)
    try:
        logs = _evolve_once(Trainer(_cfg(root, *EVOLVE), run))
        (run / f"rank{rank}.json").write_text(json.dumps(logs))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_self_evolution_writes_the_one_process_bank(root: Path, tmp_path: Path) -> None:
    from l2l.proposals import ProposalBank

    single = Trainer(_cfg(root, *EVOLVE), tmp_path / "one")
    logs_one = _evolve_once(single)
    assert logs_one["evolve/unlabelled_write_rate"] > 0.5  # the round did write
    run = tmp_path / "ddp"
    _run_two_ranks(_evolve_rank, root, run)
    per_rank = [json.loads((run / f"rank{r}.json").read_text()) for r in range(2)]
    assert per_rank[0] == per_rank[1] == pytest.approx(logs_one)  # every rank logs the merged round
    where = single.train_bank.path.relative_to(tmp_path / "one")
    one, two = ProposalBank.open(tmp_path / "one" / where), ProposalBank.open(run / where)
    assert sorted(one.ids()) == sorted(two.ids())
    evolved = [s for s in one.ids() if one.evolved(s)]
    # the proxy set left out; an unlabelled sample is written unless its label has no sure pixel
    assert 0.9 * len(single.unlabelled) <= len(evolved) <= len(single.unlabelled)
    for s in one.ids():
        assert one.evolved(s) == two.evolved(s), s
        assert np.array_equal(one.get(s), two.get(s)), s
    pristine = ProposalBank.open(single._shared_cache() / where.relative_to("cache"))
    assert any(not np.array_equal(one.get(s), pristine.get(s)) for s in evolved)  # the round changed maps


def test_l2l_trains_and_evolves_on_a_bank_stored_below_the_model_side(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    Trainer(_cfg(root, *EVOLVE, "data.bank_side=16", "train.epochs=2", "method.evolve_start=0.0",
                 "method.evolve_rounds=1"), run).fit()
    rounds = [r for r in _records(run) if "method/evolve/round" in r]
    assert len(rounds) == 1
    assert list((run / "cache").glob("*/gaussian-s16/maps.u8"))  # the run's own copy, stored at 16 px


def test_label_init_feeds_matched_labels_while_the_input_stays_the_proposal(root: Path, tmp_path: Path) -> None:
    common = ("data.proposal=box", "data.label_init=iom", "train.unlabelled_batch_size=32", "data.ratio=0.3")
    trainer = Trainer(_cfg(root, "method.name=prior_label", *common), tmp_path / "prior_label")
    assert trainer.input_bank.path.name == "box-s32" and trainer.train_bank.path.name == "box-s32-labels-iom"
    batch = next(trainer._unlabelled_stream(0))
    for k, sid in enumerate(batch["sample_ids"]):
        assert torch.allclose(batch["label_proposal"][k, 0], torch.from_numpy(trainer.train_bank.get(sid)), atol=1e-6) \
            or bool(batch["flipped"][k])
    assert not torch.equal(batch["label_proposal"], batch["proposal"])  # some boxes were replaced by their object
    # an evolving method rewrites its own copy of the matched labels, in its run directory
    evolving = Trainer(_cfg(root, *EVOLVE, *common), tmp_path / "l2l")
    assert evolving.train_bank.path == tmp_path / "l2l" / "cache" / "shaperefs_unc_train" / "box-s32-labels-iom"
    assert not evolving.train_bank.readonly and evolving.input_bank.path.name == "box-s32"
