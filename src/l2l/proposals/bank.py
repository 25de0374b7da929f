"""`ProposalBank`: every sample's soft proposal at the model's input side, cached on disk and evolvable.

Layout of one bank (one method at one side S) in `<cache_dir>/<method>-s<S>/`:

- `maps.u8`: a raw uint8 array [capacity, S, S], opened as a memory map, so a RefCOCO-sized bank
  (120k sentences x 320^2 = 12 GB) is neither loaded into RAM nor copied into each DataLoader worker;
- `index.json`: `{sample_id: {row, key, quality, confidence, reason}}` plus the bank's method and side.

Maps are squashed to S x S exactly as `l2l.data.Processor.maps` does (cv2 bilinear), then stored as
round(255 q). `key` is a hash of what the proposal was made from (prior box, points, confidence, provider,
status, image size and name, plus any method extra such as the SAM checkpoint): `build_bank` recomputes a
sample when its key changed and reuses it otherwise, across runs.

Crash safety: a new sample's row is written before `save()` writes the index that points to it (atomically,
via rename), so the index never refers to an unwritten row; rows written after the last save are orphans
that the next run overwrites. Self-evolution (`update`) rewrites rows in place; each row is always a whole
valid map, old or new. Proposals are built by one process (rank 0 in distributed training) and read by the
others; in distributed self-evolution each rank rewrites the rows of its own samples (disjoint rows), and rank 0
writes the index once all rows are flushed (`l2l.methods.l2l`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping

import cv2
import numpy as np

from l2l.errors import ConfigError, DataError
from l2l.proposals.methods import FAILED_PRIOR, METHODS, PriorLike, make_proposal
from l2l.utils.io import atomic_write_json, file_lock, make_dir

INDEX_VERSION = 1


class MissingProposalError(DataError, KeyError):
    """A sample the bank does not hold; a KeyError too, so mapping-style callers can treat it as absent."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def prior_key(prior: PriorLike | None, image_shape: tuple[int, int], image_name: str = "", extra: str = "") -> str:
    """Hash of everything a proposal depends on besides the pixels (the bank's method and side are fixed)."""
    if prior is None:
        desc: dict[str, Any] = {"prior": None}
    else:
        box = None if prior.box is None else [round(float(v), 2) for v in prior.box]
        desc = {
            "box": box,
            "points": [[round(float(p[0]), 2), round(float(p[1]), 2), int(p[2])] for p in (prior.points or [])],
            "confidence": round(float(prior.confidence), 6),
            "provider": str(getattr(prior, "provider", "")),
            "status": str(getattr(prior, "status", "ok")),
        }
    desc.update(shape=[int(image_shape[0]), int(image_shape[1])], image=image_name, extra=extra)
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20]


