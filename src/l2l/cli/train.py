"""`l2l train`: train a RES model from a YAML config, resuming automatically from the run directory."""

from __future__ import annotations

import argparse
import json

EPILOG = """examples:
  l2l train --config configs/shaperefs.yaml --root data --out runs/sup100
  l2l train --config configs/shaperefs.yaml --root data --out runs/sup10 data.ratio=0.1 train.epochs=20
  torchrun --nproc-per-node 4 -m l2l.cli.main train --config configs/refcoco_lavt.yaml --root R --out runs/lavt

Overrides are dotted keys checked against the defaults (bool/int/float/str/list, parsed as YAML).
Running the same command again on an existing --out resumes from RUN_DIR/checkpoint.pt."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model (supervised or a semi-supervised method) from a YAML config",
        description="Train a referring expression segmentation model; writes config.yaml, metrics.jsonl, "
        "tb/, checkpoint.pt, best/ and last/ into --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="YAML config file, or the name of a shipped one (tiny, shaperefs, shaperefs_semi, refcoco_lavt)")
    p.add_argument("--root", help="data root (sets data.root)")
    p.add_argument("--out", required=True, help="run directory; an existing one is resumed")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-4")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from l2l.training.config import load_config
    from l2l.training.trainer import Trainer

    overrides = list(args.overrides)
    if args.root:
        overrides.insert(0, f"data.root={args.root}")
    cfg = load_config(args.config, overrides)
    trainer = Trainer(cfg, args.out)
    summary = trainer.fit()
    if trainer.env.is_main:
        best = summary["best"]
        print(json.dumps({"run_dir": summary["run_dir"], "steps": summary["steps"], "epochs": summary["epochs"],
                          "stopped": summary["stopped"], "best_epoch": best["epoch"], "best_score": best["score"]}))
    return 0
