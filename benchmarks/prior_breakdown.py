"""Where a checkpoint's with-priors mIoU goes: per-sentence IoU by what the (simulated) MLLM said.

Reads the per-sample JSONL that `l2l eval --modes prior` writes and the priors and proposal bank that training
cached, and splits the sentences two ways: by the IoU of their own proposal (does the network repair bad
proposals, keep good ones?) and by the prior's box against the true box (right object, wrong object, failed).
It also gives the ceiling of a network that segments perfectly whatever object the prior's box points at.
Nothing is trained or re-evaluated; ShapeRefs only (the true boxes and masks come from the dataset).

    l2l eval --checkpoint runs/i3/best --root data/shaperefs3k --data shaperefs/unc/val --simulated-priors \\
        --proposal-cache data/shaperefs3k/.l2l_cache --modes prior --out runs/i3/eval_val
    python benchmarks/prior_breakdown.py --root data/shaperefs3k --eval runs/i3/eval_val/shaperefs_unc_val.prior.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.data.processor import Processor
from l2l.data.refer import ReferData
from l2l.priors.prior import box_iou
from l2l.proposals import ProposalBank

BINS = ((0.0, 0.1), (0.1, 0.5), (0.5, 0.8), (0.8, 0.9), (0.9, 1.0))


def _read_jsonl(path: Path) -> dict[str, dict]:
    with path.open() as fh:
        return {row["sample_id"]: row for row in map(json.loads, fh)}


def _xyxy(b: list[float]) -> list[float]:
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def breakdown(root: str, data: str, eval_jsonl: Path, cache: Path, proposal: str, priors_seed: int) -> dict:
    data_id = DataId.parse(data)
    ds = RESDataset(root, data_id)
    refer = ReferData(root, data_id.dataset, data_id.split_by)
    where = cache / f"{data_id.dataset}_{data_id.split_by}_{data_id.split}"
    bank = ProposalBank.open(next(where.glob(f"{proposal}-s*")))
    priors = _read_jsonl(where / f"priors-simulated-seed{priors_seed}.jsonl")
    net = {sid: float(r["IoU"]) for sid, r in _read_jsonl(eval_jsonl).items()}
    anns: dict[int, list[dict]] = {}
    for ann in refer.anns.values():
        anns.setdefault(int(ann["image_id"]), []).append(ann)
    by_bin: list[list[tuple[float, float]]] = [[] for _ in BINS]
    by_prior: dict[str, list[float]] = {}
    follower: list[float] = []
    for i, s in enumerate(ds.samples):
        gt = ds.mask(i).astype(bool)
        prior = priors[s.sample_id]
        q = np.asarray(bank.get(s.sample_id), np.float32)
        up = (Processor.upsample_logits(torch.from_numpy(q - 0.5)[None, None], gt.shape)[0, 0] > 0).numpy()
        p_iou = float((up & gt).sum() / max(1, (up | gt).sum()))
        by_bin[next(k for k, (_, hi) in enumerate(BINS) if p_iou < hi or k == len(BINS) - 1)].append(
            (p_iou, net[s.sample_id]))
        if prior["status"] != "ok" or prior["box"] is None:
            kind = "failed prior"
            follower.append(float("nan"))
        else:
            biou = box_iou(prior["box"], list(s.box))
            kind = "box IoU >= 0.7" if biou >= 0.7 else "box IoU 0.3-0.7" if biou >= 0.3 else "box IoU < 0.3"
            pointed = max(anns[s.image_id], key=lambda a: box_iou(_xyxy(a["bbox"]), prior["box"]))
            other = refer.ann_mask(int(pointed["id"])).astype(bool)
            follower.append(1.0 if int(pointed["id"]) == s.ann_id else float((other & gt).sum() / (other | gt).sum()))
        by_prior.setdefault(kind, []).append(net[s.sample_id])
    right = np.array(by_prior.get("box IoU >= 0.7", []))
    f = np.array(follower)
    return {
        "data": data, "eval": str(eval_jsonl), "n": len(ds.samples),
        "network_mIoU": 100 * float(np.mean(list(net.values()))),
        "by_proposal_iou": [{"bin": f"[{lo}, {hi})", "n": len(r), "proposal": 100 * float(np.mean([a for a, _ in r])),
                             "network": 100 * float(np.mean([b for _, b in r]))} for (lo, hi), r in zip(BINS, by_bin) if r],
        "by_prior": [{"prior": k, "n": len(v), "share": 100 * len(v) / len(ds.samples), "network": 100 * float(np.mean(v))}
                     for k, v in sorted(by_prior.items())],
        "right_box_iou_below": {str(t): 100 * float((right < t).mean()) for t in (0.5, 0.7, 0.8, 0.9, 0.95)},
        # a perfect segmenter of the object the box points at; failed priors scored 0 / at the network's own IoU
        "box_follower_ceiling": 100 * float(np.nan_to_num(f, nan=0.0).mean()),
        "box_follower_ceiling_with_network_on_failed": 100 * float(np.where(
            np.isnan(f), [net[s.sample_id] for s in ds.samples], f).mean()),
    }


def to_markdown(r: dict) -> str:
    lines = [f"# With-priors IoU by what the prior said ({r['data']}, {r['n']} sentences)", "",
             f"Network mIoU {r['network_mIoU']:.1f}; `{r['eval']}`.", "",
             "| proposal IoU | sentences | proposal | network |", "|---|---|---|---|"]
    lines += [f"| {b['bin']} | {b['n']} | {b['proposal']:.1f} | {b['network']:.1f} |" for b in r["by_proposal_iou"]]
    lines += ["", "| prior | sentences | share % | network |", "|---|---|---|---|"]
    lines += [f"| {b['prior']} | {b['n']} | {b['share']:.1f} | {b['network']:.1f} |" for b in r["by_prior"]]
    below = ", ".join(f"< {t}: {v:.1f}%" for t, v in r["right_box_iou_below"].items())
    lines += ["", f"Right-box sentences (box IoU >= 0.7) with network IoU {below}.",
              f"A perfect segmenter of the object the prior's box points at: {r['box_follower_ceiling']:.1f} mIoU "
              f"({r['box_follower_ceiling_with_network_on_failed']:.1f} with this network's IoU on failed priors).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--data", default="shaperefs/unc/val")
    ap.add_argument("--eval", required=True, type=Path, help="per-sample JSONL of `l2l eval --modes prior`")
    ap.add_argument("--cache", type=Path, default=None, help="priors/proposal cache (default ROOT/.l2l_cache)")
    ap.add_argument("--proposal", default="grabcut")
    ap.add_argument("--priors-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/prior_breakdown.json"))
    args = ap.parse_args()
    result = breakdown(args.root, args.data, args.eval, args.cache or Path(args.root) / ".l2l_cache",
                       args.proposal, args.priors_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