class ProposalBank:
    """sample_id -> soft map float32[S, S] (stored uint8), its quality and the prior's confidence."""

    def __init__(self, path: str | os.PathLike, size: int, method: str, readonly: bool = False,
                 read_size: int | None = None) -> None:
        """`size`: the side maps are stored at; `read_size` (default `size`): the side `get` returns, upsampled
        bilinearly from the stored side. A bank stored below the model's side is smaller on disk by the squared
        ratio (RefCOCO at 480 px: 27.8 GB per copy at 480, 3.1 GB at 160; `benchmarks/proposal_store.py`)."""
        if method not in METHODS:
            raise ConfigError(f"unknown proposal method {method!r}; choose one of {', '.join(METHODS)}")
        if int(size) <= 0:
            raise ConfigError(f"proposal bank side must be positive, got {size}")
        self.path = Path(path)
        self.size = int(size)
        self.read_size = int(read_size or size)
        self.method = method
        self.readonly = readonly
        self.entries: dict[str, dict[str, Any]] = {}
        index = self.path / "index.json"
        if index.is_file():
            try:
                meta = json.loads(index.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{index}: unreadable proposal bank index ({exc})") from None
            if meta.get("size") != self.size or meta.get("method") != method:
                raise ConfigError(f"{index}: bank holds method {meta.get('method')!r} at side {meta.get('size')}, "
                                  f"asked for {method!r} at {self.size}; use another cache directory")
            self.entries = meta["entries"]
        elif readonly:
            raise DataError(f"{index}: no proposal bank here (build it with build_bank first)")
        else:
            make_dir(self.path)
        self._data = self.path / "maps.u8"
        self._maps: np.memmap | None = None
        self._next_row = max((e["row"] for e in self.entries.values()), default=-1) + 1
        self._open(minimum=self._next_row)

    @classmethod
    def open(cls, path: str | os.PathLike, read_size: int | None = None) -> "ProposalBank":
        """Open an existing bank read-only, taking method and stored side from its index."""
        index = Path(path) / "index.json"
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{index}: cannot read proposal bank index ({exc})") from None
        return cls(path, meta["size"], meta["method"], readonly=True, read_size=read_size)

    def _open(self, minimum: int) -> None:
        """(Re)map the data file, growing it (doubling) so it holds at least `minimum` rows."""
        row_bytes = self.size * self.size
        have = self._data.stat().st_size // row_bytes if self._data.exists() else 0
        if have < minimum:
            if self.readonly:
                raise DataError(f"{self._data}: holds {have} rows but the index refers to {minimum}")
            if self._maps is not None:
                self._maps.flush()
                self._maps = None
            with open(self._data, "ab") as f:
                f.truncate(max(minimum, 2 * have, 64) * row_bytes)
            have = self._data.stat().st_size // row_bytes
        if have == 0:
            self._maps = None
            return
        self._maps = np.memmap(self._data, np.uint8, "r" if self.readonly else "r+", shape=(have, self.size, self.size))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the mapped rows (DataLoader workers under spawn re-map the file instead of copying it)."""
        state = dict(self.__dict__)
        state["_maps"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open(minimum=self._next_row)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.entries

    def ids(self) -> list[str]:
        return list(self.entries)

    def key(self, sample_id: str) -> str | None:
        """The prior key the stored map was made from, or None if the sample is not in the bank."""
        entry = self.entries.get(sample_id)
        return None if entry is None else entry["key"]

    def _entry(self, sample_id: str) -> dict[str, Any]:
        entry = self.entries.get(sample_id)
        if entry is None:
            raise MissingProposalError(
                f"{self.path}: no proposal for sample {sample_id!r} (rebuild the bank for this dataset)")
        return entry

    def stored(self, sample_id: str) -> np.ndarray:
        """The soft map at the stored side, float32[size, size] in [0, 1]."""
        row = self._entry(sample_id)["row"]
        assert self._maps is not None
        return self._maps[row].astype(np.float32) / 255.0

    def get(self, sample_id: str) -> np.ndarray:
        """The soft map at the read side, float32[read_size, read_size] in [0, 1]."""
        q = self.stored(sample_id)
        if self.read_size == self.size:
            return q
        return np.clip(cv2.resize(q, (self.read_size, self.read_size), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)

    def get_batch(self, sample_ids: Iterable[str]) -> np.ndarray:
        """float32[B, S, S] for a batch of samples."""
        maps = [self.get(s) for s in sample_ids]
        return np.stack(maps) if maps else np.zeros((0, self.read_size, self.read_size), np.float32)

    def quality(self, sample_id: str) -> float:
        return float(self._entry(sample_id)["quality"])

    def confidence(self, sample_id: str) -> float:
        return float(self._entry(sample_id)["confidence"])

    def reason(self, sample_id: str) -> str | None:
        """Why the proposal fell back or is empty (failed prior), None when it was made as asked."""
        return self._entry(sample_id).get("reason")

    def has_prior(self, sample_id: str) -> bool:
        """False when the sample's prior failed: its stored all-zero map is a placeholder, and a network given it
        as a proposal would be told "nothing here" instead of running its no-proposal path."""
        return not str(self._entry(sample_id).get("reason") or "").startswith(FAILED_PRIOR)

    def _check_writable(self) -> None:
        if self.readonly:
            raise ConfigError(f"{self.path}: proposal bank opened read-only")

    def _write(self, sample_id: str, square: np.ndarray) -> int:
        """Store a float map already at S x S into the sample's row (a new row for a new sample)."""
        self._check_writable()
        entry = self.entries.get(sample_id)
        if entry is not None:
            row = entry["row"]
        else:
            row, self._next_row = self._next_row, self._next_row + 1
        if self._maps is None or row >= self._maps.shape[0]:
            self._open(minimum=row + 1)
        assert self._maps is not None
        self._maps[row] = np.rint(np.clip(square, 0.0, 1.0) * 255.0).astype(np.uint8)
        return row

    def put(self, sample_id: str, soft: np.ndarray, quality: float, confidence: float, key: str,
            reason: str | None = None) -> None:
        """Store a proposal made at the image's original size (squashed to S x S here)."""
        soft = np.asarray(soft, dtype=np.float32)
        square = cv2.resize(soft, (self.size, self.size), interpolation=cv2.INTER_LINEAR) if soft.shape != (
            self.size, self.size) else soft
        row = self._write(sample_id, square)
        self.entries[sample_id] = {"row": row, "key": key, "quality": round(float(quality), 6),
                                   "confidence": round(float(confidence), 6), "reason": reason}

    def update(self, sample_id: str, new_map: Any, accept_mask: Any, mu: float) -> np.ndarray:
        """Self-evolution: q <- (1 - mu) q + mu p on accepted pixels, q unchanged elsewhere; returns the new q.

        `new_map` (teacher probability) and `accept_mask` are [S, S] arrays or tensors at the stored or the read
        side (read-side maps are area-averaged down to the stored side first). Storage is uint8, so a change smaller
        than 1/510 rounds away; with mu >= 0.1 that only drops |p - q| < 0.02."""
        if not 0.0 <= float(mu) <= 1.0:
            raise ConfigError(f"self-evolution mu must be in [0, 1], got {mu}")
        p = _as_numpy(new_map, np.float32)
        accept = _as_numpy(accept_mask, bool)
        sides = {(self.size, self.size), (self.read_size, self.read_size)}
        if p.shape not in sides or accept.shape != p.shape:
            raise ConfigError(f"update of {sample_id!r} needs [{self.size}, {self.size}] (or read-side "
                              f"[{self.read_size}, {self.read_size}]) maps, got {p.shape} and {accept.shape}")
        if p.shape != (self.size, self.size):
            down = (self.size, self.size)
            p = cv2.resize(p, down, interpolation=cv2.INTER_AREA)
            accept = cv2.resize(accept.astype(np.float32), down, interpolation=cv2.INTER_AREA) >= 0.5
        q = self.stored(sample_id)
        q = np.where(accept, (1.0 - mu) * q + mu * p, q).astype(np.float32)
        self._write(sample_id, q)
        entry = self.entries[sample_id]
        entry["evolved"] = int(entry.get("evolved", 0)) + 1
        return q

    def mark_evolved(self, sample_id: str) -> None:
        """Count an update another process wrote into this sample's row (distributed self-evolution: each rank writes
        its own samples' rows, every rank keeps the same index)."""
        entry = self._entry(sample_id)
        entry["evolved"] = int(entry.get("evolved", 0)) + 1

    def flush(self) -> None:
        """Push this process's written rows to the file (before another process saves the index or reads them)."""
        if self._maps is not None:
            self._maps.flush()

    def refresh(self) -> None:
        """Re-map the data file, so rows other processes wrote are read from the file, not from a stale mapping."""
        self._maps = None
        self._open(minimum=self._next_row)

    def evolved(self, sample_id: str) -> int:
        """How many self-evolution updates the stored map has had since it was computed from its prior."""
        return int(self._entry(sample_id).get("evolved", 0))

    def save(self) -> None:
        """Flush the rows, then atomically replace the index that points at them."""
        self._check_writable()
        if self._maps is not None:
            self._maps.flush()
        with open(self._data, "ab") as f:
            os.fsync(f.fileno())
        atomic_write_json(self.path / "index.json",
                          {"version": INDEX_VERSION, "method": self.method, "size": self.size, "entries": self.entries},
                          indent=None)


def bank_has_prior(bank: Any, sample_id: str) -> bool:
    """Whether a bank's map for `sample_id` comes from a usable prior (sources without `has_prior`: always)."""
    check = getattr(bank, "has_prior", None)
    return True if check is None else bool(check(sample_id))


def _as_numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype).reshape(np.asarray(x).shape[-2:])


