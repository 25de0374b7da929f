"""Keep the proposal's edges unless the network points at another object: a post-hoc fusion of a trained network
with the MLLM's proposal, scored per threshold on a split.

Training moves the proposal's precise edges (P@0.9 falls) even where it finds more right objects (P@0.5 rises at
100% labels; docs/results.md). This rule takes the thresholded proposal P where the network's with-priors mask M
agrees with it (IoU(M, P) >= tau), and M where it does not, so the network only decides *which object*, never
where the edges of an agreed object lie. tau is a design choice: pick it on val, then score test once with it.

    python benchmarks/object_gate.py --run benchmarks/results/grid/runs/supervised_full/r1/s0 --pick last \\
        --root data/shaperefs --split val --cache benchmarks/results/grid/cache
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.evaluation.evaluator import masks_at_original_size, predict_logits, proposal_batch
from l2l.evaluation.metric import RESMetric
from l2l.model import RESModel
from l2l.proposals import ProposalBank

TAUS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return float((a & b).sum().item() / union) if union else 1.0


def object_gate(run: Path, pick: str, root: str, split: str, cache: Path, taus: tuple[float, ...] = TAUS,
                batch_size: int = 16) -> dict:
    torch.set_grad_enabled(False)
    model = RESModel.from_pretrained(run / pick).eval()
    processor = model.processor()
    data_id = DataId.parse(f"shaperefs/unc/{split}")
    ds = RESDataset(root, data_id)
    bank = ProposalBank.open(next((cache / f"shaperefs_unc_{split}").glob("grabcut-s*[0-9]")),
                             read_size=processor.image_size)
    metrics = {tau: RESMetric() for tau in taus}
    overridden = {tau: 0 for tau in taus}
    for start in range(0, len(ds), batch_size):
        idx = range(start, min(start + batch_size, len(ds)))
        items = [ds[i] for i in idx]
        ids = [it["sample"].sample_id for it in items]
        proposal, has = proposal_batch(bank, ids, processor)
        sizes = [it["mask"].shape for it in items]
        net = masks_at_original_size(predict_logits(model, processor, [it["image"] for it in items],
                                                    [it["text"] for it in items], proposal, has), sizes, processor)
        prop = masks_at_original_size(torch.logit(proposal.clamp(1e-4, 1 - 1e-4)), sizes, processor)
        for k, it in enumerate(items):
            agree = _iou(net[k], prop[k]) if bool(has[k]) else 0.0  # no proposal: the network answers
            for tau in taus:
                take_net = agree < tau
                overridden[tau] += int(take_net and bool(has[k]))
                metrics[tau].update([net[k] if take_net else prop[k]], [it["mask"]], ids=[ids[k]])
    rows = []
    for tau in taus:
        m = metrics[tau].compute()
        rows.append({"tau": tau, "mIoU": m["mIoU"], "oIoU": m["oIoU"], "P@0.5": m["P@0.5"], "P@0.9": m["P@0.9"],
                     "network_share": overridden[tau] / len(ds)})
    return {"run": str(run), "pick": pick, "split": split, "n": len(ds), "rows": rows,
            "note": "tau 0: the proposal wherever it exists (prior_only); tau 1.01: the network everywhere"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a run directory with best/ and last/")
    ap.add_argument("--pick", default="last", choices=("best", "last"))
    ap.add_argument("--root", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--cache", type=Path, required=True, help="the cache holding the split's proposal bank")
    ap.add_argument("--tau", type=float, nargs="*", help="thresholds (default 0, 0.1, ..., 0.9, 1.01)")
    ap.add_argument("--out", type=Path, help="JSON file for the result")
    args = ap.parse_args()
    torch.set_num_threads(1)
    r = object_gate(args.run, args.pick, args.root, args.split, args.cache, tuple(args.tau) if args.tau else TAUS)
    text = json.dumps(r, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(f"{r['run']} {r['pick']} {r['split']} ({r['n']} sentences)")
    for row in r["rows"]:
        print(f"  tau {row['tau']:.2f}  mIoU {row['mIoU']:.2f}  P@0.5 {row['P@0.5']:.1f}  P@0.9 {row['P@0.9']:.1f}  "
              f"network on {100 * row['network_share']:.1f}%")


if __name__ == "__main__":
    main()
