"""Nothing lost, nothing silent: bad numbers fail fast, a diverging run stops with its last good state, a torn
metrics line does not block resume, and a run killed right after self-evolution resumes to the same result."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from l2l.cli.main import main
from l2l.training.config import load_config
from l2l.training.trainer import CHECKPOINT, Trainer

FAST = ["model.image_size=32", "model.dim=16", "model.decoder_dim=16", "train.batch_size=8",
        "train.eval_batch_size=8", "data.max_val_samples=6", "train.log_every=1", "data.ratio=0.25"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("override", ["train.lr=.inf", "train.poly_power=nan", "train.lr=nan",
                                      "train.weight_decay=-.inf", "data.max_val_samples=-1"])
def test_bad_numbers_are_one_line_and_exit_2(override: str, root: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "--config", "tiny", "--root", str(root), "--out", str(tmp_path / "run"), override])
    err = capsys.readouterr().err
    assert code == 2 and override.split("=")[0] in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "best").exists()


def test_a_diverging_run_stops_and_keeps_its_last_finite_checkpoint(root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    code = main(["train", "--config", "tiny", "--root", str(root), "--out", str(run), *FAST, "train.lr=1e12",
                 "train.checkpoint_every=1", "train.epochs=50"])
    err = capsys.readouterr().err
    assert code == 2 and "training stopped" in err and "Traceback" not in err
    assert not (run / "best").exists() and not (run / "last").exists()  # nothing NaN is called best
    state = torch.load(run / CHECKPOINT, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_torn_metrics_line_does_not_block_resume(root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = load_config("tiny", [f"data.root={root}", *FAST, "train.epochs=2", "train.stop_after_steps=2",
                                   "train.checkpoint_every=1"])
    Trainer(cfg, run).fit()
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "train/lo')  # killed mid-write
    cfg = load_config("tiny", [f"data.root={root}", *FAST, "train.epochs=2", "train.checkpoint_every=1"])
    summary = Trainer(cfg, run).fit()
    assert summary["resumed"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # every line parses; the torn one is gone
    steps = [json.loads(line)["step"] for line in lines if "train/loss" in line]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


class _Killed(Exception):
    """Stands in for SIGKILL: raised right after the checkpoint that follows a self-evolution round."""


def _l2l_cfg(root: Path) -> dict:
    return load_config("tiny", [f"data.root={root}", *FAST, "model.use_sesm=true", "data.proposal=gaussian",
                                "method.name=l2l", "data.ratio=0.2", "train.epochs=6", "train.val_every=3",
                                "train.batch_size=4", "train.unlabelled_batch_size=4", "method.evolve_start=0.2"])


def _bank_rows(run: Path) -> dict[str, bytes]:
    from l2l.proposals.bank import ProposalBank

    (bank_dir,) = [p for p in (run / "cache").glob("*/*") if (p / "index.json").is_file()]
    bank = ProposalBank.open(bank_dir)
    return {sid: bank.get(sid).tobytes() for sid in bank.ids()}


def _comparable(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train/images_per_s"} for r in recs]


def test_killed_right_after_self_evolution_resumes_to_the_uninterrupted_result(
        root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = tmp_path / "whole"
    Trainer(_l2l_cfg(root), whole).fit()
    rounds = [r for r in _comparable(whole) if "method/evolve/round" in r]
    assert len(rounds) == 2 and all(r["method/evolve/written"] in (0.0, 1.0) for r in rounds)

    killed = tmp_path / "killed"
    real_save = Trainer.save_checkpoint

    def save_then_die(self: Trainer) -> None:
        real_save(self)
        if self.epoch_done and len(self.method.history) == 1:  # the save that makes round 1 durable
            raise _Killed

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        Trainer(_l2l_cfg(root), killed).fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    summary = Trainer(_l2l_cfg(root), killed).fit()
    assert summary["resumed"]
    assert _bank_rows(killed) == _bank_rows(whole)  # the round was applied once, not twice
    assert _comparable(killed) == _comparable(whole)


def test_a_killed_write_leaves_no_temp_file_behind_for_long(tmp_path: Path) -> None:
    from l2l.errors import OutputError
    from l2l.utils.io import atomic_write_text

    target = tmp_path / "checkpoint.pt"
    stale = tmp_path / ".checkpoint.pt.abc123.tmp"  # what a SIGKILL during torch.save leaves
    stale.write_bytes(b"\0" * 4096)
    other = tmp_path / ".other.pt.abc123.tmp"
    other.write_bytes(b"x")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not stale.exists() and other.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_text(tmp_path / "file" / "child.json", "{}")


@pytest.mark.parametrize("field", ["image_size_huge", "dim_changed"])
def test_a_checkpoint_whose_config_lies_is_one_line(field: str, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    root: Path) -> None:
    from l2l.model import ModelConfig, RESModel

    ckpt = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=64, dim=16, decoder_dim=16,
                                pretrained=False)).save_pretrained(tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update({"image_size": 65536} if field == "image_size_huge" else {"decoder_dim": 24})
    (ckpt / "config.json").write_text(json.dumps(cfg))
    img = root / "images" / "shaperefs"
    image = next(img.iterdir())
    code = main(["predict", "--checkpoint", str(ckpt), "--image", str(image), "--text", "the disc",
                 "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ("image_size" in err) if field == "image_size_huge" else ("do not fit config.json" in err or
                                                                    "do not match" in err)


def test_prior_points_that_are_not_numbers_are_a_data_error() -> None:
    from l2l.errors import DataError
    from l2l.priors import Prior

    with pytest.raises(DataError, match="point"):
        Prior.from_json('{"sample_id": "1:0", "box": [0, 0, 4, 4], "points": [["a", "b", 1]]}')
    with pytest.raises(DataError, match="point"):
        Prior.from_json('{"sample_id": "1:0", "box": [0, 0, 4, 4], "points": [[1, 2, 7]]}')


def test_threads_follow_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy machine gets fewer intra-op threads, never zero; the CLI asks OpenMP not to spin."""
    import os

    from l2l.utils import threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "_proc_stat_busy", lambda window: None)  # the load-average fallback
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert threads.free_cores() == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (1.9, 0.0, 0.0))
    assert threads.free_cores() == 2
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert threads.free_cores() == 1
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads.prefer_passive_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.prefer_passive_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins


