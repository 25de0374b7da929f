"""One call from a dataset id to its priors and proposal bank, as training and evaluation need them.

Priors come from a JSONL file (written by `l2l priors run` with any provider), or, for synthetic data, from
the simulated MLLM run here and kept in the cache directory as JSONL (resumable, reused by later runs).
Real MLLM providers are not run from here: they take hours on a GPU and belong to `l2l priors run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2l.data.dataset import DataId, RESDataset
from l2l.data.refer import ReferData
from l2l.errors import ConfigError
from l2l.priors import Prior, load_priors
from l2l.proposals.bank import ProposalBank, build_bank

DEFAULT_CACHE = ".l2l_cache"  # the shared priors/proposal cache under the data root when data.cache_dir is empty


def data_cache_dir(cache_dir: str | os.PathLike, data_id: DataId) -> Path:
    """Where one data id's priors, proposal banks and candidate masks live inside a cache directory."""
    return Path(cache_dir) / f"{data_id.dataset}_{data_id.split_by}_{data_id.split}"


def shared_cache(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache every run on a data root shares: `cache_dir` when given, else `<root>/.l2l_cache`."""
    return Path(cache_dir) if cache_dir else Path(root) / DEFAULT_CACHE


@dataclass(frozen=True)
class BankSpec:
    """Everything that decides a proposal bank's content besides the data id: one spec for the trainer, the grid,
    the demo and `l2l eval`, so a bank built by one is the bank the others open."""

    root: str
    method: str
    size: int
    priors: str | None = None
    provider: str = "simulated"
    seed: int = 0
    sam_checkpoint: str | None = None
    store_size: int = 0  # the stored side (0 = `size`); maps are upsampled to `size` on read

    @classmethod
    def from_data(cls, data: Any, size: int) -> BankSpec:
        """From a `DataConfig` (anything with its fields) and the model's input side."""
        return cls(root=str(data.root), method=data.proposal, size=int(size), priors=data.priors or None,
                   provider=data.priors_provider, seed=int(data.priors_seed),
                   sam_checkpoint=data.sam_checkpoint or None, store_size=int(data.bank_side))

    def prepare(self, data_id: DataId, cache_dir: str | os.PathLike, progress: bool = False,
                device: str = "cpu") -> tuple[ProposalBank, dict[str, Prior]]:
        """Build (once, cached) or open the bank of `data_id` in `cache_dir`; also returns the priors."""
        return prepare_bank(self.root, data_id, self.method, self.size, cache_dir, priors=self.priors,
                            provider=self.provider, seed=self.seed, progress=progress,
                            sam_checkpoint=self.sam_checkpoint, device=device, store_size=self.store_size)

    def path(self, data_id: DataId, cache_dir: str | os.PathLike) -> Path:
        """The bank's directory (open a finished bank read-only with `ProposalBank.open`)."""
        return data_cache_dir(cache_dir, data_id) / f"{self.method}-s{self.store_size or self.size}"


def prepare_bank(root: str | os.PathLike, data_id: str | DataId, method: str, size: int,
                 cache_dir: str | os.PathLike, priors: str | os.PathLike | None = None,
                 provider: str = "simulated", seed: int = 0, progress: bool = True,
                 sam_checkpoint: str | os.PathLike | None = None,
                 device: str = "cpu", store_size: int = 0) -> tuple[ProposalBank, dict[str, Prior]]:
    """Priors for every sample of `data_id` and the bank of their proposals at side `size`.

    `priors` is a priors JSONL; without it `provider` must be "simulated" (synthetic data with ground truth).
    The bank lives in `<cache_dir>/<dataset>_<split_by>_<split>/<method>-s<stored side>/`; it stores maps at
    `store_size` (0 = `size`) and returns them at `size`."""
    data_id = data_id if isinstance(data_id, DataId) else DataId.parse(str(data_id))
    dataset = RESDataset(root, data_id)
    where = data_cache_dir(cache_dir, data_id)
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
    bank = build_bank(dataset, table, method, int(store_size or size), where, progress=progress,
                      sam_checkpoint=sam_checkpoint, device=device, read_size=size)
    return bank, table
