"""Where a trained network gains or loses against its own input: test IoU per bin of the proposal's IoU.

Every method of the grid is scored with priors on the same sentences, and `prior_only` is the proposal itself;
binning the sentences by the proposal's IoU shows whether a network repairs bad proposals (wrong object, poor
extent) or spoils good ones (edges). Reads the per-sentence files a finished `l2l bench` grid leaves
(`DIR/runs/METHOD/rRATIO/sSEED/samples_SPLIT_prior_{best,last}.jsonl`); nothing is trained or re-evaluated.

    python benchmarks/by_proposal_quality.py --grid benchmarks/results/bench
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

BINS = ((0.0, 0.1), (0.1, 0.5), (0.5, 0.8), (0.8, 0.9), (0.9, 1.0))
SPLITS = ("testA", "testB")


def load_cell(cell: Path) -> dict[tuple[str, str], float] | None:
    """{(split, sample_id): IoU} of a finished cell's with-prior test samples, or None when a split is missing."""
    scores: dict[tuple[str, str], float] = {}
    for split in SPLITS:
        path = cell / f"samples_{split}_prior_best.jsonl"  # the reported pick; `_last` when one network is both
        path = path if path.is_file() else cell / f"samples_{split}_prior_last.jsonl"
        if not path.is_file() or not (cell / "final.json").is_file():
            return None
        with path.open() as fh:
            for line in fh:
                row = json.loads(line)
                scores[(split, row["sample_id"])] = float(row["IoU"])
    return scores


def bin_of(iou: float) -> int:
    return next(i for i, (lo, hi) in enumerate(BINS) if iou < hi or i == len(BINS) - 1)


def analyse(grid: Path) -> dict:
    """Per (method, ratio): mean IoU per proposal bin, averaged over the seeds that finished."""
    runs = grid / "runs"
    proposal = None
    for cell in sorted((runs / "prior_only").glob("r*/s*")):
        proposal = load_cell(cell)  # the proposal does not depend on ratio or seed
        if proposal is not None:
            break
    if proposal is None:
        raise SystemExit(f"no finished prior_only cell under {runs}: it defines the bins")
    bins = {key: bin_of(v) for key, v in proposal.items()}
    counts = [sum(1 for b in bins.values() if b == i) for i in range(len(BINS))]
    rows = []
    for method_dir in sorted(p for p in runs.iterdir() if p.is_dir() and p.name != "prior_only"):
        for ratio_dir in sorted(method_dir.glob("r*"), key=lambda p: float(p.name[1:])):
            per_seed: list[list[float]] = []
            for cell in sorted(ratio_dir.glob("s*")):
                scores = load_cell(cell)
                if scores is None:
                    continue
                sums, ns = [0.0] * len(BINS), [0] * len(BINS)
                for key, b in bins.items():
                    if key in scores:
                        sums[b] += scores[key]
                        ns[b] += 1
                per_seed.append([100 * s / n if n else float("nan") for s, n in zip(sums, ns)])
            if per_seed:
                rows.append({"method": method_dir.name, "ratio": float(ratio_dir.name[1:]), "seeds": len(per_seed),
                             "mIoU_by_bin": [statistics.fmean(col) for col in zip(*per_seed)]})
    prior_row = [100 * statistics.fmean([proposal[k] for k, b in bins.items() if b == i]) if counts[i] else
                 float("nan") for i in range(len(BINS))]
    return {"bins": [list(b) for b in BINS], "sentences": counts, "proposal_mIoU_by_bin": prior_row, "rows": rows}


def to_markdown(result: dict) -> str:
    heads = [f"[{lo:.1f}, {hi:.1f}{']' if hi == 1.0 else ')'}" for lo, hi in result["bins"]]
    lines = ["Test mIoU (%) with priors, per bin of the proposal's own IoU (testA + testB; mean over seeds).", "",
             "| ratio | method | seeds | " + " | ".join(heads) + " |",
             "|---|---|---|" + "---|" * len(heads),
             "| | sentences | | " + " | ".join(str(n) for n in result["sentences"]) + " |",
             "| | proposal (prior_only) | | " + " | ".join(f"{v:.1f}" for v in result["proposal_mIoU_by_bin"]) + " |"]
    for row in sorted(result["rows"], key=lambda r: (r["ratio"], r["method"])):
        ratio = f"{100 * row['ratio']:g}%"
        lines.append(f"| {ratio} | {row['method']} | {row['seeds']} | "
                     + " | ".join(f"{v:.1f}" for v in row["mIoU_by_bin"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, default=Path("benchmarks/results/bench"), help="an l2l bench --out dir")
    args = parser.parse_args()
    result = analyse(args.grid)
    (args.grid / "by_proposal_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    table = to_markdown(result)
    (args.grid / "by_proposal_quality.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
