"""`l2l priors run --provider simulated` killed with SIGKILL mid-run, then rerun: one prior per sentence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from l2l.cli.main import main
from l2l.data.dataset import RESDataset
from l2l.data.refer import ReferData
from l2l.priors import read_priors
from l2l.priors.run import run_priors
from l2l.priors.simulated import SimulatedMLLM


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_rerun_gives_exactly_one_prior_per_sentence(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    generate = pytest.importorskip("l2l.data.shaperefs").generate
    root = tmp_path / "data"
    generate(root, 40, seed=0, progress=False, workers=1)
    out = tmp_path / "priors.jsonl"
    args = ["priors", "run", "--root", str(root), "--data", "shaperefs/unc/train", "--provider", "simulated",
            "--out", str(out), "--batch-size", "1", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "l2l.cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 10:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ds = RESDataset(root, "shaperefs/unc/train")
    written = out.read_bytes().count(b"\n")
    assert 10 <= written < len(ds)
    with open(out, "ab") as fh:  # and as if the kill had landed inside a write
        fh.write(b'{"sample_id": "12:3", "box": [1.0, 2')

    assert main(args) == 0
    text = capsys.readouterr().out
    assert "recovered from a crash" in text and f"already done: {written}" in text
    priors = read_priors(out)
    assert sorted(p.sample_id for p in priors) == sorted(ds.sample_ids())  # exactly one per sentence
    reference = tmp_path / "reference.jsonl"
    run_priors(ds, SimulatedMLLM(ReferData(root, "shaperefs", "unc")), reference, progress=False)
    assert sorted(out.read_text().splitlines()) == sorted(reference.read_text().splitlines())