def _one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture, *words: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # info lines (the provider) may precede
    assert len(errors) == 1 and all(w in errors[0] for w in words), err


def test_a_config_that_is_not_utf8_or_is_a_directory_is_one_line(root: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00train: {}")
    _one_line_exit_2(["train", "--config", str(bad), "--root", str(root), "--out", str(tmp_path / "r")], capsys,
                     "bad.yaml", "UTF-8")
    _one_line_exit_2(["train", "--config", str(tmp_path), "--root", str(root), "--out", str(tmp_path / "r")], capsys,
                     "is a directory")


def test_an_output_whose_parent_is_a_file_is_one_line(root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    data = ["--root", str(root), "--data", "shaperefs/unc/val"]
    _one_line_exit_2(["train", "--config", "tiny", "--root", str(root), "--out", str(blocker / "run")], capsys,
                     "cannot write here")
    _one_line_exit_2(["priors", "run", *data, "--provider", "simulated", "--limit", "2",
                      "--out", str(blocker / "p.jsonl")], capsys, "cannot write here")
    _one_line_exit_2(["data", "split", "--root", str(root), "--dataset", "shaperefs", "--split-by", "unc",
                      "--ratio", "0.5", "--seed", "0", "--out", str(blocker / "s.json")], capsys, "cannot write here")


def test_busy_cores_are_sampled_now_and_see_another_process() -> None:
    """A CPU-bound process next to us shows up as a busy core in a short /proc/stat sample."""
    import subprocess
    import sys

    from l2l.utils import threads

    if threads._proc_stat_busy(0.05) is None:
        pytest.skip("no /proc/stat here")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        assert threads.others_busy(0.5) >= 0.6
    finally:
        spinner.kill()
        spinner.wait()
