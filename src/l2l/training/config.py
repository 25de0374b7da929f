"""Training configuration: one YAML file plus dotted `key=value` overrides, checked against the defaults.

The resolved config is a plain nested dict (JSON/YAML-able, no pickles) with five sections:

- `seed`: int, the one seed of the run (model init, data order, augmentation).
- `data`: the fields of `DataConfig` below.
- `model`: the fields of `l2l.model.ModelConfig`.
- `train`: the fields of `TrainConfig` below.
- `method`: `name` plus that method's hyper-parameters, the fields of its `Options` dataclass.

Each section is declared once, as a dataclass with a default and a one-line doc per field; the dict form is what
run directories store (`config.yaml`) and compare on resume, and consumers read the typed objects
(`TrainConfig(**cfg["train"])`, `method.opts`).

An override's value is parsed with `yaml.safe_load` and must have the default's type (an int is accepted
where a float is expected; a string field takes the text as written). An unknown key is a `ConfigError`
naming the nearest valid key, so `train.lrr=1e-3` fails before any work is done.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from l2l.errors import ConfigError
from l2l.methods import get_method_class
from l2l.model.config import ModelConfig
from l2l.proposals.candidates import LABEL_INITS
from l2l.utils.io import atomic_write_text

@dataclass
class DataConfig:
    """Where the samples come from, which are labelled, and how their priors become proposals."""

    root: str = ""
    """Data root holding <dataset>/refs(<split_by>).p; `l2l train --root` sets it."""
    dataset: str = "shaperefs"
    """refcoco | refcoco+ | refcocog | shaperefs (any folder in the refer layout)."""
    split_by: str = "unc"
    """Which refs file: refs(<split_by>).p (unc, umd, google)."""
    train_split: str = "train"
    """Split the labelled and unlabelled samples come from."""
    val_split: str = "val"
    """Split that picks `best/`."""
    split_file: str = ""
    """Label-ratio split JSON (`l2l data split`); empty = make one from ratio + split_seed."""
    ratio: float = 1.0
    """Share of training images that are labelled (when no split_file)."""
    split_seed: int = 0
    """Seed of the label-ratio split."""
    priors: str = ""
    """Priors JSONL covering train, val (and the splits `l2l bench` scores); empty = run `priors_provider`."""
    priors_provider: str = "simulated"
    """Provider used when `priors` is empty (synthetic data only)."""
    priors_seed: int = 0
    """Seed of the simulated MLLM (fixed across training seeds, like a real MLLM)."""
    proposal: str = "gaussian"
    """Soft proposal method: box | gaussian | grabcut | sam | none (no priors)."""
    cache_dir: str = ""
    """Shared priors/proposal cache (empty = <root>/.l2l_cache); evolving runs copy theirs."""
    sam_checkpoint: str = ""
    """Local SAM checkpoint directory (proposal: sam; SemiRES's candidate masks)."""
    bank_side: int = 0
    """Side the proposal banks store maps at (0 = the model's input side); smaller is upsampled on read."""
    max_val_samples: int = 0
    """Evaluate on the first N validation samples (0 = all)."""
    uninformative_confidence: bool = False
    """Robustness check: every prior's confidence set to 0.5 for training."""
    label_init: str = "proposal"
    """Where the pseudo-label bank starts: proposal (the MLLM's proposal) | iom | cpi (the proposal replaced by the
    image's class-agnostic candidate mask it matches, SemiRES's rules; kept where none matches). The network's
    input stays the proposal; methods that take labels from the bank (prior_label, semires_mllm, L2L) read these."""


@dataclass
class TrainConfig:
    """The loop: schedule, optimiser, precision, validation, logging and checkpoints."""

    epochs: int = 10
    """Passes over the labelled images; 0 = as many as `max_steps` needs."""
    batch_size: int = 8
    """Labelled samples per step and process."""
    unlabelled_batch_size: int = 8
    """Unlabelled samples per step and process (methods that use them)."""
    eval_batch_size: int = 16
    """Samples per validation batch."""
    lr: float = 1e-3
    """AdamW learning rate at step 0."""
    backbone_lr_mult: float = 1.0
    """The visual encoder's learning rate is lr x this (pretrained weights move less)."""
    weight_decay: float = 1e-2
    """AdamW weight decay."""
    poly_power: float = 0.9
    """lr = lr0 * (1 - step / total_steps) ** poly_power."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    grad_clip: float = 0.0
    """Max gradient norm (0 = off)."""
    ema_momentum: float = 0.99
    """Every trained method is validated, saved and scored as this EMA of its student (0 = the student)."""
    bf16: bool = False
    """bf16 autocast; on CUDA it helps, on CPU only where measured faster."""
    num_workers: int = 0
    """DataLoader workers per process."""
    threads: int = 0
    """Intra-op CPU threads per process; 0 = the cores other processes leave free when the run starts."""
    weak_flip: bool = True
    """Random horizontal flip with left/right word swap on training batches."""
    val_every: int = 1
    """Validate every N epochs (0 = only at `val_every_steps` and after the last step)."""
    val_every_steps: int = 0
    """Also validate at the first epoch end after every N optimizer steps (0 = off)."""
    validate_at_start: bool = False
    """Validate the untrained network too, so best/ may be the starting point."""
    log_every: int = 10
    """Optimizer steps between metrics.jsonl / TensorBoard entries."""
    checkpoint_every: int = 50
    """Optimizer steps between resume checkpoints (also at every epoch end)."""
    max_steps: int = 0
    """Stop after this many optimizer steps in total (0 = epochs decide)."""
    stop_after_steps: int = 0
    """Test hook: simulate a kill after N optimizer steps of this process (0 = off)."""
    select_metric: str = "mIoU"
    """Validation metric that picks RUN_DIR/best (mIoU | oIoU)."""
    device: str = "auto"
    """auto | cpu | cuda."""


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": asdict(DataConfig()),
    "model": ModelConfig().to_dict(),
    "train": asdict(TrainConfig()),
    "method": {"name": "supervised"},
}

SECTIONS = tuple(DEFAULTS)


def cfg_value(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)  # no hint beats an unrelated one
    return f"; did you mean {near[0]!r}?" if near else ""


def _flat_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys.extend(_flat_keys(v, prefix + k + "."))
    return keys


def _coerce(key: str, value: Any, default: Any, raw: str | None = None) -> Any:
    """`value` converted to the type of `default`, or a ConfigError naming `key`."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        want = "true or false"
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        want = "an integer"
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        want = "a number"
    elif isinstance(default, str):
        if raw is not None:  # a string field takes the override text as written ("1.0" stays "1.0")
            return raw
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        want = "a string"
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
        want = "a list"
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return value
        want = "a mapping"
    else:
        return value
    shown = raw if raw is not None else repr(value)
    raise ConfigError(f"{key}={shown}: expected {want} (default {default!r})")


def _merge(base: dict[str, Any], update: dict[str, Any], defaults: dict[str, Any], prefix: str, source: str) -> None:
    """Merge `update` into `base` in place, checking keys and types against `defaults`."""
    for key, value in update.items():
        dotted = prefix + str(key)
        if key not in defaults:
            valid = _flat_keys(DEFAULTS)
            raise ConfigError(f"{source}: unknown key {dotted!r}{_nearest(dotted, valid)}")
        default = defaults[key]
        if isinstance(default, dict) and isinstance(value, dict):
            _merge(base[key], value, default, dotted + ".", source)
        else:
            base[key] = _coerce(f"{source}: {dotted}", value, default)


def _apply_override(cfg: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc})") from exc
    parts = key.split(".")
    if parts[0] == "method" and len(parts) == 2:
        # Method keys are free-form here; `_resolve_method` checks them against the method's defaults.
        cfg["method"][parts[1]] = raw if parts[1] == "name" else value
        cfg.setdefault("_method_raw", {})[parts[1]] = raw
        return
    node, defaults = cfg, DEFAULTS
    for depth, part in enumerate(parts):
        if not isinstance(defaults, dict) or part not in defaults:
            raise ConfigError(f"override {key!r}: unknown key{_nearest(key, _flat_keys(DEFAULTS))}")
        if depth == len(parts) - 1:
            if isinstance(defaults[part], dict):
                raise ConfigError(f"override {key!r}: is a section; set one of its keys, e.g. {key}.{next(iter(defaults[part]))}=...")
            node[part] = _coerce(f"override {key}", value, defaults[part], raw if isinstance(defaults[part], str) else None)
        else:
            node, defaults = node[part], defaults[part]


