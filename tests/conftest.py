"""Fixtures shared by the end-to-end tests (training loop, demo, bench)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two OpenMP threads make tiny steps 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image ShapeRefs per test module (its proposal cache stays private to the module)."""
    from l2l.data.shaperefs import generate

    out = tmp_path_factory.mktemp("shaperefs")
    generate(out, 40, seed=0, progress=False, workers=1)
    return out
