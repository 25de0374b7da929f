"""Priors files: JSONL, one prior per line, appended in whole lines so that a crash costs one batch.

Appends are one `write` of complete lines followed by flush and fsync. A crash can still leave the last
line torn (no newline, or not JSON); `PriorsFile.open_for_append` cuts it off so that sample is done again.
A broken line anywhere else is not a crash artefact but a damaged file, and is reported, not repaired.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Sequence

from l2l.errors import DataError
from l2l.priors.prior import Prior
from l2l.utils.io import atomic_write_text, file_lock, make_dir


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """Split into newline-terminated lines; also return the byte length they cover."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


def read_priors(path: str | os.PathLike) -> list[Prior]:
    """All priors of a file, in order; a torn last line is ignored; other broken lines raise DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: priors file not found")
    data = path.read_bytes()
    lines, _ = _complete_lines(data)
    priors = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            priors.append(Prior.from_json(line.decode("utf-8"), where=f"{path}:{i}"))
        except (DataError, UnicodeDecodeError) as exc:
            if i == len(lines):
                break  # a corrupt last line (e.g. zero-filled after a power cut) is torn too: skipped
            raise DataError(f"{path}:{i}: broken prior line ({exc})") from None
    return priors


def load_priors(path: str | os.PathLike) -> dict[str, Prior]:
    """sample_id -> prior; a sample listed twice raises (a resumed run never writes one twice)."""
    out: dict[str, Prior] = {}
    for p in read_priors(path):
        if p.sample_id in out:
            raise DataError(f"{path}: sample {p.sample_id!r} appears twice")
        out[p.sample_id] = p
    return out


class PriorsFile:
    """An append-only priors file for one run; `done` holds the sample ids already written."""

    def __init__(self, path: str | os.PathLike, retry_failed: bool = False) -> None:
        """`retry_failed`: also ask again for samples whose model answer failed (no box, malformed); transport
        failures (server down, timeouts) are always asked again."""
        self.path = Path(path)
        self.retry_failed = retry_failed
        self.done: set[str] = set()
        self.truncated_bytes = 0
        self.retried = 0  # failed priors dropped from the file to be asked again
        self._fh = None
        self._lock: contextlib.ExitStack | None = None

    def open_for_append(self) -> "PriorsFile":
        """Take the file's lock (a second writer waits, then sees what the first wrote), recover from a crash
        (cut a torn last line), load the done ids, open for appending."""
        make_dir(self.path.parent)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(file_lock(self.path.with_name(self.path.name + ".lock")))
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self._fh = open(self.path, "ab")
        return self

    def _load(self) -> None:
        if self.path.exists():
            data = self.path.read_bytes()
            lines, end = _complete_lines(data)
            keep = end
            if lines and not _valid(lines[-1]):  # corrupt but newline-terminated last line
                keep = end - len(lines[-1]) - 1
                lines = lines[:-1]
            for i, line in enumerate(lines, 1):
                if line.strip() and not _valid(line):
                    raise DataError(f"{self.path}:{i}: broken prior line in the middle of the file; "
                                    "fix or remove it by hand")
            if keep < len(data):
                self.truncated_bytes = len(data) - keep
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
                    f.flush()
                    os.fsync(f.fileno())
            priors = [(line, Prior.from_json(line.decode("utf-8"))) for line in lines if line.strip()]
            kept = [(line, p) for line, p in priors
                    if not (p.transport_failure or (self.retry_failed and p.status == "failed"))]
            if len(kept) < len(priors):  # rewrite without them, so the file still holds one prior per sample
                self.retried = len(priors) - len(kept)
                atomic_write_text(self.path, "".join(line.decode("utf-8") + "\n" for line, _ in kept))
            self.done = {p.sample_id for _, p in kept}

    def append(self, priors: Sequence[Prior]) -> None:
        """Write whole lines in one call, then flush and fsync: after this returns they survive a crash."""
        if not priors:
            return
        if self._fh is None:
            raise RuntimeError("PriorsFile.append before open_for_append")
        self._fh.write("".join(p.to_json() + "\n" for p in priors).encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.done.update(p.sample_id for p in priors)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "PriorsFile":
        return self.open_for_append()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _valid(line: bytes) -> bool:
    try:
        Prior.from_json(line.decode("utf-8"))
    except (DataError, UnicodeDecodeError):
        return False
    return True


def write_priors(path: str | os.PathLike, priors: Iterable[Prior]) -> None:
    """Write a whole priors file atomically (for tools that build one in memory)."""
    atomic_write_text(path, "".join(p.to_json() + "\n" for p in priors))
