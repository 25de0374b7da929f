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

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from l2l.data.shaperefs import ensure_shaperefs
from l2l.experiments.grid import SCORE_KEYS
from l2l.proposals.bank import bank_has_prior
from l2l.utils.io import make_dir

# The demo shows what training does (the last step's network), so it validates once, at the end; the grid also
# reports the network val picks among steps 0, 100, 200, ...
DEMO_OVERRIDES = ("train.max_steps=120", "data.max_val_samples=200", "train.validate_at_start=false",
                  "train.val_every_steps=0")


def default_cache() -> Path:
    base = os.environ.get("L2L_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "l2l")
    return Path(base)


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
    from l2l.proposals import BankSpec
    from l2l.training.config import load_config
    from l2l.training.trainer import Trainer
    from l2l.utils.io import atomic_write_json

    t_start = time.perf_counter()
    make_dir(out)
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
            spec = BankSpec.from_data(trainer.dcfg, trainer.model_config.image_size)
            bank = _PooledBank([spec.prepare(DataId("shaperefs", "unc", s), out / "cache")[0] for s in test_splits])
        by_mode = {}
        for mode in ("prior",) if method == "prior_only" else ("prior", "prior_free"):
            log(f"[{method}] evaluating on {'+'.join(test_splits)} ({len(test)} sentences, {mode.replace('_', '-')})")
            m = evaluate(trainer.eval_network(), test, trainer.processor, bank=bank, use_priors=mode == "prior",
                         batch_size=trainer.tcfg.eval_batch_size, progress=sys.stderr.isatty(),
                         out_jsonl=out / f"samples_{method}_{mode}.jsonl")
            by_mode[mode] = {k: round(float(m[k]), 2) for k in SCORE_KEYS} | {"n": int(m["n"])}
        results["methods"][method] = {**by_mode["prior"], "mode": "prior", "by_mode": by_mode,
                                      "train_seconds": round(train_s, 1)}
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "results.json", results)
    table = format_table(results)
    (out / "table.md").write_text(table, encoding="utf-8")
    log("\n" + table)
    log("rendering prediction overlays and the pseudo-label gallery")
    from l2l.experiments.figures import render_gallery, render_overlays, write_html

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

