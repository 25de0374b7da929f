"""What a smaller proposal store costs: mIoU of the thresholded proposals, disk and read time per stored side.

The bank stores one uint8 map per sentence. At the LAVT input side (480) a RefCOCO train bank is 120,624 x 480^2
bytes = 27.8 GB, twice that with a self-evolving run's own copy. `data.bank_side` stores maps at a smaller side and
upsamples them bilinearly on read. This script measures, on one split, for each stored side: the prior-only mIoU
of the proposals read back at the model side (thresholded at 0.5 and resized to the image, as `prior_only` scores),
the bytes per sentence, the median read time of one map, and the disk a RefCOCO-family train bank would take.

    python benchmarks/proposal_store.py --root data/shaperefs --data shaperefs/unc/val --side 480 \
        --stored 480 240 160 120 --out benchmarks/results/proposal_store
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from l2l.data.dataset import DataId, RESDataset
from l2l.proposals import ProposalBank, make_proposal
from l2l.proposals.prepare import prepare_bank

# train sentences of the usual splits (RefCOCO/RefCOCO+ unc, RefCOCOg umd)
TRAIN_SENTENCES = {"RefCOCO": 120_624, "RefCOCO+": 120_191, "RefCOCOg": 80_512}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True)
    p.add_argument("--data", default="shaperefs/unc/val")
    p.add_argument("--proposal", default="grabcut")
    p.add_argument("--side", type=int, default=480, help="the model's input side (maps are read at it)")
    p.add_argument("--stored", type=int, nargs="+", default=[480, 240, 160, 120])
    p.add_argument("--max-samples", type=int, default=0, help="first N sentences (0 = all)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/proposal_store"))
    args = p.parse_args()

    data_id = DataId.parse(args.data)
    ds = RESDataset(args.root, data_id)
    with tempfile.TemporaryDirectory() as tmp:
        # the simulated MLLM's priors, as training uses them (cached in a throwaway directory)
        _, priors = prepare_bank(args.root, data_id, "box", 8, tmp, progress=False)
        n = len(ds.samples) if args.max_samples <= 0 else min(args.max_samples, len(ds.samples))
        banks = {s: ProposalBank(Path(tmp) / f"s{s}", s, args.proposal, read_size=args.side) for s in args.stored}
        gts, sizes = [], []
        t0 = time.perf_counter()
        for i in range(n):
            sample = ds.samples[i]
            prop = make_proposal(args.proposal, ds.image(i), priors.get(sample.sample_id))
            for bank in banks.values():
                bank.put(sample.sample_id, prop.map, prop.quality, 0.0, key="")
            gts.append(ds.mask(i) > 0)
            sizes.append((sample.width, sample.height))
        build_s = time.perf_counter() - t0
        rows = []
        for side, bank in banks.items():
            ious, reads = [], []
            for i in range(n):
                sid = ds.samples[i].sample_id
                t = time.perf_counter()
                q = bank.get(sid)
                reads.append(time.perf_counter() - t)
                pred = cv2.resize(q, sizes[i], interpolation=cv2.INTER_LINEAR) > 0.5
                union = np.logical_or(pred, gts[i]).sum()
                ious.append(float(np.logical_and(pred, gts[i]).sum() / union) if union else 1.0)
            row = {"stored_side": side, "read_side": args.side, "mIoU": 100 * statistics.fmean(ious),
                   "bytes_per_sentence": side * side, "read_ms_median": 1000 * statistics.median(reads)}
            for name, count in TRAIN_SENTENCES.items():
                row[f"{name}_GB_x2"] = round(2 * count * side * side / 1e9, 2)  # pristine + evolving copy
            rows.append(row)
    full = next((r["mIoU"] for r in rows if r["stored_side"] == args.side), None)
    result = {"data": args.data, "proposal": args.proposal, "sentences": n, "proposal_build_s": round(build_s, 1),
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Proposal store: stored side vs mIoU, disk and read time ({args.data}, {args.proposal}, {n} sentences)",
             "", f"Command: `python benchmarks/proposal_store.py --root {args.root} --data {args.data} --side "
             f"{args.side} --stored {' '.join(map(str, args.stored))}`", "",
             "| stored side | read side | prior mIoU | change | bytes / sentence | read ms (median) | "
             + " | ".join(f"{k} train GB (x2)" for k in TRAIN_SENTENCES) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(TRAIN_SENTENCES)]
    for r in rows:
        change = f"{r['mIoU'] - full:+.2f}" if full is not None else "-"
        lines.append(f"| {r['stored_side']} | {r['read_side']} | {r['mIoU']:.2f} | {change} | {r['bytes_per_sentence']:,} "
                     f"| {r['read_ms_median']:.3f} | " + " | ".join(f"{r[f'{k}_GB_x2']}" for k in TRAIN_SENTENCES) + " |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
