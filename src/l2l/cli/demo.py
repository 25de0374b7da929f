"""`l2l demo`: the README's main command (ShapeRefs, simulated-MLLM priors, supervised vs L2L at 1% labels)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """example:
  l2l demo --out demo_out
  # then open demo_out/index.html (table, prediction overlays, pseudo-label gallery)
ShapeRefs is generated once into --data-root (default: $L2L_CACHE or ~/.cache/l2l, then shaperefs-<images>-s<seed>)
and reused. Runs resume: a second call with the same --out reuses finished training."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole L2L loop on the embedded ShapeRefs benchmark (minutes on a CPU)",
        description="Generate ShapeRefs, simulated-MLLM priors and proposals; train supervised and L2L at 1%% "
        "labels; evaluate both with priors and prior-free; write results.json, overlays and a pseudo-label gallery.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--data-root", default=None, help="where ShapeRefs is generated/cached")
    p.add_argument("--images", type=int, default=1500, help="ShapeRefs images to generate (default 1500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="training config (default: configs/shaperefs_semi.yaml)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.max_steps=300")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from l2l.cli.bench import default_config
    from l2l.experiments.demo import default_cache, run_demo

    data_root = Path(args.data_root) if args.data_root else default_cache() / f"shaperefs-{args.images}-s{args.seed}"
    config = Path(args.config) if args.config else default_config("shaperefs_semi.yaml")
    run_demo(Path(args.out), data_root, args.images, args.seed, config, tuple(args.overrides),
             log=lambda m: print(m, flush=True))
    return 0
