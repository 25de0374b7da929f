"""Two processes filling one cache at once (two `l2l bench` runs on one data root) must not corrupt it."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from l2l.data.dataset import DataId, RESDataset
from l2l.priors import load_priors
from l2l.proposals import prepare_bank


def _fill(root: str, cache: str) -> int:
    bank, _ = prepare_bank(root, "shaperefs/unc/train", method="box", size=32, cache_dir=cache, progress=False)
    return len(bank)


def test_two_processes_fill_one_cache(root: Path, tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        sizes = pool.starmap(_fill, [(str(root), str(tmp_path))] * 2)
    n = len(RESDataset(root, DataId.parse("shaperefs/unc/train")))
    assert sizes == [n, n]
    priors = tmp_path / "shaperefs_unc_train" / "priors-simulated-seed0.jsonl"
    lines = [line for line in priors.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == n  # each sample once: a second writer waited and found the first one's priors
    assert len(load_priors(priors)) == n
    # a third run in this process reuses everything
    assert _fill(str(root), str(tmp_path)) == n
