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


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-made refer-layout fixture (tests/refer_fixtures.py): a few images with edge cases, no generator."""
    from refer_fixtures import make_refer

    return make_refer(tmp_path_factory.mktemp("refer"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random network at 64 px (eval and predict tests)."""
    from l2l.model import ModelConfig, RESModel

    torch.manual_seed(0)
    model = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=64, dim=16, decoder_dim=16))
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")
