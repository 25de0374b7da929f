"""How good can a pseudo-label be without any training? Hidden-mask mIoU of label sources built from the MLLM's
proposal and the image's class-agnostic candidate masks (SemiRES's "everything" bank; on ShapeRefs the GrabCut-per-
instance stand-in), on a split's sentences.

Rows: the proposal itself (what every L2L label starts from); the proposal replaced by the candidate it matches
(IOM: best IoU above a threshold, else the proposal kept) and by the CPI union; and the per-sentence oracle that
picks the better of proposal and matched candidate, the ceiling of a learned per-sample choice between them. The
hidden masks are read by evaluation code (`hidden_label_scorer`) only; this script trains nothing.

    python benchmarks/label_sources.py --root data/shaperefs --data shaperefs/unc/train \\
        --out benchmarks/results/label_sources.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.evaluation.pseudo import hidden_label_scorer
from l2l.methods.semires import match_candidates
from l2l.proposals import BankSpec
from l2l.proposals.candidates import prepare_candidates


class _Maps:
    """The `.get(sample_id)` a label scorer reads, over a plain dict of soft maps."""

    def __init__(self, maps: dict[str, np.ndarray]) -> None:
        self.maps = maps

    def get(self, key: str) -> np.ndarray:
        return self.maps[key]


def label_sources(root: str, data: str, size: int, cache: Path, iou_match: float, overlap: float) -> dict:
    data_id = DataId.parse(data)
    ds = RESDataset(root, data_id)
    bank, _ = BankSpec(root=root, method="grabcut", size=size).prepare(data_id, cache)
    cands = prepare_candidates(root, data_id, size, cache)
    ids = [s.sample_id for s in ds.samples]
    prop = {s.sample_id: np.asarray(bank.get(s.sample_id), np.float32) for s in ds.samples}
    rows: dict[str, dict[str, np.ndarray]] = {"proposal": prop, "iom": {}, "cpi": {}}
    matched = {"iom": 0, "cpi": 0}
    for s in ds.samples:
        c = cands.get(s.image_id)
        q = torch.from_numpy(prop[s.sample_id])[None, None]
        if not c:
            rows["iom"][s.sample_id] = rows["cpi"][s.sample_id] = prop[s.sample_id]
            continue
        ct = torch.from_numpy(np.stack(c))[None]
        valid = torch.ones(1, len(c), dtype=torch.bool)
        for rule in ("iom", "cpi"):
            target, hit = match_candidates(q > 0.5, ct, valid, rule, iou_match, overlap)
            matched[rule] += int(hit[0])
            rows[rule][s.sample_id] = target[0, 0].numpy() if hit[0] else prop[s.sample_id]
    score = hidden_label_scorer(root, data_id, ids)
    per = {name: _per_sample(root, data_id, maps) for name, maps in rows.items() if name in ("proposal", "iom")}
    best = {sid: rows["iom"][sid] if per["iom"][sid] > per["proposal"][sid] else prop[sid] for sid in ids}
    out = {name: score(_Maps(maps)) for name, maps in rows.items()}
    out["oracle(proposal, iom)"] = score(_Maps(best))
    return {"data": data, "sentences": len(ids), "size": size, "iou_match": iou_match, "cpi_overlap": overlap,
            "matched_share": {k: v / len(ids) for k, v in matched.items()},
            "iom_better_share": float(np.mean([per["iom"][i] > per["proposal"][i] + 1e-9 for i in ids])),
            "iom_worse_share": float(np.mean([per["iom"][i] < per["proposal"][i] - 1e-9 for i in ids])),
            "mIoU": {k: round(v["mIoU"], 2) for k, v in out.items()}}


def _per_sample(root: str, data_id: DataId, maps: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-sentence IoU (the scorer's resize and threshold), one sentence at a time."""
    full = RESDataset(root, data_id)
    import cv2

    ious = {}
    for i, s in enumerate(full.samples):
        pred = cv2.resize(maps[s.sample_id], (s.width, s.height), interpolation=cv2.INTER_LINEAR) > 0.5
        gt = full.mask(i).astype(bool)
        union = (pred | gt).sum()
        ious[s.sample_id] = float((pred & gt).sum() / union) if union else 1.0
    return ious


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--data", default="shaperefs/unc/train")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cache", type=Path, default=None, help="priors/proposal cache (default ROOT/.l2l_cache)")
    ap.add_argument("--iou-match", type=float, default=0.5)
    ap.add_argument("--cpi-overlap", type=float, default=0.7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/label_sources.json"))
    args = ap.parse_args()
    cache = args.cache or Path(args.root) / ".l2l_cache"
    r = label_sources(args.root, args.data, args.size, cache, args.iou_match, args.cpi_overlap)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
