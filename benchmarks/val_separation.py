"""How well a split separates two methods: paired bootstrap of the mIoU difference over its sentences.

Reads the per-sentence records (`samples_<split>_<mode>_<pick>.jsonl`) that `l2l bench` leaves in every cell and, for each
pair of cells, prints the mIoU difference and the bootstrap std of that difference (resampling sentences, the
same draw for both methods). A split separates 1 mIoU when that std is well under 1.

    python benchmarks/val_separation.py --grid benchmarks/results/grid --split val --mode prior --pick last
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np


def per_sentence(path: Path) -> dict[str, float]:
    return {r["sample_id"]: float(r["IoU"]) for r in map(json.loads, path.read_text().splitlines()) if r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--mode", default="prior")
    parser.add_argument("--pick", default="best", choices=("best", "last"),
                        help="which of a cell's scored networks (a cell scored once stands for both)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    cells = {}
    for final in sorted(args.grid.glob("runs/*/*/*/final.json")):  # the reported pick; `_last` if one network is both
        wanted, other = (final.parent / f"samples_{args.split}_{args.mode}_{p}.jsonl"
                         for p in (args.pick, "last" if args.pick == "best" else "best"))
        both = not (final.parent / f"samples_{args.split}_{args.mode}_best.jsonl").is_file()  # one network scored
        path = wanted if wanted.is_file() else (other if both and other.is_file() else None)
        if path is not None:
            cells[final.parent.relative_to(args.grid / "runs").as_posix()] = per_sentence(path)
    if len(cells) < 2:
        raise SystemExit(f"need two finished cells with samples_{args.split}_{args.mode}_*.jsonl under {args.grid}/runs")
    rng = np.random.default_rng(0)
    ids = sorted(set.intersection(*(set(c) for c in cells.values())))
    draws = rng.integers(0, len(ids), size=(args.draws, len(ids)))
    rows = []
    print(f"{len(ids)} sentences of {args.split} ({args.mode}); paired bootstrap, {args.draws} draws")
    print("| A | B | mIoU A - B | std of the difference | unpaired std of one mIoU |")
    print("|---|---|---|---|---|")
    for a, b in itertools.combinations(sorted(cells), 2):
        x = np.array([cells[a][i] for i in ids]) * 100
        y = np.array([cells[b][i] for i in ids]) * 100
        diff = (x - y)[draws].mean(1)
        single = x[draws].mean(1).std()
        rows.append({"a": a, "b": b, "diff": float((x - y).mean()), "std": float(diff.std()), "single_std": float(single)})
        print(f"| {a} | {b} | {rows[-1]['diff']:+.2f} | {rows[-1]['std']:.2f} | {single:.2f} |")
    if args.out:
        args.out.write_text(json.dumps({"sentences": len(ids), "split": args.split, "mode": args.mode,
                                        "pick": args.pick, "pairs": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
