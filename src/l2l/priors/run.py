"""`run_priors`: drive a provider over a dataset into a priors file, resumably.

Samples already in the file are skipped; each batch is appended (whole lines, fsync) before the next
starts, so a kill loses at most the batch in flight, and a rerun finishes the job with exactly one prior
per sentence.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from l2l.data.dataset import RESDataset
from l2l.priors.base import PriorProvider, PriorRequest
from l2l.priors.parse import check_against_image
from l2l.priors.store import PriorsFile


@dataclass
class RunSummary:
    """What a run did: samples in the dataset, skipped (already done), written now, failures by reason."""

    total: int
    skipped: int
    written: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)
    truncated_bytes: int = 0
    retried: int = 0  # failed priors of an earlier run asked again
    transport_failed: int = 0  # failures of the connection (asked again by the next run)

    @property
    def all_transport_failed(self) -> bool:
        """Every prior written now failed for a transport reason: the provider is unreachable, not the data bad."""
        return self.written > 0 and self.transport_failed == self.written

    def lines(self) -> list[str]:
        out = [f"samples: {self.total}  already done: {self.skipped}  written now: {self.written} "
               f"(ok {self.ok}, failed {sum(self.failed.values())})"]
        if self.truncated_bytes:
            out.insert(0, f"recovered from a crash: cut a torn last line ({self.truncated_bytes} bytes), redone")
        if self.retried:
            out.insert(0, f"asked again for {self.retried} failed prior(s) of an earlier run")
        if self.transport_failed:
            out.append(f"  {self.transport_failed} transport failure(s) will be asked again by the next run")
        for reason, n in self.failed.most_common():
            out.append(f"  failed: {n:6d}  {reason}")
        return out


def run_priors(dataset: RESDataset, provider: PriorProvider, out: str | os.PathLike,
               batch_size: int | None = None, limit: int | None = None, progress: bool = True,
               retry_failed: bool = False) -> RunSummary:
    """Write one prior per sample of `dataset` (the first `limit` samples if given) to `out`; transport failures
    of earlier runs (and with `retry_failed` every failure) are asked again."""
    batch_size = batch_size or provider.batch_size
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    with PriorsFile(out, retry_failed=retry_failed) as store:
        todo = [i for i in indices if dataset.samples[i].sample_id not in store.done]
        summary = RunSummary(len(indices), len(indices) - len(todo), truncated_bytes=store.truncated_bytes,
                             retried=store.retried)
        bar = tqdm(total=len(todo), desc=f"priors [{provider.name}]", unit="sample", disable=not progress,
                   dynamic_ncols=True)
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                requests = []
                for i in chunk:
                    s = dataset.samples[i]
                    requests.append(PriorRequest(s.sample_id, dataset.image(i), s.sentence, s))
                priors = provider.predict(requests)
                got = [p.sample_id for p in priors]
                if got != [r.sample_id for r in requests]:
                    raise RuntimeError(f"provider {provider.name} answered for {got[:3]}..., "
                                    f"not the requested samples in order")
                priors = [check_against_image(p, r.image.shape[1], r.image.shape[0]) for p, r in zip(priors, requests)]
                store.append(priors)
                summary.written += len(priors)
                for p in priors:
                    if p.ok:
                        summary.ok += 1
                    else:
                        summary.failed[p.reason] += 1
                        summary.transport_failed += int(p.transport_failure)
                bar.update(len(priors))
        finally:
            bar.close()
    return summary