def _resolve_method(cfg: dict[str, Any], source: str) -> None:
    """Check the method section against the registered method's declared defaults and fill them in."""
    section = cfg["method"]
    raw = cfg.pop("_method_raw", {})
    name = section.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{source}: method.name must name a method")
    cls = get_method_class(name)
    # Methods that are defined by a model change (l2l_no_sesm: no prior input) set it here, so the written
    # config says what was really built.
    for key, value in cls.model_overrides.items():
        cfg["model"][key] = value
    defaults = cls.defaults
    resolved: dict[str, Any] = {"name": name}
    for key, value in section.items():
        if key == "name":
            continue
        if key not in defaults:
            raise ConfigError(f"{source}: unknown key 'method.{key}' for method {name!r}{_nearest(key, sorted(defaults))}")
        default = defaults[key]
        resolved[key] = _coerce(f"{source}: method.{key}", value, default, raw.get(key) if isinstance(default, str) else None)
    if "seed" in defaults and "seed" not in resolved:
        # The method's own random streams (strong views, RPLE samples) follow the run's seed unless set, so
        # seeds 0, 1, 2 of a grid differ in every stream, not only in data order and initialisation.
        resolved["seed"] = int(cfg["seed"])
    for key, default in defaults.items():
        resolved.setdefault(key, copy.deepcopy(default))
    cfg["method"] = resolved


