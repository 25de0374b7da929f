"""The package as a user installs it: the public API, and configs that travel inside the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import l2l
from l2l.training.config import config_path, load_config, shipped_configs

REPO = Path(__file__).resolve().parents[1]


def test_public_api_imports_lazily() -> None:
    from l2l import Predictor, Processor, RESModel, Trainer, evaluate, load_config as lc

    assert all(callable(x) for x in (Predictor, Processor, RESModel, Trainer, evaluate, lc))
    with pytest.raises(AttributeError):
        l2l.NoSuchThing  # noqa: B018


def test_configs_load_by_name() -> None:
    assert {"tiny", "shaperefs", "shaperefs_semi", "refcoco_lavt"} <= set(shipped_configs())
    cfg = load_config("tiny", ["data.root=somewhere"])
    assert cfg["model"]["vision"] == "tiny" and cfg["data"]["root"] == "somewhere"
    assert config_path("tiny.yaml") == config_path("tiny")


def test_the_wheel_carries_the_configs(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("l2l-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"l2l/configs/{n}.yaml" for n in ("tiny", "shaperefs_semi", "refcoco_lavt")} <= names
