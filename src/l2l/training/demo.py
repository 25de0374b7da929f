"""`l2l demo`: the whole L2L loop on the embedded ShapeRefs benchmark, on a laptop CPU in minutes.

Steps: generate ShapeRefs (cached), simulated-MLLM priors and soft proposals (cached), score `prior_only` (the
thresholded proposal) and train `supervised` and `l2l` at 1% labels with one schedule, score them on the test
splits with priors and prior-free, then write
`results.json`, prediction overlays and a pseudo-label gallery (PNG + one HTML page).

The priors come from a *simulated* MLLM (ground-truth boxes with calibrated errors), never a real model.
The gallery's ground-truth column reads the hidden masks of unlabelled training images; only this
visualisation (evaluation code) does so, after training has finished.
"""

from __future__ import annotations

import base64
import html
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from l2l.proposals.bank import bank_has_prior
from l2l.training.bench import METRIC_KEYS

DEMO_OVERRIDES = ("train.max_steps=160", "data.max_val_samples=200")


def default_cache() -> Path:
    base = os.environ.get("L2L_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "l2l")
    return Path(base)


def ensure_shaperefs(root: Path, images: int, seed: int = 0, log: Callable[[str], None] = print) -> None:
    """Generate ShapeRefs into `root` unless it is already there (the embedded default dataset)."""
    if (root / "shaperefs" / "refs(unc).p").is_file() and (root / "shaperefs" / "instances.json").is_file():
        return
    from l2l.data.shaperefs import generate

    log(f"generating ShapeRefs ({images} images, seed {seed}) into {root}")
    generate(root, images, seed, progress=sys.stderr.isatty())


def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _test_set(root: Path, splits: tuple[str, ...]) -> Any:
    from torch.utils.data import ConcatDataset

    from l2l.data.dataset import DataId, RESDataset

    return ConcatDataset([RESDataset(root, DataId("shaperefs", "unc", s)) for s in splits])


class _PooledBank:
    """Looks a sample up in several banks (one per test split)."""

    def __init__(self, banks: list[Any]) -> None:
        self.banks = banks

    def get(self, sample_id: str) -> np.ndarray:
        for b in self.banks:
            if sample_id in b:
                return b.get(sample_id)
        raise KeyError(sample_id)

    def __contains__(self, sample_id: object) -> bool:
        return any(sample_id in b for b in self.banks)

    def has_prior(self, sample_id: str) -> bool:
        return any(sample_id in b and bank_has_prior(b, sample_id) for b in self.banks)


def run_demo(
    out: Path,
    data_root: Path,
    images: int = 1500,
    seed: int = 0,
    config: Path | None = None,
    overrides: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from l2l.data.dataset import DataId
    from l2l.evaluation.evaluator import evaluate
    from l2l.proposals import prepare_bank
    from l2l.training.config import load_config
    from l2l.training.trainer import Trainer
    from l2l.utils.io import atomic_write_json

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ensure_shaperefs(data_root, images, seed, log)
    test_splits = ("testA", "testB")
    results: dict[str, Any] = {"label_ratio": 0.01, "dataset": "shaperefs", "test_splits": list(test_splits),
                               "priors": "simulated-mllm (a simulation of an MLLM, not a real model)",
                               "methods": {}}
    trainers: dict[str, Any] = {}
    test = _test_set(data_root, test_splits)
    bank = None
    for method in ("prior_only", "supervised", "l2l"):
        t0 = time.perf_counter()
        cfg = load_config(config, [*DEMO_OVERRIDES, f"method.name={method}", *overrides,
                                   f"data.root={data_root}", "data.ratio=0.01", f"data.split_seed={seed}",
                                   f"seed={seed}"])
        log(f"[{method}] training at 1% labels ({cfg['train']['max_steps']} steps; run dir {out / 'runs' / method})")
        trainer = Trainer(cfg, out / "runs" / method)
        trainer.fit()
        trainers[method] = trainer
        train_s = time.perf_counter() - t0
        if bank is None:
            d = cfg["data"]
            bank = _PooledBank([
                prepare_bank(data_root, DataId("shaperefs", "unc", s), method=d["proposal"],
                             size=trainer.model_config.image_size, cache_dir=out / "cache", provider="simulated",
                             seed=d["priors_seed"], progress=False)[0]
                for s in test_splits
            ])
        by_mode = {}
        for mode in ("prior",) if method == "prior_only" else ("prior", "prior_free"):
            log(f"[{method}] evaluating on {'+'.join(test_splits)} ({len(test)} sentences, {mode.replace('_', '-')})")
            m = evaluate(trainer.eval_network(), test, trainer.processor, bank=bank, use_priors=mode == "prior",
                         batch_size=cfg["train"]["eval_batch_size"], progress=sys.stderr.isatty(),
                         out_jsonl=out / f"samples_{method}_{mode}.jsonl")
            by_mode[mode] = {k: round(float(m[k]), 2) for k in METRIC_KEYS} | {"n": int(m["n"])}
        results["methods"][method] = {**by_mode["prior"], "mode": "prior", "by_mode": by_mode,
                                      "train_seconds": round(train_s, 1)}
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "results.json", results)
    table = format_table(results)
    (out / "table.md").write_text(table, encoding="utf-8")
    log("\n" + table)
    log("rendering prediction overlays and the pseudo-label gallery")
    overlay_png = render_overlays(trainers, test, bank, out / "overlays.png")
    gallery_png, rows = render_gallery(trainers["l2l"], data_root, out / "gallery.png")
    write_html(out / "index.html", results, table, overlay_png, gallery_png, rows)
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "results.json", results)
    log(f"done in {results['wall_seconds']:.0f}s: {out / 'results.json'}, {out / 'index.html'}")
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = ["| method | mode | mIoU | oIoU | P@0.5 | P@0.7 | P@0.9 |", "|---|---|---|---|---|---|---|"]
    for method, res in results["methods"].items():
        for mode, m in res["by_mode"].items():
            lines.append(f"| {method} | {mode} | " + " | ".join(f"{m[k]:.2f}" for k in ("mIoU", "oIoU", "P@0.5", "P@0.7", "P@0.9")) + " |")
    return (f"ShapeRefs {' + '.join(results['test_splits'])}, {results['label_ratio']:.0%} labels, "
            f"priors from a simulated MLLM\n\n" + "\n".join(lines) + "\n")