def build_bank(dataset: Any, priors: Mapping[str, PriorLike], method: str, size: int, cache_dir: str | os.PathLike,
               progress: bool = True, sam_checkpoint: str | os.PathLike | None = None, device: str = "cpu",
               save_every: int = 1000, keep_evolved: bool = True, read_size: int | None = None) -> ProposalBank:
    """Open (or create) the bank for `method` at side `size` under `cache_dir` and compute the proposals that
    are missing or whose prior changed. A sample without a prior gets the failed-prior (all-zero) map.

    `dataset` needs `.samples` (with `sample_id`, `image_id`, `image_path`, `height`, `width`) and
    `.image(i) -> uint8[H, W, 3]`, as `l2l.data.RESDataset`; samples are grouped by image so each image is
    decoded (and, for SAM, embedded) once for all its sentences. Use one cache_dir per dataset.

    Maps rewritten by self-evolution are kept (so a resumed run continues from them) unless
    `keep_evolved=False`, which restarts them from their priors (a new run sharing an old cache). `size` is the
    stored side; `read_size` the side the bank returns (default `size`)."""
    root = Path(cache_dir) / f"{method}-s{int(size)}"
    with file_lock(root.with_name(root.name + ".lock")):  # a second builder waits, then finds the maps done
        bank = _build_bank(root, dataset, priors, method, size, progress, sam_checkpoint, device, save_every,
                           keep_evolved)
    bank.read_size = int(read_size or size)
    return bank


