"""Where a method's gain over `prior_only` comes from: the sentences the MLLM gave a box for, or the ones it did not.

A network with priors can beat the thresholded proposal in two ways: by editing the proposal (which object, which
edges) where there is one, or by its prior-free answer where the prior failed. The grid's per-sample records
(`samples_SPLIT_prior_PICK.jsonl`, written by every cell) carry each sentence's IoU and whether it had a prior;
this splits the mIoU difference to `prior_only` into the two parts (each weighted by its share of sentences, so
the parts add up to the difference), per seed and averaged.

    python benchmarks/gain_by_prior.py --grid benchmarks/results/grid_edit --ratio 0.01 --splits testA testB \\
        --out benchmarks/results/gain_by_prior_edit.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _records(cell: Path, splits: list[str], pick: str) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for split in splits:
        path = cell / f"samples_{split}_prior_{pick}.jsonl"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (run the grid with --eval-splits {' '.join(splits)})")
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            out[(split, rec["sample_id"])] = rec
    return out


def gain_by_prior(grid: Path, ratio: str, splits: list[str], pick: str = "last") -> dict:
    """`{method: {"with_box": mean, "no_box": mean, "seeds": [...], "n_no_box": int, "n": int}}`, percent."""
    runs = grid / "runs"
    result: dict[str, dict] = {}
    for method_dir in sorted(p for p in runs.iterdir() if p.is_dir() and p.name != "prior_only"):
        per_seed = []
        for cell in sorted(c for c in (method_dir / f"r{ratio}").glob("s*") if (c / "final.json").is_file()):
            if not (cell / f"samples_{splits[0]}_prior_{pick}.jsonl").is_file() and \
                    (cell / f"samples_{splits[0]}_prior_free_{pick}.jsonl").is_file():
                continue  # a network scored prior-free only (l2l_no_sesm): no with-priors answer to split
            base = _records(runs / "prior_only" / f"r{ratio}" / cell.name, splits, "last")
            recs = _records(cell, splits, pick)
            if recs.keys() != base.keys():
                raise SystemExit(f"{cell}: its sentences differ from prior_only's")
            n = len(recs)
            parts = {"with_box": 0.0, "no_box": 0.0}
            for key, rec in recs.items():
                parts["with_box" if rec["has_prior"] else "no_box"] += 100.0 * (rec["IoU"] - base[key]["IoU"]) / n
            per_seed.append({"seed": cell.name, **parts, "n_no_box": sum(not r["has_prior"] for r in recs.values()),
                             "n": n})
        if per_seed:
            result[method_dir.name] = {
                "with_box": statistics.mean(s["with_box"] for s in per_seed),
                "no_box": statistics.mean(s["no_box"] for s in per_seed),
                "n_no_box": per_seed[0]["n_no_box"], "n": per_seed[0]["n"], "seeds": per_seed,
            }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True, help="a grid's --out directory")
    parser.add_argument("--ratio", default="0.01", help="the label ratio as in the cell directories (r0.01)")
    parser.add_argument("--splits", nargs="+", default=["testA", "testB"])
    parser.add_argument("--pick", default="last", choices=["last", "best"])
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args()
    result = gain_by_prior(args.grid, args.ratio, args.splits, args.pick)
    for method, r in result.items():
        print(f"{method:>24}  with a box {r['with_box']:+.3f}  no box ({r['n_no_box']} of {r['n']}) "
              f"{r['no_box']:+.3f}  mIoU points over prior_only ({len(r['seeds'])} seeds)")
    if args.out:
        args.out.write_text(json.dumps({"grid": str(args.grid), "ratio": args.ratio, "splits": args.splits,
                                        "pick": args.pick, "methods": result}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