@torch.no_grad()
def render_overlays(trainers: dict[str, Any], test: Any, bank: Any, path: Path, n: int = 6) -> bytes:
    """Test images with each method's prediction (with priors) next to the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2l.evaluation.evaluator import masks_at_original_size, predict_logits, proposal_batch
    from l2l.evaluation.predictor import overlay

    idx = np.linspace(0, len(test) - 1, n).astype(int)
    items = [test[int(i)] for i in idx]
    cols = ["ground truth", *trainers]
    fig, axes = plt.subplots(n, len(cols), figsize=(3.2 * len(cols), 3.0 * n))
    for c, name in enumerate(cols):
        if name == "ground truth":
            masks = [it["mask"] for it in items]
        else:
            tr = trainers[name]
            ids = [it["sample"].sample_id for it in items]
            prop, has = proposal_batch(bank, ids, tr.processor)
            logits = predict_logits(tr.eval_network(), tr.processor, [it["image"] for it in items],
                                    [it["text"] for it in items], prop, has, None)
            masks = [m.numpy() for m in masks_at_original_size(logits, [it["mask"].shape for it in items], tr.processor)]
        for r, (it, mk) in enumerate(zip(items, masks)):
            ax = axes[r, c]
            ax.imshow(overlay(it["image"], np.asarray(mk, bool), it["text"] if c == 0 else ""))
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name if name == "ground truth" else f"{name} (with priors)", fontsize=9)
    fig.tight_layout()
    data = _png_bytes(fig)
    plt.close(fig)
    path.write_bytes(data)
    return data


@torch.no_grad()
def render_gallery(trainer: Any, data_root: Path, path: Path, n: int = 6) -> tuple[bytes, list[dict[str, Any]]]:
    """Unlabelled training samples: prior, initial proposal, accepted pixels, evolved label, hidden ground truth.

    Batches come from the unlabelled (mask-free) dataset the trainer used; the ground truth column is read
    here, by visualisation code, from a separate full view of the training split.
    """
    import matplotlib

    matplotlib.use("Agg")
    import cv2
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    from l2l.data.dataset import RESDataset
    from l2l.methods.l2l import label_proposal
    from l2l.methods.rple import ACTIONS
    from l2l.proposals.methods import make_proposal
    from l2l.training.batching import Collator, SeededItems, move_batch

    method, proc, unl = trainer.method, trainer.processor, trainer.unlabelled
    ids = np.linspace(0, len(unl) - 1, n).astype(int)
    # as in training: the network sees the MLLM's proposal, the candidate label reads the run's evolved bank
    evolving = trainer.train_bank if trainer.train_bank is not trainer.input_bank else None
    collate = Collator(proc, bank=trainer.input_bank, priors=trainer.priors, label_bank=evolving)
    batch = collate([SeededItems(unl)[(int(i), 0)] for i in ids])
    batch = move_batch(batch, trainer.env.device)
    p = method.teacher_probs(batch)
    q = label_proposal(batch)
    decisions = method.decide(batch, p, method.total_steps)
    target, weight = method.pseudo_labels(batch, p, decisions, method.total_steps)
    label = target * weight  # what the student would be taught (nothing where the policy rejects)
    full = RESDataset(data_root, trainer.train_id)  # evaluation-only view with masks
    by_id = {s.sample_id: k for k, s in enumerate(full.samples)}
    size = proc.image_size
    cols = ["image + prior", "initial proposal q0", "evolved label q", "label taught (source)", "ground truth (hidden)"]
    fig, axes = plt.subplots(n, len(cols), figsize=(2.8 * len(cols), 2.9 * n))
    rows = []
    for r, i in enumerate(ids):
        item = unl[int(i)]
        sid = item["sample"].sample_id
        img = item["image"]
        h, w = img.shape[:2]
        prior = trainer.priors.get(sid)
        q0 = make_proposal(trainer.cfg["data"]["proposal"], img, prior).map
        gt = full.mask(by_id[sid])
        def at_image_size(square: torch.Tensor, w: int = w, h: int = h) -> np.ndarray:  # model side -> image side
            return cv2.resize(square.float().cpu().numpy(), (w, h), interpolation=cv2.INTER_NEAREST)

        panels = [img, q0, at_image_size(q[r, 0]), at_image_size(label[r, 0]), gt]
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(panel)
            else:
                ax.imshow(panel, cmap="magma", vmin=0, vmax=1)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r, 3].text(0, -4, ACTIONS[int(decisions[r])], fontsize=7)
        if prior is not None and prior.box is not None:
            x1, y1, x2, y2 = prior.box
            axes[r, 0].add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", lw=1.5))
            for x, y, lab in prior.points:
                axes[r, 0].plot([x], [y], "o", ms=4, color="lime" if lab == 1 else "red")
        axes[r, 0].text(0, -4, item["text"][:48], fontsize=7)
        rows.append({"sample_id": sid, "text": item["text"], "prior_confidence": getattr(prior, "confidence", None),
                     "source": ACTIONS[int(decisions[r])],
                     "accepted_share": float((weight[r] > 0).float().mean()), "image_size": [h, w], "model_size": size})
    fig.tight_layout()
    data = _png_bytes(fig)
    plt.close(fig)
    path.write_bytes(data)
    return data, rows


def write_html(path: Path, results: dict[str, Any], table: str, overlay_png: bytes, gallery_png: bytes,
               rows: list[dict[str, Any]]) -> None:
    def img(data: bytes) -> str:
        return f'<img style="max-width:100%" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    table_rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{mode}</td>"
        + "".join(f"<td>{v[k]:.2f}</td>" for k in METRIC_KEYS) + "</tr>"
        for m, res in results["methods"].items() for mode, v in res["by_mode"].items()
    )
    def conf(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    gallery_rows = "".join(
        f"<tr><td>{html.escape(r['sample_id'])}</td><td>{html.escape(r['text'])}</td>"
        f"<td>{conf(r['prior_confidence'])}</td><td>{r['source']}</td><td>{r['accepted_share']:.1%}</td></tr>"
        for r in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>l2l demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:2px 8px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>l2l demo: supervised vs L2L at {results['label_ratio']:.0%} labels</h1>
<p>ShapeRefs {' + '.join(results['test_splits'])}; priors from a <b>simulated</b> MLLM. Metrics in percent at the original
image resolution. Wall time {results.get('wall_seconds', 0):.0f}s.</p>
<table><tr><th>method</th><th>mode</th>{''.join(f'<th>{k}</th>' for k in METRIC_KEYS)}</tr>{table_rows}</table>
<h2>Predictions (test)</h2>{img(overlay_png)}
<h2>Pseudo-label gallery (unlabelled training images)</h2>
<table><tr><th>sample</th><th>expression</th><th>prior confidence</th><th>label source</th><th>pixels taught</th></tr>{gallery_rows}</table>
{img(gallery_png)}
</body></html>"""
    path.write_text(page, encoding="utf-8")