def _build_bank(root: Path, dataset: Any, priors: Mapping[str, PriorLike], method: str, size: int, progress: bool,
                sam_checkpoint: str | os.PathLike | None, device: str, save_every: int,
                keep_evolved: bool) -> ProposalBank:
    bank = ProposalBank(root, size, method)
    sam = None
    extra = ""
    if method == "sam":
        if sam_checkpoint is None:
            raise ConfigError("proposal method 'sam' needs a SAM checkpoint directory (sam_checkpoint)")
        from l2l.proposals.sam import SamProposer

        sam = SamProposer.from_pretrained(sam_checkpoint, device=device)
        extra = f"sam:{Path(sam_checkpoint).resolve()}"
    by_image: OrderedDict[Any, list[tuple[int, str]]] = OrderedDict()
    for i, s in enumerate(dataset.samples):
        key = prior_key(priors.get(s.sample_id), (s.height, s.width), Path(str(s.image_path)).name, extra)
        if bank.key(s.sample_id) != key or (not keep_evolved and bank.evolved(s.sample_id)):
            by_image.setdefault(s.image_path, []).append((i, key))
    todo = sum(len(v) for v in by_image.values())
    if todo == 0:
        return bank
    from tqdm.auto import tqdm

    bar = tqdm(total=todo, desc=f"proposals ({method})", unit="sample", disable=not progress)
    since_save = 0
    for group in by_image.values():
        image = dataset.image(group[0][0])
        for i, key in group:
            s = dataset.samples[i]
            prior = priors.get(s.sample_id)
            prop = make_proposal(method, image, prior, sam=sam, image_key=s.image_id)
            confidence = float(prior.confidence) if prior is not None else 0.0
            bank.put(s.sample_id, prop.map, prop.quality, confidence, key, prop.reason)
            since_save += 1
            bar.update(1)
        if since_save >= save_every:
            bank.save()
            since_save = 0
    bar.close()
    bank.save()
    return bank