def _non_finite(tree: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is a float NaN or infinity (YAML reads `.nan`, `.inf`, `nan` strings coerce)."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in _non_finite(value, f"{prefix}{key}.")]
    if isinstance(tree, float) and not math.isfinite(tree):
        return [prefix[:-1]]
    return []


def _validate(cfg: dict[str, Any], source: str) -> None:
    bad = _non_finite(cfg)
    if bad:
        raise ConfigError(f"{source}: {bad[0]}={cfg_value(cfg, bad[0])} is not a finite number")
    if cfg["data"]["bank_side"] < 0:
        raise ConfigError(f"{source}: data.bank_side={cfg['data']['bank_side']} must not be negative (0 = model side)")
    if cfg["data"]["max_val_samples"] < 0:
        raise ConfigError(f"{source}: data.max_val_samples={cfg['data']['max_val_samples']} must not be negative "
                          "(0 = the whole validation split)")
    train = cfg["train"]
    for key in ("batch_size", "unlabelled_batch_size", "eval_batch_size", "grad_accum", "log_every", "checkpoint_every"):
        if train[key] < 1:
            raise ConfigError(f"{source}: train.{key}={train[key]} must be at least 1")
    for key in ("epochs", "val_every", "max_steps", "stop_after_steps", "num_workers", "threads", "val_every_steps"):
        if train[key] < 0:
            raise ConfigError(f"{source}: train.{key}={train[key]} must not be negative")
    if train["epochs"] == 0 and train["max_steps"] == 0:
        raise ConfigError(f"{source}: train.epochs=0 lets max_steps decide the schedule, but train.max_steps is 0 too")
    if train["lr"] <= 0:
        raise ConfigError(f"{source}: train.lr={train['lr']} must be positive")
    if train["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{source}: train.device={train['device']!r}: expected auto, cpu or cuda")
    if train["select_metric"] not in ("mIoU", "oIoU"):
        raise ConfigError(f"{source}: train.select_metric={train['select_metric']!r}: expected mIoU or oIoU")
    ratio = cfg["data"]["ratio"]
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"{source}: data.ratio={ratio} must be in (0, 1]")
    ModelConfig.from_dict(cfg["model"], source=f"{source}: model")
    method = get_method_class(cfg["method"]["name"])
    if method.needs_proposals and cfg["data"]["proposal"] == "none":
        raise ConfigError(f"{source}: method {method.name!r} needs proposals, but data.proposal=none (try gaussian)")
    if cfg["data"]["label_init"] not in LABEL_INITS:
        raise ConfigError(f"{source}: data.label_init={cfg['data']['label_init']!r}: expected one of "
                          f"{', '.join(LABEL_INITS)}")


def resolve_config(file_cfg: dict[str, Any] | None = None, overrides: list[str] | None = None, source: str = "config") -> dict[str, Any]:
    """Defaults, then `file_cfg` (a parsed YAML mapping), then `key=value` overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["method"] = {"name": DEFAULTS["method"]["name"]}
    file_cfg = file_cfg or {}
    if not isinstance(file_cfg, dict):
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(SECTIONS)}")
    file_method = file_cfg.get("method", {}) or {}
    if not isinstance(file_method, dict):
        raise ConfigError(f"{source}: 'method' must be a mapping with a 'name'")
    _merge(cfg, {k: v for k, v in file_cfg.items() if k != "method"}, DEFAULTS, "", source)
    cfg["method"].update(file_method)
    for item in overrides or []:
        _apply_override(cfg, item)
    _resolve_method(cfg, source)
    _validate(cfg, source)
    return cfg


def shipped_configs() -> list[str]:
    """Names of the configs installed with the package (`l2l/configs/*.yaml`)."""
    from importlib.resources import files

    return sorted(p.name[: -len(".yaml")] for p in files("l2l").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def config_path(name: str | Path) -> Path:
    """A YAML path as given, or the shipped config of that name (`tiny`, `shaperefs_semi`, `refcoco_lavt`, ...)."""
    path = Path(name)
    if path.exists() or path.parent != Path(".") or str(name) == "":
        return path
    from importlib.resources import files

    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    shipped = Path(str(files("l2l").joinpath("configs", f"{stem}.yaml")))
    return shipped if shipped.is_file() else path


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config file (a path, or the name of a shipped config) and apply overrides; every problem is a
    ConfigError naming the file."""
    path = config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        names = ", ".join(shipped_configs())
        raise ConfigError(f"{path}: config file not found (shipped configs: {names})") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path}: is a directory, not a YAML config file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 YAML file ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    return resolve_config(data, overrides, source=str(path))


def dump_config(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Write the resolved config (atomically) so a run directory says exactly how it was made."""
    atomic_write_text(path, dump_config(cfg))
