"""Figures and the demo page: the grid's plots (mIoU against label ratio, labels per self-evolution round), the
demo's prediction overlays and pseudo-label gallery, and its HTML page. Drawing only: nothing here trains.

The gallery's ground-truth column reads the hidden masks of unlabelled training images; only this visualisation
(evaluation code) does so, after training has finished.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from l2l.experiments.grid import FULL, SCORE_KEYS


def _finish_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save_figure(fig: Any, path: Path) -> None:
    """Write the figure and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ratio_curve(rows: list[dict[str, Any]], path: Path, modes: Sequence[str] = ("prior", "prior_free")) -> None:
    """mIoU against label ratio per method, one panel per evaluation mode (test splits pooled), each panel with the
    fully supervised model of the same mode as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = [r for r in rows if r["split"] == "test" and r.get("pick", "best") == "best"]
    modes = [m for m in modes if any(r["mode"] == m for r in test)]
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(5.5 * max(1, len(modes)), 4), squeeze=False)
    methods = sorted({r["method"] for r in test if r["method"] != FULL})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, mode in zip(axes[0], modes):
        for method in methods:
            pts = sorted((r["ratio"], r["mIoU"], r["mIoU_std"]) for r in test
                         if r["method"] == method and r["mode"] == mode)
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar([x * 100 for x in xs], ys, yerr=es, marker="o", capsize=3, color=colours[method],
                            label=method)
        for r in test:
            if r["method"] == FULL and r["mode"] == mode:
                ax.axhline(r["mIoU"], color="k", ls="--", lw=1, label="fully supervised (100%)")
        ax.set_xscale("log")
        _finish_axes(ax, "labelled images (%)", "mIoU (%)", f"ShapeRefs test, {mode.replace('_', '-')}")
    _save_figure(fig, path)


EVOLUTION_KEYS = (("method/evolve/hidden_mIoU", "method/evolve/hidden_before_mIoU", "hidden D_u masks"),
                  ("method/evolve/proxy_q_miou_after", "method/evolve/proxy_q_miou_before", "proxy (labelled)"))


def evolution_series(out: Path) -> dict[tuple[str, str], dict[int, list[float]]]:
    """{(method/ratio, label): {round: [value per seed]}} from the runs' `metrics.jsonl`.

    `method/evolve/hidden_mIoU` is scored by evaluation code against the hidden masks (ShapeRefs only),
    `method/evolve/proxy_q_miou_after` on the labelled proxy set. Round 0 is the bank before the first write: the
    MLLM's proposals."""
    series: dict[tuple[str, str], dict[int, list[float]]] = {}
    for log in sorted(out.glob("runs/*/r*/s*/metrics.jsonl")):
        recs = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
        rounds = [r for r in recs if "method/evolve/round" in r]
        if not rounds:
            continue
        group = log.parent.parent.relative_to(out / "runs").as_posix()
        for after, before, label in EVOLUTION_KEYS:
            points = {int(r["method/evolve/round"]): r.get(after) for r in rounds}
            points[0] = rounds[0].get(before)
            for rnd, value in points.items():
                if value is not None:
                    series.setdefault((group, label), {}).setdefault(rnd, []).append(float(value))
    return series


def plot_evolution(out: Path, path: Path) -> bool:
    """Pseudo-label mIoU per self-evolution round, mean over seeds per (method, ratio): hidden masks solid, proxy
    dashed. False (and no file) when no run evolved its labels."""
    series = evolution_series(out)
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = sorted({g for g, _ in series})
    for i, group in enumerate(groups):
        for (_, _, label), style in zip(EVOLUTION_KEYS, ("-o", "--s")):
            by_round = series.get((group, label))
            if by_round:
                xs = sorted(by_round)
                n = max(len(v) for v in by_round.values())
                ax.plot(xs, [statistics.fmean(by_round[x]) for x in xs], style, color=f"C{i % 10}",
                        label=f"{group} ({n} seed{'s' if n > 1 else ''}): {label}")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish_axes(ax, "self-evolution round (0 = the MLLM's proposals)", "pseudo-label mIoU (%)",
                 "Evolving labels (proposal bank) against ground truth")
    _save_figure(fig, path)
    return True


RPLE_KEYS = (("train/rple/proxy_accept_rate", "accept rate (proxy)"), ("train/rple/proxy_precision", "precision (proxy)"),
             ("train/rple/proxy_recall", "recall (proxy)"), ("train/rple/chose_teacher", "chose teacher"),
             ("train/rple/chose_mixture", "chose mixture"), ("train/rple/chose_reject", "chose reject"),
             ("train/rple/sampled_reward", "sampled reward"), ("train/rple/utility_positive", "utility > 0 share"))


def plot_rple(out: Path, path: Path) -> bool:
    """What the label policy did over training, per run of the l2l family (mean over its seeds): acceptance and
    precision/recall of accepted labels on the proxy episodes, the chosen sources, the reward. False when no run
    logged a policy."""
    curves: dict[tuple[str, str], dict[int, list[float]]] = {}
    for log in sorted(out.glob("runs/*/*/*/metrics.jsonl")):
        group = f"{log.parent.parent.parent.name}/{log.parent.parent.name}"
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            for key, label in RPLE_KEYS:
                if key in rec:
                    curves.setdefault((group, label), {}).setdefault(int(rec["step"]), []).append(float(rec[key]))
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 7), squeeze=False)
    groups = sorted({g for g, _ in curves})
    for ax, (_, label) in zip(axes.flat, RPLE_KEYS):
        for i, group in enumerate(groups):
            by_step = curves.get((group, label))
            if by_step:
                xs = sorted(by_step)
                ax.plot(xs, [statistics.fmean(by_step[x]) for x in xs], color=f"C{i % 10}", label=group)
        _finish_axes(ax, "step", label, label)
    _save_figure(fig, path)
    return True


def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


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
    from l2l.methods.semi import label_proposal
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
        q0 = make_proposal(trainer.dcfg.proposal, img, prior).map
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
        + "".join(f"<td>{v[k]:.2f}</td>" for k in SCORE_KEYS) + "</tr>"
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
<table><tr><th>method</th><th>mode</th>{''.join(f'<th>{k}</th>' for k in SCORE_KEYS)}</tr>{table_rows}</table>
<h2>Predictions (test)</h2>{img(overlay_png)}
<h2>Pseudo-label gallery (unlabelled training images)</h2>
<table><tr><th>sample</th><th>expression</th><th>prior confidence</th><th>label source</th><th>pixels taught</th></tr>{gallery_rows}</table>
{img(gallery_png)}
</body></html>"""
    path.write_text(page, encoding="utf-8")
