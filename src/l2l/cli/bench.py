"""`l2l bench`: the method x label-ratio x seed grid, resumable, written as results.json and table.md."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from l2l.cli.common import positive_int

EPILOG = """examples:
  # the quick grid (1% labels, one seed, every method)
  l2l bench --quick --root data/shaperefs --out runs/bench_quick
  # the evidence table: 3 ratios x 3 seeds, every method, plus the fully supervised upper bound
  l2l bench --root data/shaperefs --dataset shaperefs --ratios 0.01 0.05 0.1 --seeds 0 1 2 --out runs/bench
  # RefCOCO with precomputed MLLM priors (one JSONL per split id, see `l2l priors run`)
  l2l bench --root /data/refer --dataset refcoco --split-by unc --config configs/refcoco_lavt.yaml \\
      --eval-splits testA testB --out runs/bench_refcoco data.priors=/data/priors/refcoco_unc.jsonl
  # two cells at once, each in its own process with one torch thread (proposal banks are built first)
  l2l bench --quick --root data/shaperefs --out runs/bench_quick --jobs 2
A finished cell (runs/<method>/r<ratio>/s<seed>/final.json) is never redone; an unfinished one resumes.
A finished cell whose config.yaml differs from what the grid now asks (a changed default or override) is refused."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run the method x label-ratio x seed grid and write the results table",
        description="Train and evaluate every (method, ratio, seed) cell with one schedule; resumable.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--root", required=True, help="data root (ShapeRefs is generated there if missing)")
    p.add_argument("--dataset", default="shaperefs")
    p.add_argument("--split-by", default="unc")
    p.add_argument("--config", default=None, help="training config (default: configs/shaperefs_semi.yaml of this repo)")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.05, 0.1])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=None, help="default: every method (see l2l.experiments.grid)")
    p.add_argument("--ablations", action="store_true", help="also run the L2L ablations (at the smallest ratio)")
    p.add_argument("--no-full", action="store_true", help="skip the fully supervised (100%%) upper bound")
    p.add_argument("--eval-splits", nargs="+", default=["testA", "testB"])
    p.add_argument("--quick", action="store_true", help="1%% labels, seed 0, every method, no upper bound")
    p.add_argument("--images", type=int, default=1500, help="ShapeRefs size when it has to be generated")
    p.add_argument("--out", required=True, help="output directory (results.json, table.md, runs/)")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild results.json / table.md from the finished cells of this grid; train nothing")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="cells to train at once, each in its own process with train.threads=1 unless set "
                        "(default 1: one after the other in this process)")
    p.add_argument("--doc", type=Path, default=None, metavar="MD",
                   help="also put the table into this page between <!-- bench:OUTNAME --> markers (docs/results.md)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value (applied to every run)")
    p.set_defaults(func=run)


def default_config(name: str) -> Path:
    """A config shipped with the package (`l2l/configs/`), so a non-editable install has it too."""
    from l2l.training.config import config_path

    return config_path(name)


def run(args: argparse.Namespace) -> int:
    from l2l.experiments.grid import ALL_METHODS, QUICK_METHODS, grid_cells, report_grid, run_grid, update_doc
    from l2l.data.shaperefs import ensure_shaperefs

    # `--eval-splits val train.lr=1e-4`: argparse gives a trailing override to the list option before it
    for name in ("eval_splits", "methods"):
        values = getattr(args, name) or []
        args.overrides = [*args.overrides, *(v for v in values if "=" in v)]
        if values:
            setattr(args, name, [v for v in values if "=" not in v])
    if not args.eval_splits:
        print("l2l bench: --eval-splits names no split", file=sys.stderr)
        return 2
    root = Path(args.root)
    if args.dataset == "shaperefs":
        ensure_shaperefs(root, args.images, log=lambda m: print(m, file=sys.stderr))
    config = Path(args.config) if args.config else default_config("shaperefs_semi.yaml")
    methods = list(args.methods or ALL_METHODS)
    ratios, seeds, full = args.ratios, args.seeds, not args.no_full
    if args.quick:
        methods, ratios, seeds, full = list(args.methods or QUICK_METHODS), [0.01], [0], False
    cells = grid_cells(methods, ratios, seeds, full=full, ablations=args.ablations)
    command = "l2l bench " + " ".join(shlex.quote(a) for a in sys.argv[2:] if a != "--report-only")
    if args.report_only:
        report_grid(cells, args.out, command, log=lambda m: print(m, file=sys.stderr))
        if args.doc is not None:
            update_doc(args.doc, Path(args.out))
        print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
        return 0
    run_grid(
        config=config, root=root, dataset=args.dataset, split_by=args.split_by, cells=cells, out=args.out,
        eval_splits=args.eval_splits, overrides=args.overrides, command=command, jobs=args.jobs,
    )
    if args.doc is not None:
        update_doc(args.doc, Path(args.out))
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    return 0
