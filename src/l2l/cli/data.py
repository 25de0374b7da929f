"""`l2l data split|stats|synth`: label-ratio split files, dataset statistics, the ShapeRefs generator."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from l2l.cli.common import group_help
from l2l.data.refer import DATASETS, ReferData
from l2l.data.splits import make_split, split_from_semires
from l2l.errors import InputError
from l2l.utils.io import atomic_write_json


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, type=Path, help="data root holding <dataset>/refs(<split_by>).p")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset name")
    p.add_argument("--split-by", required=True, help="splitBy: unc, google or umd (as the dataset has)")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="dataset tools: label-ratio splits, statistics, the ShapeRefs generator",
        description="Dataset tools for the refer format (RefCOCO, RefCOCO+, RefCOCOg, ShapeRefs).",
        epilog="Example: l2l data stats --root data --dataset refcoco --split-by unc --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = data.add_subparsers(dest="data_command", metavar="<data command>")

    split = sub.add_parser(
        "split",
        help="choose labelled training images for a label ratio and write their ids",
        description="Choose floor(ratio x #train images) labelled images (all their refs) with a seeded RNG.",
        epilog="Examples:\n  l2l data split --root data --dataset refcoco --split-by unc --ratio 0.01 --seed 0 "
        "--out splits/refcoco_unc_1pct_s0.json\n"
        "  # the very images a published SemiRES table labelled\n"
        "  l2l data split --root data --dataset refcoco --split-by unc --from-semires refcoco_1%%.json "
        "--out splits/refcoco_unc_semires_1pct.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(split)
    how = split.add_mutually_exclusive_group(required=True)
    how.add_argument("--ratio", type=float, help="share of training images labelled, in (0, 1]")
    how.add_argument("--from-semires", type=Path, metavar="FILE",
                     help="convert a SemiRES split file (its 'train' entries' iids are the labelled images)")
    split.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    split.add_argument("--out", required=True, type=Path, help="split file to write (JSON)")
    split.set_defaults(func=_cmd_split)

    stats = sub.add_parser(
        "stats",
        help="validate a dataset and count refs, sentences and images per split",
        description="Validate refs, annotations, polygons and image files, then count per split.",
        epilog="Example: l2l data stats --root data --dataset shaperefs --split-by unc --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_dataset_args(stats)
    stats.add_argument("--json", action="store_true", help='print {"splits": {...}} as JSON to stdout')
    stats.set_defaults(func=_cmd_stats)

    synth = sub.add_parser(
        "synth",
        help="generate the ShapeRefs synthetic benchmark in the refer layout",
        description="Write ROOT/shaperefs/refs(unc).p, ROOT/shaperefs/instances.json and ROOT/images/shaperefs/.",
        epilog="Example: l2l data synth --out data --images 5000 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    synth.add_argument("--out", required=True, type=Path, help="data root to write into")
    synth.add_argument("--images", type=int, default=5000, help="number of images (default 5000)")
    synth.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    synth.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    synth.set_defaults(func=_cmd_synth)

    data.set_defaults(func=lambda args: group_help(data))


def _cmd_split(args: argparse.Namespace) -> int:
    refer = ReferData(args.root, args.dataset, args.split_by)
    if args.from_semires is not None:
        split = split_from_semires(args.from_semires, refer)
    else:
        split = make_split(refer, args.ratio, args.seed)
    atomic_write_json(args.out, split)
    print(
        f"wrote {args.out}: {len(split['labelled_image_ids'])} of {split['num_images']} train images labelled, "
        f"{split['num_labelled_refs']} refs"
    )
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    refer = ReferData(args.root, args.dataset, args.split_by)
    refer.validate(check_images=True, progress=sys.stderr.isatty())
    counts = refer.stats()
    if args.json:
        json.dump({"splits": counts}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    print(f"{args.dataset} ({args.split_by}) at {args.root}")
    print(f"{'split':<8} {'refs':>8} {'sentences':>10} {'images':>8}")
    for name, c in counts.items():
        print(f"{name:<8} {c['refs']:>8} {c['sentences']:>10} {c['images']:>8}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise InputError(f"--images must be at least 1, got {args.images}")
    from l2l.data.shaperefs import generate  # imported here: the generator pulls in heavier dependencies

    summary = generate(args.out, args.images, args.seed, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0
