"""`Trainer`: the one training loop for every method, single process or under `torchrun`.

    l2l train --config configs/shaperefs.yaml --root data --out runs/sup              # one process
    torchrun --nproc-per-node 4 -m l2l.cli.main train --config configs/refcoco_lavt.yaml --root R --out runs/lavt

The distributed environment is read from `RANK` / `WORLD_SIZE` / `LOCAL_RANK` (nanoGPT style; no
`--local_rank` argument). The loop owns the student optimiser, the poly schedule, gradient accumulation,
validation, the `best/` and `last/` model directories, and resumable checkpoints; a `Method` owns the loss.

Reproducible resume: data order and augmentation are functions of `(seed, epoch, position)` (see
`l2l.training.batching`), and `checkpoint.pt` holds the step, the position inside the epoch and every RNG
state, so a run killed mid-epoch and resumed ends with the same weights as an uninterrupted one (CPU).

Multi-process: gradients of the student are averaged across ranks after the last micro-batch of each
step (one flat all-reduce) rather than through a `DistributedDataParallel` wrapper, because methods run the
student several times per step (labelled, weak and strong views), keep EMA copies of it, and leave SESM
branches unused on prior-free batches: all three break DDP's one-forward-one-backward hook contract.
Normalisation buffers (BatchNorm running statistics) are averaged across ranks before validation and saving.

Why one long module: building the data, banks, method and optimiser, and the loop with its resume points, share
the run's state (step, epoch, position, banks) that every resume point must agree on; the pieces with no such state
live beside it (`distributed`, `rundir`, `batching`, `config`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from l2l.data.dataset import DataId, RESDataset
from l2l.data.refer import ReferData
from l2l.data.splits import make_split
from l2l.errors import CheckpointError, ConfigError, TrainingError
from l2l.evaluation.evaluator import evaluate
from l2l.methods import build_method, get_method_class
from l2l.methods.teacher import EMATeacher
from l2l.model import ModelConfig, RESModel
from l2l.training.batching import Collator, EpochSampler, SeededItems, move_batch
from l2l.training.distributed import DistEnv, all_reduce_grads, average_buffers, rng_state, set_rng_state
from l2l.training.rundir import save_model_dir, truncate_metrics
from l2l.training.config import DataConfig, TrainConfig, resolve_config, save_config
from l2l.utils.io import atomic_write, atomic_write_json, make_dir
from l2l.utils.seed import seed_everything
from l2l.utils.threads import free_cores

CHECKPOINT = "checkpoint.pt"
log = logging.getLogger(__name__)
# Config sections that must match for a checkpoint to be resumed (the `train` section may change,
# e.g. more epochs or a removed stop hook).
RESUME_KEYS = ("seed", "data", "model", "method")


class Trainer:
    """Builds data, model, method and optimiser from a resolved config; `fit()` trains and returns a summary.

    `cfg` is the dict of `l2l.training.config.load_config` (or any partial dict of the same shape, which is
    completed with the defaults and checked); everything the run writes goes to `run_dir`:
    `config.yaml`, `split.json` (when the split was drawn from a ratio), `metrics.jsonl`, `tb/`,
    `checkpoint.pt`, `best/` and `last/`.
    """

    def __init__(self, cfg: dict[str, Any], run_dir: str | Path) -> None:
        self.cfg = cfg = resolve_config(cfg)  # idempotent on a loaded config; fills and checks a partial dict
        self.run_dir = Path(run_dir)
        self.tcfg = TrainConfig(**cfg["train"])
        self.dcfg = DataConfig(**cfg["data"])
        self.env = DistEnv.setup(self.tcfg.device)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", self.env.world_size))
        threads = self.tcfg.threads or (max(1, free_cores() // local_ranks) if self.env.device.type == "cpu" else 0)
        if threads:
            torch.set_num_threads(threads)
        if self.env.is_main:
            make_dir(self.run_dir)
        self.env.barrier()
        seed_everything(int(cfg["seed"]))
        self.method_cls = get_method_class(cfg["method"]["name"])
        self.model_config = ModelConfig.from_dict(cfg["model"], source="config: model")
        self.model = RESModel(self.model_config).to(self.env.device)
        self.processor = self.model.processor()
        self._build_data()
        self._build_banks()
        self.method = build_method(
            cfg["method"]["name"],
            self.model,
            {k: v for k, v in cfg["method"].items() if k != "name"},
            self.total_steps,
            self.train_bank,
        )
        self._build_optimizer()
        # One scoring rule for every trained method: an EMA of the student's weights (not a method's teacher, whose
        # momentum is the method's own choice), so no method's number carries an averaging effect the others lack.
        self.average: EMATeacher | None = None
        if self.method.eval_model() is None:
            self.average = EMATeacher(self.model, self.tcfg.ema_momentum)
        self.step = 0
        self.epoch = 0
        self.micro_done = 0  # micro-batches consumed in the current epoch
        self.epoch_done = False  # the epoch's batches are done, its end (self-evolution, validation) not yet
        self.log_lines = 0  # lines of metrics.jsonl that belong to the state reached so far
        self.hidden_score: dict[str, float] = {}  # the label bank against the hidden D_u masks, as last scored
        self.best: dict[str, Any] = {"score": -math.inf, "epoch": -1, "step": -1, "metrics": {}}
        self.last_val: dict[str, Any] = {}
        self.writer: Any = None  # TensorBoard writer, rank 0, open during fit()

    # ------------------------------------------------------------------ building
    def _build_data(self) -> None:
        d, tr, env = self.dcfg, self.tcfg, self.env
        if not d.root:
            raise ConfigError("data.root is empty: pass --root DATA_ROOT or set data.root")
        train_id = DataId.parse(f"{d.dataset}/{d.split_by}/{d.train_split}")
        self.val_id = DataId.parse(f"{d.dataset}/{d.split_by}/{d.val_split}")
        split_file = Path(d.split_file) if d.split_file else self.run_dir / "split.json"
        if not d.split_file:
            if env.is_main:
                refer = ReferData(d.root, d.dataset, d.split_by)
                atomic_write_json(split_file, make_split(refer, d.ratio, d.split_seed, split=d.train_split))
            env.barrier()
        self.train_id = train_id
        self.labelled = RESDataset(d.root, train_id, split_file, "labelled")
        self.label_ratio = float((self.labelled.split_info or {}).get("ratio", d.ratio))
        self.unlabelled: RESDataset | None = None
        if self.method_cls.needs_unlabelled:
            self.unlabelled = RESDataset(d.root, train_id, split_file, "unlabelled")
            if len(self.unlabelled) == 0:
                raise ConfigError(f"method {self.method_cls.name!r} needs unlabelled data but data.ratio={d.ratio} labels every image")
        val_full = RESDataset(d.root, self.val_id)
        n_val = d.max_val_samples
        self.val: Dataset = Subset(val_full, range(min(n_val, len(val_full)))) if n_val else val_full
        self.val_full = val_full

        seed = int(self.cfg["seed"])
        self.sampler_l = EpochSampler(len(self.labelled), seed, True, env.rank, env.world_size, salt=1)
        bs = tr.batch_size
        self.drop_last = self.sampler_l.per_rank >= bs
        self.micro_per_epoch = self.sampler_l.per_rank // bs if self.drop_last else 1
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / tr.grad_accum)
        if tr.epochs:
            total = tr.epochs * self.steps_per_epoch
            self.total_steps = min(total, tr.max_steps) if tr.max_steps else total
        else:  # max_steps decides; an "epoch" is still one pass over the labelled images
            self.total_steps = tr.max_steps
        self.epochs = tr.epochs or math.ceil(self.total_steps / self.steps_per_epoch)
        self.sampler_u: EpochSampler | None = None
        if self.unlabelled is not None:
            self.sampler_u = EpochSampler(len(self.unlabelled), seed, True, env.rank, env.world_size, salt=2)
            ubs = tr.unlabelled_batch_size
            self.u_drop_last = self.sampler_u.per_rank >= ubs
            self.u_micro_per_epoch = self.sampler_u.per_rank // ubs if self.u_drop_last else 1

    def _build_banks(self) -> None:
        """Priors and proposal banks (train, val) when the method needs proposals or the model takes them (SESM).

        Priors come from `data.priors` (a JSONL from `l2l priors run`), or, on synthetic data, from the simulated
        MLLM run here. Pristine banks live in a cache shared by every run on the data (`data.cache_dir`, default
        `<root>/.l2l_cache`), computed once; a method that rewrites its training bank (self-evolution) works on
        its own copy in `RUN_DIR/cache/`, made once, so a resumed run continues from its evolved labels.
        """
        d = self.dcfg
        self.priors: dict[str, Any] | None = None
        self.train_bank = self.val_bank = self.input_bank = None
        self.candidates = None
        if self.method_cls.needs_candidates:
            from l2l.proposals.candidates import prepare_candidates

            for rank_turn in (True, False):
                if self.env.is_main == rank_turn:
                    self.candidates = prepare_candidates(
                        d.root, self.train_id, self.model_config.image_size, self._shared_cache(),
                        sam_checkpoint=d.sam_checkpoint or None, device=str(self.env.device),
                        progress=self.env.is_main and sys.stderr.isatty())
                if rank_turn:
                    self.env.barrier()
        if not self.method_cls.takes_proposals(self.model_config.use_sesm) or (
                d.proposal == "none" and not self.method_cls.needs_proposals):
            return
        if d.proposal == "none":
            raise ConfigError(f"method {self.method_cls.name!r} needs proposals but data.proposal=none")
        from l2l.proposals import BankSpec, ProposalBank, data_cache_dir

        shared = self._shared_cache()
        spec = BankSpec.from_data(d, self.model_config.image_size)
        build = dict(progress=self.env.is_main and sys.stderr.isatty(), device=str(self.env.device))
        own = self.run_dir / "cache"
        evolves = self.method_cls.evolves
        for rank_turn in (True, False):  # rank 0 computes first, the others then open the finished files
            if self.env.is_main == rank_turn:
                self.train_bank, train_priors = spec.prepare(self.train_id, shared, **build)
                # The network's input stays the MLLM's proposal (what it gets at test time); the labels come from
                # the label bank (`label_proposal` in the batch): the proposals themselves, or with
                # `data.label_init` the proposals matched to class-agnostic candidates; an evolving method
                # rewrites its own copy of it.
                self.input_bank = self.train_bank
                if d.label_init != "proposal":
                    self.train_bank = self._matched_labels(self.train_bank, shared)
                if evolves:
                    src, dst = data_cache_dir(shared, self.train_id), data_cache_dir(own, self.train_id)
                    if self.env.is_main and not dst.is_dir():
                        tmp = dst.with_name(f".{dst.name}.tmp")
                        shutil.copytree(src, tmp, dirs_exist_ok=True)
                        os.replace(tmp, dst)
                    if d.label_init != "proposal":
                        labels = self.train_bank
                        self.train_bank = ProposalBank(dst / labels.path.name, labels.size, labels.method,
                                                       read_size=labels.read_size)
                    else:
                        self.train_bank, train_priors = spec.prepare(self.train_id, own, **build)
                self.val_bank, val_priors = spec.prepare(self.val_id, shared, **build)
                self.priors = {**train_priors, **val_priors}
                if d.uninformative_confidence:  # what RPLE may learn from the MLLM's confidence, removed
                    self.priors = {k: dataclasses.replace(v, confidence=0.5) if v.box is not None else v
                                   for k, v in self.priors.items()}
            if rank_turn:
                self.env.barrier()

    def _matched_labels(self, bank: Any, shared: Path) -> Any:
        """The label bank `data.label_init` asks for, built once in the shared cache (see `matched_labels`)."""
        from l2l.proposals.candidates import matched_labels, prepare_candidates

        d = self.dcfg
        candidates = self.candidates or prepare_candidates(
            d.root, self.train_id, self.model_config.image_size, shared, sam_checkpoint=d.sam_checkpoint or None,
            device=str(self.env.device), progress=self.env.is_main and sys.stderr.isatty())
        return matched_labels(bank, candidates, RESDataset(d.root, self.train_id), d.label_init)

    def _shared_cache(self) -> Path:
        from l2l.proposals import shared_cache

        return shared_cache(self.dcfg.root, self.dcfg.cache_dir)

    def _build_optimizer(self) -> None:
        """AdamW without weight decay on norms and biases (1-d tensors), the visual encoder at
        `lr * backbone_lr_mult`, poly decay over `total_steps`."""
        tr = self.tcfg
        encoder = getattr(getattr(self.model, "module", self.model), "vision", None)
        vision = {id(p) for p in encoder.parameters()} if encoder is not None else set()
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for p in self.model.parameters():
            if p.requires_grad:
                groups.setdefault((id(p) in vision, p.ndim <= 1), []).append(p)
        self.params = [p for ps in groups.values() for p in ps]
        # The fused kernel updates all tensors in one pass: ~10x faster than the per-tensor loop on CPU.
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "weight_decay": 0.0 if no_decay else tr.weight_decay,
              "lr": tr.lr * (float(tr.backbone_lr_mult) if is_vision else 1.0)}
             for (is_vision, no_decay), ps in sorted(groups.items())],
            lr=tr.lr, fused=all(p.is_floating_point() for p in self.params),
        )
        total, power = self.total_steps, tr.poly_power
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: max(0.0, 1.0 - s / total) ** power
        )

    def _loader(self, dataset: Dataset, sampler: EpochSampler, batch_size: int, drop_last: bool, flip: bool,
                candidates: Any = None) -> DataLoader:
        # An own generator keeps DataLoader from drawing on the global torch RNG (that would shift dropout on resume).
        g = torch.Generator().manual_seed(int(self.cfg["seed"]) * 7919 + sampler.epoch)
        return DataLoader(
            SeededItems(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
            num_workers=self.tcfg.num_workers, generator=g,
            collate_fn=Collator(self.processor, bank=self.input_bank, priors=self.priors, flip=flip,
                                label_bank=self.train_bank if self.train_bank is not self.input_bank else None,
                                candidates=candidates),
            persistent_workers=False,
        )

    def _unlabelled_stream(self, start_micro: int) -> Iterator[dict[str, Any]]:
        """Unlabelled batches forever, starting at global micro-batch `start_micro` (its own epochs, its own order)."""
        assert self.unlabelled is not None and self.sampler_u is not None
        u_epoch, pos = divmod(start_micro, self.u_micro_per_epoch)
        ubs = self.tcfg.unlabelled_batch_size
        while True:
            self.sampler_u.set_epoch(u_epoch)
            self.sampler_u.set_start(pos * ubs)
            yield from self._loader(self.unlabelled, self.sampler_u, ubs, self.u_drop_last, self.tcfg.weak_flip,
                                    self.candidates)
            u_epoch, pos = u_epoch + 1, 0

    # ------------------------------------------------------------------ distributed helpers
    def _all_reduce_grads(self) -> None:
        all_reduce_grads(self.params, self.env)

    def _sync_buffers(self) -> None:
        average_buffers((self.model, self.eval_network()), self.env)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def _frozen_names(self) -> set[str]:
        """Parameters nothing trains (a frozen text encoder): rebuilt identically from config + seed on resume."""
        return {n for n, p in self.model.named_parameters() if not p.requires_grad}

    def _checkpoint_state(self) -> dict[str, Any]:
        frozen = self._frozen_names()  # skipping them keeps checkpoint.pt ~7x smaller with frozen MiniLM
        return {
            "model": {k: v for k, v in self.model.state_dict().items() if k not in frozen},
            "method": self.method.state_dict(),
            "average": self.average.state_dict() if self.average is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "micro_done": self.micro_done,
            "epoch_done": self.epoch_done,
            "log_lines": self.log_lines,
            "hidden_score": json.dumps(self.hidden_score),
            "best": {k: v for k, v in self.best.items() if k != "score"} | {"score": float(self.best["score"])},
            "last_val": json.dumps(self.last_val),
            "rng": rng_state(),
            "world_size": self.env.world_size,
            "config": json.dumps({k: self.cfg[k] for k in RESUME_KEYS}, sort_keys=True),
        }

    def save_checkpoint(self) -> None:
        """Rank 0 writes `checkpoint.pt` atomically; every rank waits for it."""
        if self.env.is_main:
            state = self._checkpoint_state()
            atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))
        self.env.barrier()

    def resume(self) -> bool:
        """Load `RUN_DIR/checkpoint.pt` if present; True when the run continues from it."""
        path = self.checkpoint_path
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which file, do not guess
            raise CheckpointError(f"{path}: cannot load the resume checkpoint "
                                  f"({str(exc) or type(exc).__name__}; an empty file is a write that was killed)") from exc
        saved = json.loads(state["config"])
        for key in RESUME_KEYS:
            if saved.get(key) != self.cfg[key]:
                raise CheckpointError(
                    f"{path}: the run directory was trained with a different '{key}' section; use a new --out or the same config"
                )
        if state["world_size"] != self.env.world_size:
            raise CheckpointError(f"{path}: saved with {state['world_size']} processes, resumed with {self.env.world_size}")
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if set(missing) - self._frozen_names() or unexpected:
            raise CheckpointError(f"{path}: model weights do not match the config (missing {sorted(missing)[:3]}, "
                                  f"unexpected {sorted(unexpected)[:3]})")
        self.method.load_state_dict(state["method"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.micro_done = int(state["step"]), int(state["epoch"]), int(state["micro_done"])
        self.epoch_done = bool(state.get("epoch_done", False))
        self.hidden_score = json.loads(state.get("hidden_score", "{}"))
        self.best = dict(state["best"])
        self.last_val = json.loads(state["last_val"])
        set_rng_state(state["rng"])
        if self.env.is_main:
            self.log_lines = truncate_metrics(self.run_dir / "metrics.jsonl", int(state.get("log_lines", -1)), self.step)
        return True

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.env.is_main:
            return
        path = self.run_dir / "metrics.jsonl"
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.log_lines += 1
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, record["step"])

    # ------------------------------------------------------------------ validation and saving
    def eval_network(self) -> nn.Module:
        """What is validated, saved and scored: the method's own network (prior_only), else the student's EMA."""
        own = self.method.eval_model()
        if own is not None:
            return own
        assert self.average is not None
        self.average.follow_device(self.model)
        return self.average.module

    def validate(self) -> dict[str, Any]:
        """Metrics on the validation set: prior-free, and with priors when the model uses SESM and there is a bank."""
        net = self.eval_network()
        amp = torch.bfloat16 if self.tcfg.bf16 else None
        progress = self.env.is_main and sys.stderr.isatty()
        result: dict[str, Any] = {}
        modes = ["prior_free"]
        takes_priors = self.model_config.use_sesm or self.method_cls.uses_proposals_at_eval
        if takes_priors and self.val_bank is not None:
            modes.insert(0, "prior")
        for mode in modes:
            result[mode] = evaluate(
                net, self.val, self.processor, bank=self.val_bank, use_priors=mode == "prior",
                batch_size=self.tcfg.eval_batch_size, progress=progress, amp_dtype=amp,
            )
        result["main"] = modes[0]
        return result

    def _card(self, val: dict[str, Any]) -> dict[str, Any]:
        d = self.dcfg
        return {
            "data": str(self.train_id),
            "val_data": str(self.val_id),
            "label_ratio": self.label_ratio,
            "method": self.cfg["method"]["name"],
            "seed": self.cfg["seed"],
            "epoch": self.epoch,
            "step": self.step,
            "proposal": d.proposal if self.val_bank is not None else None,
            "metrics": {f"{mode}/{k}": v for mode in ("prior", "prior_free") for k, v in val.get(mode, {}).items()},
        }

    def _validate_and_save(self) -> None:
        self._sync_buffers()
        val = self.validate()
        self.last_val = val
        score = float(val[val["main"]][self.tcfg.select_metric])
        record: dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        for mode in ("prior", "prior_free"):
            for key, value in val.get(mode, {}).items():
                record[f"val/{mode}/{key}"] = value
        self._log(record)
        is_best = score > self.best["score"]
        if is_best:
            self.best = {"score": score, "epoch": self.epoch, "step": self.step, "metrics": val}
        net = self.eval_network()
        if self.env.is_main and hasattr(net, "save_pretrained"):  # prior_only has no network of its own
            card = self._card(val)
            if is_best:
                save_model_dir(net, self.run_dir / "best", card)
            save_model_dir(net, self.run_dir / "last", card)
        self.env.barrier()

    # ------------------------------------------------------------------ method hooks
    def _plain_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        """This rank's share of `dataset` in a fixed order, unflipped, with proposals from the live bank."""
        sampler = EpochSampler(len(dataset), int(self.cfg["seed"]), False, self.env.rank, self.env.world_size)
        return self._loader(dataset, sampler, batch_size, False, False)

    def _epoch_context(self) -> dict[str, Any]:
        """What `Method.on_epoch_end` reads (docs/architecture.md): loaders over D_u and the labelled proxy set."""
        ubs = self.tcfg.unlabelled_batch_size
        return {
            "device": self.env.device,
            "step": self.step,
            "unlabelled_loader": self._plain_loader(self.unlabelled, ubs) if self.unlabelled is not None else None,
            "proxy_loader": self._plain_loader(self.labelled, ubs),
        }

    def _hidden_scorer(self) -> Any:
        """On ShapeRefs only: scores the label bank against the hidden D_u masks (evaluation code; never handed to
        the method)."""
        if self.unlabelled is None or self.dcfg.dataset != "shaperefs" or self.train_bank is None:
            return None
        if not hasattr(self, "_hidden"):
            from l2l.evaluation.pseudo import hidden_label_scorer

            self._hidden = hidden_label_scorer(self.dcfg.root, self.train_id, self.unlabelled.sample_ids())
        return self._hidden

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train (resuming from `RUN_DIR/checkpoint.pt` if present) and return a summary.

        Summary keys: `run_dir`, `steps`, `epochs` (completed), `resumed`, `stopped` (the stop hook fired),
        `best` (`{"score", "epoch", "step", "metrics"}`), `last` (the last validation metrics).
        """
        env = self.env
        resumed = self.resume()
        self.writer = None
        if env.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))
        try:
            stopped = self._train_loop()
        finally:
            if self.writer is not None:
                self.writer.close()
        return {
            "run_dir": str(self.run_dir),
            "steps": self.step,
            "epochs": self.epoch,
            "resumed": resumed,
            "stopped": stopped,
            "best": self.best,
            "last": self.last_val,
        }

    def _train_loop(self) -> bool:
        tr, env = self.tcfg, self.env
        accum, bs = tr.grad_accum, tr.batch_size
        steps_this_run = 0
        u_stream = None
        if self.unlabelled is not None:
            u_stream = self._unlabelled_stream(self.epoch * self.micro_per_epoch + self.micro_done)
        amp = tr.bf16
        running: dict[str, float] = {}
        seen: dict[str, float] = {}  # optimizer steps that logged each key (some logs come every other step)
        t0, images = time.perf_counter(), 0
        self.model.train()
        if not self.method_cls.needs_training:
            # Nothing to learn (prior_only): score and save once, so its run directory looks like any other.
            if not self.last_val:
                self._validate_and_save()
                self.epoch = self.epochs
                self.save_checkpoint()
            return False
        if tr.validate_at_start and self.step == 0 and not self.last_val:
            # the starting point is a candidate for best/: with priors, a do-no-harm network starts as prior_only
            self._validate_and_save()
            self.save_checkpoint()
        # `epoch_done`: resumed between an epoch's last batch and the end of its end-of-epoch work
        while (self.epoch < self.epochs and self.step < self.total_steps) or self.epoch_done:
            epoch_start_step = self.step - self.micro_done // accum
            self.sampler_l.set_epoch(self.epoch)
            self.sampler_l.set_start(self.micro_done * bs)
            loader = self._loader(self.labelled, self.sampler_l, bs, self.drop_last, tr.weak_flip)
            bar = None
            if env.is_main and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(total=self.micro_per_epoch, initial=self.micro_done, desc=f"epoch {self.epoch}", leave=False)
            for batch_l in ([] if self.epoch_done else loader):
                group_start = (self.micro_done // accum) * accum
                group_size = min(accum, self.micro_per_epoch - group_start)
                batch_l = move_batch(batch_l, env.device)
                batch_u = move_batch(next(u_stream), env.device) if u_stream is not None else None
                with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=amp):
                    out = self.method.train_step(batch_l, batch_u, self.step)
                if not bool(torch.isfinite(out.loss.detach())):
                    raise TrainingError(
                        f"{self.run_dir}: the loss is {float(out.loss.detach())} at step {self.step}; training stopped. "
                        f"{CHECKPOINT}, best/ and last/ keep the last finite state (lower train.lr, or check the data)")
                (out.loss / group_size).backward()
                self.micro_done += 1
                images += len(batch_l["sample_ids"])
                for k, v in out.logs.items():
                    running[k] = running.get(k, 0.0) + float(v) / group_size
                    seen[k] = seen.get(k, 0.0) + 1.0 / group_size
                if bar is not None:
                    bar.update(1)
                if self.micro_done - group_start < group_size:
                    continue
                self._all_reduce_grads()
                if tr.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, tr.grad_clip)
                lr = self.optimizer.param_groups[0]["lr"]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.method.after_optimizer_step(self.step)
                if self.average is not None:
                    self.average.update(self.model, self.step)
                self.step += 1
                steps_this_run += 1
                if self.step % tr.log_every == 0:
                    dt = time.perf_counter() - t0
                    rec = {"step": self.step, "epoch": self.epoch, "lr": lr}
                    rec.update({f"train/{k}": v / max(seen.get(k, 0.0), 1e-9) for k, v in running.items()})
                    rec["train/images_per_s"] = images * env.world_size / max(dt, 1e-9)
                    self._log(rec)
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec.get('train/loss', float('nan')):.3f}")
                    elif env.is_main:  # no TTY (logs, CI, a worker process): one line per log interval instead
                        eta = (self.total_steps - self.step) * dt / tr.log_every
                        log.info("  step %d/%d  loss %.3f  %.1f img/s  eta %.1f min", self.step, self.total_steps,
                                 rec.get("train/loss", float("nan")), rec["train/images_per_s"], eta / 60)
                    running, seen, t0, images = {}, {}, time.perf_counter(), 0
                if self.step % tr.checkpoint_every == 0 and self.micro_done < self.micro_per_epoch:
                    self.save_checkpoint()
                if tr.stop_after_steps and steps_this_run >= tr.stop_after_steps:
                    if bar is not None:
                        bar.close()
                    return True
                if self.step >= self.total_steps:
                    break
            if bar is not None:
                bar.close()
            self.epoch_done = True
            finished = self.step >= self.total_steps or self.epoch + 1 >= self.epochs
            context = self._epoch_context()
            scorer = self._hidden_scorer() if env.is_main and self.method.evolves_at(self.step) else None
            if scorer is not None and not self.hidden_score:  # the MLLM's proposals, before any round
                self.hidden_score = scorer(self.train_bank)
            epoch_logs = self.method.on_epoch_end(self.epoch, context)
            if scorer is not None and epoch_logs:
                epoch_logs.update({f"evolve/hidden_before_{k}": v for k, v in self.hidden_score.items()})
                self.hidden_score = scorer(self.train_bank)
                epoch_logs.update({f"evolve/hidden_{k}": v for k, v in self.hidden_score.items()})
            if epoch_logs:
                self._log({"step": self.step, "epoch": self.epoch, **{f"method/{k}": v for k, v in epoch_logs.items()}})
            every = tr.val_every_steps
            validate = (finished or (tr.val_every > 0 and (self.epoch + 1) % tr.val_every == 0)
                        or (every > 0 and self.step // every > epoch_start_step // every))
            if epoch_logs or validate:
                # the rewritten bank and the state that knows of the round become durable together, and a crash in
                # validation (a bad image) loses no training
                self.save_checkpoint()
            if validate:
                self._validate_and_save()
            self.epoch += 1
            self.micro_done = 0
            self.epoch_done = False
            self.save_checkpoint()
        return False
