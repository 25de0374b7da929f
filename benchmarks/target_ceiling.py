"""What a perfect network could score when it predicts at side S and is scored at the original image size.

The network never sees a full-resolution mask: it is trained on each mask resized to S x S and its logits are
upsampled back for scoring. This script takes every referred object of a split and asks: if the network
reproduced its training target exactly, what IoU would that target reach once upsampled (bilinear, threshold
at 0.5, as `l2l eval` does)? It compares the target `Processor.masks` builds (soft area fractions) with the
binary nearest-neighbour target the trainer used before (OpenCV's nearest, which also shifts the mask by up to
half a source pixel), a pixel-centred nearest one and a binarised area one. Nothing is trained.

    python benchmarks/target_ceiling.py --root data/shaperefs3k --split val --sizes 128 192
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.data.processor import Processor
from l2l.data.refer import ReferData


def targets(mask: np.ndarray, proc: Processor) -> dict[str, np.ndarray]:
    """The S x S targets to compare, each as a float map in [0, 1]."""
    s = proc.image_size
    h, w = mask.shape
    ys = np.minimum(((np.arange(s) + 0.5) * h / s).astype(int), h - 1)
    xs = np.minimum(((np.arange(s) + 0.5) * w / s).astype(int), w - 1)
    area = cv2.resize(mask.astype(np.float32), (s, s), interpolation=cv2.INTER_AREA)
    return {
        "soft (Processor.masks)": proc.masks([mask])[0, 0].numpy(),
        "nearest, OpenCV (before)": cv2.resize(mask.astype(np.uint8), (s, s), interpolation=cv2.INTER_NEAREST),
        "nearest, pixel-centred": mask[ys][:, xs],
        "area, binarised": (area > 0.5).astype(np.float32),
    }


def ceiling(root: str, split: str, size: int) -> dict[str, float]:
    """Mean IoU over the split's referred objects of each target upsampled back to the image size."""
    refer = ReferData(root, DataId.parse(f"shaperefs/unc/{split}").dataset, "unc")
    data = RESDataset(root, DataId.parse(f"shaperefs/unc/{split}"))
    proc = Processor(size, tokenizer=None)
    ann_ids = sorted({s.ann_id for s in data.samples})
    scores: dict[str, list[float]] = {}
    for ann in ann_ids:
        mask = refer.ann_mask(ann).astype(bool)
        for name, target in targets(mask, proc).items():
            logits = torch.from_numpy(np.asarray(target, np.float32) - 0.5)[None, None]
            pred = (Processor.upsample_logits(logits, mask.shape)[0, 0] > 0).numpy()
            scores.setdefault(name, []).append(float((pred & mask).sum() / max(1, (pred | mask).sum())))
    return {name: 100.0 * float(np.mean(v)) for name, v in scores.items()} | {"objects": len(ann_ids)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="a ShapeRefs data root (l2l data synth)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192])
    ap.add_argument("--out", default="benchmarks/results/target_ceiling.json")
    args = ap.parse_args()
    rows = {str(s): ceiling(args.root, args.split, s) for s in args.sizes}
    lines = [f"# Target ceiling: mIoU (%) of a network reproducing its S x S training target ({args.split})", "",
             "| S | " + " | ".join(k for k in rows[str(args.sizes[0])] if k != "objects") + " | objects |",
             "|---" * (len(rows[str(args.sizes[0])]) + 1) + "|"]
    for s, row in rows.items():
        lines.append(f"| {s} | " + " | ".join(f"{v:.1f}" for k, v in row.items() if k != "objects")
                     + f" | {row['objects']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"root": args.root, "split": args.split, "sizes": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
