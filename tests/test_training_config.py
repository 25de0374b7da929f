"""Config loading: YAML sections, typed dotted overrides, unknown keys with a suggestion, the CLI's exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from l2l.cli.main import main
from l2l.errors import ConfigError
from l2l.training.config import DEFAULTS, load_config, resolve_config, save_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_overrides_are_typed_against_defaults() -> None:
    cfg = resolve_config({}, ["train.lr=1e-4", "train.epochs=3", "train.bf16=true", "train.lr=2",
                              "model.hf_out_features=[a, b, c, d]", "data.split_file=123", "seed=7"])
    assert cfg["train"]["lr"] == 2.0 and isinstance(cfg["train"]["lr"], float)  # int accepted for a float
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["bf16"] is True
    assert cfg["model"]["hf_out_features"] == ["a", "b", "c", "d"]
    assert cfg["data"]["split_file"] == "123"  # a string field keeps the text as written
    assert cfg["seed"] == 7


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.lrr=1e-3", ["train.lr"]),
        ("trian.lr=1e-3", ["train.lr"]),
        ("model.visoin=tiny", ["model.vision"]),
        ("train.epochs=1.5", ["integer"]),
        ("train.bf16=1", ["true or false"]),
        ("model.hf_out_features=abc", ["list"]),
        ("train=3", ["section"]),
        ("train.lr", ["key=value"]),
        ("method.lambdag=1", ["lambda_g"]),
        ("method.name=supervisd", ["supervised"]),
        ("train.epochs=0", ["max_steps decide", "max_steps is 0"]),
        ("train.epochs=-1", ["must not be negative"]),
        ("model.image_size=100", ["multiple of 32"]),
        ("method.name=fixmatch", ["data.proposal=none"]),
        ("data.label_init=sam", ["data.label_init", "iom"]),
    ],
)
def test_bad_overrides_name_the_key(override: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_config({"data": {"proposal": "none"}}, [override])
    for word in words:
        assert word in str(err.value)


def test_method_defaults_are_filled_and_typed() -> None:
    cfg = resolve_config({"method": {"name": "supervised", "lambda_g": 1}}, ["method.dice_weight=0"])
    assert cfg["method"] == {"name": "supervised", "lambda_g": 1.0, "dice_weight": 0.0, "ce_weight": 1.0,
                             "edit_l1": 0.0}
    with pytest.raises(ConfigError, match="method.ce_weight"):
        resolve_config({}, ["method.ce_weight=abc"])


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*train.epochs"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)


@pytest.mark.parametrize("name", ["tiny.yaml", "shaperefs.yaml", "refcoco_lavt.yaml"])
def test_shipped_configs_resolve_and_round_trip(name: str, tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / name, ["data.root=/data"])
    assert set(cfg) == set(DEFAULTS)
    save_config(cfg, tmp_path / "config.yaml")
    again = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolve_config(again) == cfg  # the written config reproduces the run's config exactly


def test_cli_unknown_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--root", str(tmp_path), "--out",
                 str(tmp_path / "run"), "train.bach_size=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "train.batch_size" in err
    assert not (tmp_path / "run").exists()


def test_method_model_overrides_are_applied() -> None:
    assert resolve_config({}, ["method.name=l2l_no_sesm"])["model"]["use_sesm"] is False
    assert resolve_config({}, ["method.name=supervised"])["model"]["use_sesm"] is True


def test_methods_read_typed_options() -> None:
    from l2l.methods import METHODS

    cfg = resolve_config({"data": {"proposal": "gaussian"}}, ["method.name=l2l", "method.rple_samples=4",
                                                              "method.lambda_u=2"])
    opts = METHODS["l2l"].Options(**{k: v for k, v in cfg["method"].items() if k != "name"})
    assert opts.rple_samples == 4 and isinstance(opts.lambda_u, float) and opts.lambda_u == 2.0
    assert set(METHODS["semires"].defaults) > set(METHODS["fixmatch"].defaults) - {"threshold"}
