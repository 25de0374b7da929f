"""One call from a dataset id to its priors and proposal bank, as training and evaluation need them.

Priors come from a JSONL file (written by `l2l priors run` with any provider), or, for synthetic data, from
the simulated MLLM run here and kept in the cache directory as JSONL (resumable, reused by later runs).
Real MLLM providers are not run from here: they take hours on a GPU and belong to `l2l priors run`.
"""

from __future__ import annotations

import os
from pathlib import Path

from l2l.data.dataset import DataId, RESDataset
from l2l.data.refer import ReferData
from l2l.errors import ConfigError
from l2l.priors import Prior, load_priors
from l2l.proposals.bank import ProposalBank, build_bank


def prepare_bank(root: str | os.PathLike, data_id: str | DataId, method: str, size: int,
                 cache_dir: str | os.PathLike, priors: str | os.PathLike | None = None,
                 provider: str = "simulated", seed: int = 0, progress: bool = True,
                 sam_checkpoint: str | os.PathLike | None = None,
                 device: str = "cpu") -> tuple[ProposalBank, dict[str, Prior]]:
    """Priors for every sample of `data_id` and the bank of their proposals at side `size`.

    `priors` is a priors JSONL; without it `provider` must be "simulated" (synthetic data with ground truth).
    The bank lives in `<cache_dir>/<dataset>_<split_by>_<split>/<method>-s<size>/`."""
    data_id = data_id if isinstance(data_id, DataId) else DataId.parse(str(data_id))
    dataset = RESDataset(root, data_id)
    where = Path(cache_dir) / f"{data_id.dataset}_{data_id.split_by}_{data_id.split}"
    if priors:
        table = load_priors(priors)
    elif provider == "simulated":
        from l2l.priors.run import run_priors
        from l2l.priors.simulated import SimulatedMLLM, SimulatedMLLMConfig

        path = where / f"priors-simulated-seed{int(seed)}.jsonl"
        refer = ReferData(root, data_id.dataset, data_id.split_by)
        run_priors(dataset, SimulatedMLLM(refer, SimulatedMLLMConfig(seed=int(seed))), path, progress=progress)
        table = load_priors(path)
    else:
        raise ConfigError(f"provider {provider!r} is not run during training; run `l2l priors run --provider "
                          f"{provider} ...` once and pass the JSONL it writes as priors")
    bank = build_bank(dataset, table, method, size, where, progress=progress, sam_checkpoint=sam_checkpoint,
                      device=device)
    return bank, table
