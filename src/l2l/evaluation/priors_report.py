"""How good are the priors? Box accuracy, proposal quality and confidence calibration against masks.

Run on data with ground truth (a labelled split, ShapeRefs, RefCOCO val). Every sample of the dataset that
has a prior is scored; a failed prior scores IoU 0 everywhere, as it would give the pipeline nothing.
It lives in evaluation (it scores priors and proposals against masks), so its imports run downward.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from l2l.data.dataset import RESDataset
from l2l.errors import ConfigError
from l2l.priors.prior import Prior, box_iou
from l2l.proposals import make_proposal
from l2l.utils.io import atomic_write

DEFAULT_METHODS = ("box", "gaussian", "grabcut")


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.logical_or(pred, gt).sum()
    return float(np.logical_and(pred, gt).sum() / union) if union else 1.0


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Accuracy per equal-width confidence bin, the expected calibration error (ECE), and the AUROC of the
    confidence for box correctness: what a learned label policy can get from it, whatever its calibration
    (0.5 = no information; None when every box is right or every box wrong)."""
    from sklearn.metrics import roc_auc_score

    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        acc = float(correct[sel].mean()) if n else None
        conf = float(confidence[sel].mean()) if n else None
        if n:
            ece += n / len(confidence) * abs(acc - conf)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n, "accuracy": acc,
                     "mean_confidence": conf})
    both = 0 < int(np.sum(correct)) < len(correct)
    return {"bins": rows, "ece": float(ece) if len(confidence) else None,
            "auroc": float(roc_auc_score(correct, confidence)) if both else None}


def priors_report(priors: dict[str, Prior], dataset: RESDataset, methods: Sequence[str] = DEFAULT_METHODS,
                  sam: Any = None, bins: int = 10, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Score `priors` against `dataset`'s masks; `sam` is a `SamProposer` if "sam" is among `methods`."""
    if not dataset.has_masks:
        raise ConfigError(f"{dataset.data_id}: the report needs masks; use a split with ground truth")

    indices = [i for i, s in enumerate(dataset.samples) if s.sample_id in priors]
    if limit is not None:
        indices = indices[:limit]
    box_ious, confs, reasons, providers = [], [], Counter(), Counter()
    prop_ious: dict[str, list[float]] = {m: [] for m in methods}
    prop_time: dict[str, float] = {m: 0.0 for m in methods}
    for i in tqdm(indices, desc="report", unit="sample", disable=not progress, dynamic_ncols=True):
        s = dataset.samples[i]
        p = priors[s.sample_id]
        providers[p.provider] += 1
        if not p.ok:
            reasons[p.reason] += 1
        box_ious.append(box_iou(p.box if p.ok else None, list(s.box)))
        confs.append(p.confidence)
        if methods:
            image, gt = dataset.image(i), dataset.mask(i)
            for m in methods:
                t0 = time.perf_counter()
                prop = make_proposal(m, image, p, sam=sam, image_key=s.image_id)
                prop_time[m] += time.perf_counter() - t0
                prop_ious[m].append(mask_iou(prop.map > 0.5, gt))
    n = len(indices)
    ious = np.asarray(box_ious, dtype=np.float64)
    correct = ious >= 0.5
    return {
        "data": str(dataset.data_id),
        "samples": len(dataset.samples),
        "scored": n,
        "missing": len(dataset.samples) - len([s for s in dataset.samples if s.sample_id in priors]),
        "providers": dict(providers),
        "failed": dict(reasons.most_common()),
        "box_acc@0.5": float(correct.mean()) if n else None,
        "box_mean_iou": float(ious.mean()) if n else None,
        "proposals": {m: {"mIoU": float(np.mean(prop_ious[m])) if n else None,
                          "ms_per_sample": 1000.0 * prop_time[m] / n if n else None} for m in methods},
        "calibration": calibration(np.asarray(confs, dtype=np.float64), correct, bins),
    }


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def format_report(r: dict[str, Any]) -> str:
    """Plain-text tables for the terminal (and the README)."""
    simulated = any("simulated" in p for p in r["providers"])
    lines = [f"priors report on {r['data']}: {r['scored']} of {r['samples']} samples scored"
             f" ({r['missing']} without a prior); provider: {', '.join(r['providers']) or '-'}"
             + ("  [SIMULATED MLLM, not a model]" if simulated else "")]
    n_failed = sum(r["failed"].values())
    lines.append(f"box acc@0.5: {_fmt(r['box_acc@0.5'])}%   box mean IoU: {_fmt(r['box_mean_iou'])}%   "
                 f"failed priors: {n_failed}")
    for reason, k in r["failed"].items():
        lines.append(f"  failed {k:6d}  {reason}")
    if r["proposals"]:
        lines += ["", f"{'proposal':<10} {'mIoU %':>8} {'ms/sample':>10}"]
        for m, v in r["proposals"].items():
            ms = "-" if v["ms_per_sample"] is None else f"{v['ms_per_sample']:.1f}"
            lines.append(f"{m:<10} {_fmt(v['mIoU']):>8} {ms:>10}")
    cal = r["calibration"]
    lines += ["", f"confidence calibration (ECE {_fmt(cal['ece'], pct=False)}; AUROC for a right box "
                  f"{_fmt(cal.get('auroc'), pct=False)})",
              f"{'confidence':<12} {'count':>6} {'acc@0.5 %':>10} {'mean conf':>10}"]
    for b in cal["bins"]:
        if b["count"]:
            lines.append(f"{b['lo']:.1f}-{b['hi']:.1f}{'':<5} {b['count']:>6} {_fmt(b['accuracy']):>10} "
                         f"{_fmt(b['mean_confidence'], pct=False):>10}")
    return "\n".join(lines)


def reliability_plot(r: dict[str, Any], path: str | Path) -> None:
    """Reliability diagram: box accuracy per confidence bin against the diagonal, counts underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = r["calibration"]["bins"]
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    acc = [b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.5, 5.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(centers, acc, width=width * 0.9, color="tab:blue", alpha=0.8, label="box acc@0.5")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    title = f"{r['data']}, {', '.join(r['providers'])}"
    ece = r["calibration"]["ece"]
    ax.set_title(f"{title}\nECE {ece:.3f}" if ece is not None else title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax2.bar(centers, [b["count"] for b in bins], width=width * 0.9, color="gray")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("count")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
