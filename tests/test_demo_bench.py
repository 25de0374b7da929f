"""The demo and the bench grid end to end on a tiny ShapeRefs, and the guarantee that training never reads the
hidden masks of unlabelled images (only evaluation code may)."""

from __future__ import annotations

import inspect
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from l2l.cli.main import main
from l2l.data.refer import ReferData
from l2l.data.splits import load_split
from l2l.experiments.figures import evolution_series, plot_evolution, plot_ratio_curve
from l2l.experiments.grid import _worker_overrides, aggregate, table_markdown
from l2l.training.config import load_config
from l2l.training.trainer import Trainer
from l2l.utils.provenance import code_version

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
# Tiny encoders with SESM and Gaussian proposals: the L2L path at a few seconds per run.
FAST = ("model.image_size=32", "model.dim=16", "model.decoder_dim=16", "model.use_sesm=true",
        "data.proposal=gaussian", "train.batch_size=4", "train.unlabelled_batch_size=4", "train.eval_batch_size=16",
        "data.max_val_samples=8", "train.log_every=1")


pytestmark = pytest.mark.usefixtures("one_thread")


def _from_evaluation_code() -> bool:
    """True when the current mask read comes from evaluation code (the hidden-mask scorer, metrics)."""
    for frame in inspect.stack()[2:]:
        module = frame.frame.f_globals.get("__name__", "")
        if module.startswith("l2l.evaluation") or frame.function == "score":  # Trainer._pseudo_scorer's scorer
            return True
    return False


def test_training_never_reads_hidden_masks(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(TINY, [f"data.root={root}", *FAST, "data.ratio=0.25", "method.name=l2l", "train.max_steps=4",
                             "train.epochs=4", "method.evolve_rounds=2", "method.evolve_start=0.0"])
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    labelled_images = set(load_split(run / "split.json")["labelled_image_ids"])
    refer = ReferData(root, "shaperefs", "unc")
    hidden_anns = {r["ann_id"] for r in refer.refs if r["split"] == "train" and r["image_id"] not in labelled_images}
    assert hidden_anns, "the split must leave unlabelled training images"
    reads = {"training": [], "evaluation": []}
    original = ReferData.ann_mask

    def spy(self: ReferData, ann_id: int):  # noqa: ANN202
        if ann_id in hidden_anns:
            reads["evaluation" if _from_evaluation_code() else "training"].append(ann_id)
        return original(self, ann_id)

    monkeypatch.setattr(ReferData, "ann_mask", spy)
    # the network's input proposals (shared cache) stay the MLLM's; evolution writes the run's own copy
    assert trainer.input_bank is not trainer.train_bank
    ids = trainer.input_bank.ids()
    before = {sid: trainer.input_bank.get(sid).copy() for sid in ids}
    summary = trainer.fit()
    assert summary["steps"] == 4
    assert all(np.array_equal(trainer.input_bank.get(sid), before[sid]) for sid in ids)
    assert reads["training"] == []
    # the evaluation-side scorer did read them (so the spy sees the reads it should)
    assert reads["evaluation"], "expected the hidden-mask scorer to read unlabelled masks"
    logs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("method/evolve/hidden_mIoU" in rec for rec in logs)


def test_demo_end_to_end(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--data-root", str(root), "--config", str(TINY), *FAST,
                 "train.max_steps=2"])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    # the runs really trained on the 1% split the page claims (read from the run, not from the results file)
    for method in ("supervised", "l2l"):
        split = json.loads((out / "runs" / method / "split.json").read_text())
        assert split["ratio"] == res["label_ratio"] == 0.01 and len(split["labelled_image_ids"]) >= 1
    assert set(res["methods"]) == {"prior_only", "supervised", "l2l"}
    assert set(res["methods"]["prior_only"]["by_mode"]) == {"prior"}
    for name in ("supervised", "l2l"):
        m = res["methods"][name]
        assert set(m["by_mode"]) == {"prior", "prior_free"}
        assert 0.0 <= m["mIoU"] <= 100.0 and m["by_mode"]["prior"]["n"] > 0
    for name in ("overlays.png", "gallery.png", "index.html", "table.md"):
        assert (out / name).stat().st_size > 0
    assert "data:image/png;base64," in (out / "index.html").read_text()


def test_bench_grid_resumes_and_writes_table(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["bench", *FAST, "train.max_steps=2", "--root", str(root), "--config", str(TINY), "--out", str(out),
            "--ratios", "0.25", "--seeds", "0", "1", "--methods", "supervised", "prior_only", "--no-full",
            "--eval-splits", "testA", "testB"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    cells = {(r["method"], r["seed"], r["split"], r["mode"]) for r in results}
    assert ("supervised", 1, "testB", "prior_free") in cells and ("prior_only", 0, "testA", "prior") in cells
    assert not any(r["method"] == "prior_only" and r["mode"] == "prior_free" for r in results)
    table = (out / "table.md").read_text()
    assert "| 25% | supervised | prior_free | 2 |" in table
    # each cell records the code it ran on, and the table counts cells per commit
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert {r["code"]["commit"] for r in results} == {head or None}
    assert f"Code: 4 cells: 4 from commit {head[:10]}" in table or not head
    # a second call finds every cell finished and trains nothing
    final = out / "runs" / "supervised" / "r0.25" / "s0" / "final.json"
    stamp = final.stat().st_mtime_ns
    assert main(args) == 0
    assert final.stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text()) == results
    # --report-only over a larger grid reports the finished cells and trains none of the missing ones
    (out / "results.json").unlink()
    assert main([*args, "--seeds", "0", "1", "2", "--report-only"]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    assert not (out / "runs" / "supervised" / "r0.25" / "s2").exists()
    assert "--report-only" not in (out / "table.md").read_text()
    # a finished cell is reused only with the config it was trained with (where and how fast it ran may differ)
    assert main(["bench", "train.threads=1", *args[1:]]) == 0
    assert main([*args, "method.dice_weight=0.5"]) == 2  # after --eval-splits: still an override
    # a knob added after the cell ran (absent from its config.yaml) is fine at its default, refused otherwise
    stored = final.parent / "config.yaml"
    stored.write_text("".join(ln for ln in stored.read_text().splitlines(True) if "dice_weight" not in ln))
    assert main(args) == 0
    assert main([*args, "method.dice_weight=0.5"]) == 2
    assert final.stat().st_mtime_ns == stamp


def test_bench_jobs_runs_cells_in_parallel_processes(root: Path, tmp_path: Path) -> None:
    """--jobs 2: the same records as one after the other, in cell order; the banks are built before the workers."""
    common = ["bench", *FAST, "train.max_steps=2", "--root", str(root), "--config", str(TINY), "--ratios", "0.25",
              "--seeds", "0", "--methods", "supervised", "prior_only", "l2l", "--no-full", "--eval-splits", "testA"]
    assert main([*common, "--out", str(tmp_path / "seq")]) == 0
    assert main([*common, "--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    keys = ("method", "ratio", "seed", "split", "mode")
    seq = [tuple(r[k] for k in keys) for r in json.loads((tmp_path / "seq" / "results.json").read_text())]
    par = [tuple(r[k] for k in keys) for r in json.loads((tmp_path / "par" / "results.json").read_text())]
    assert par == seq and {m for m, *_ in par} == {"supervised", "prior_only", "l2l"}
    for method in ("supervised", "prior_only", "l2l"):
        assert (tmp_path / "par" / "runs" / method / "r0.25" / "s0" / "final.json").is_file()
    assert (tmp_path / "par" / "cache" / "shaperefs_unc_testA").is_dir()  # the eval bank, built by the parent
    assert _worker_overrides(["a=1"]) == ["a=1", "train.threads=1"]
    assert _worker_overrides(["train.threads=4"]) == ["train.threads=4"]
    with pytest.raises(SystemExit):
        main([*common, "--out", str(tmp_path / "bad"), "--jobs", "0"])


def test_aggregate_mean_std_over_seeds() -> None:
    base = {"method": "l2l", "ratio": 0.01, "split": "testA", "mode": "prior", "n": 10}
    keys = ("mIoU", "oIoU", "P@0.5", "P@0.6", "P@0.7", "P@0.8", "P@0.9")
    recs = [{**base, "seed": s, **{k: v for k in keys}} for s, v in ((0, 50.0), (1, 60.0), (2, 70.0))]
    rows = [r for r in aggregate(recs) if r["split"] == "testA"]
    assert len(rows) == 1 and rows[0]["seeds"] == 3
    assert rows[0]["mIoU"] == pytest.approx(60.0) and rows[0]["mIoU_std"] == pytest.approx(10.0)
    assert "60.00 ± 10.00" in table_markdown(rows, "testA")


def test_parallel_grid_starts_the_costliest_cell_of_each_group_first() -> None:
    from l2l.experiments.grid import grid_cells, longest_first

    cells = grid_cells(["supervised", "prior_only", "fixmatch", "l2l"], [0.01, 0.05], [0], full=True)
    order = [cells[i] for i in longest_first(cells, range(len(cells)))]
    assert [m for m, r, s in order[:4]] == ["l2l", "fixmatch", "supervised", "prior_only"]
    assert {r for m, r, s in order[:4]} == {0.01} and {r for m, r, s in order[5:]} == {0.05}
    assert order[4][0] == "supervised_full"  # the headline column and its bound before the other ratios


def test_bench_plots_and_evolution_series_over_seeds(tmp_path: Path) -> None:
    rows = [{"split": "test", "method": m, "mode": mode, "ratio": r, "mIoU": v, "mIoU_std": 0.5}
            for m, r, v in (("l2l", 0.01, 60.0), ("l2l", 0.1, 63.0), ("supervised_full", 1.0, 62.0))
            for mode in ("prior", "prior_free")]
    plot_ratio_curve(rows, tmp_path / "ratio.png")
    assert (tmp_path / "ratio.png").stat().st_size > 0
    assert not plot_evolution(tmp_path, tmp_path / "evo.png")  # no run evolved yet: nothing drawn
    for seed, after in ((0, 66.0), (1, 64.0)):
        run = tmp_path / "runs" / "l2l" / "r0.01" / f"s{seed}"
        run.mkdir(parents=True)
        rec = {"method/evolve/round": 1.0, "method/evolve/hidden_before_mIoU": 68.0, "method/evolve/hidden_mIoU": after}
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n" + json.dumps(rec) + "\n")
    assert evolution_series(tmp_path) == {("l2l/r0.01", "hidden D_u masks"): {0: [68.0, 68.0], 1: [66.0, 64.0]}}
    assert plot_evolution(tmp_path, tmp_path / "evo.png")
    assert (tmp_path / "evo.png").stat().st_size > 0


def test_results_page_quotes_the_grid_table_and_keeps_its_prose(tmp_path: Path) -> None:
    from l2l.experiments.grid import update_doc

    out = tmp_path / "dev_val"
    out.mkdir()
    (out / "table.md").write_text("# Benchmark results\n\nCommand: `x`\n\n## val\n\n| a | 1.00 |\n")
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nprose before\n\n<!-- bench:dev_val -->\nold\n<!-- /bench:dev_val -->\n\nprose after\n")
    update_doc(doc, out)
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text and "| a | 1.00 |" in text
    (out / "table.md").write_text("# Benchmark results\n\n| a | 2.00 |\n")
    update_doc(doc, out)
    assert "| a | 2.00 |" in doc.read_text() and "| a | 1.00 |" not in doc.read_text()


def test_rple_plot_reads_the_policy_logs_of_every_run(tmp_path: Path) -> None:
    from l2l.experiments.figures import plot_rple

    assert not plot_rple(tmp_path, tmp_path / "rple.png")  # no policy logged: nothing drawn
    for seed in (0, 1):
        run = tmp_path / "runs" / "l2l" / "r0.01" / f"s{seed}"
        run.mkdir(parents=True)
        recs = [{"step": s, "train/rple/proxy_accept_rate": 0.5 + seed * 0.1, "train/rple/chose_reject": 0.1}
                for s in (10, 20)]
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{torn")
    assert plot_rple(tmp_path, tmp_path / "rple.png") and (tmp_path / "rple.png").stat().st_size > 0


def test_code_version_outside_a_checkout_names_no_commit(tmp_path: Path) -> None:
    info = code_version(tmp_path)  # an installed package: no git checkout around it
    assert info["commit"] is None and info["dirty"] is None and info["l2l"] and info["torch"]


def test_grid_passes_method_overrides_to_trained_methods_only() -> None:
    from l2l.errors import ConfigError
    from l2l.experiments.grid import _cell_config

    cell = {m: _cell_config(TINY, "data", "shaperefs", "unc", m, 0.01, 1, ["data.proposal=gaussian", "method.edit_l1=3.0"])
            for m in ("prior_only", "supervised", "l2l_no_rple")}
    assert "edit_l1" not in cell["prior_only"]["method"]  # it trains nothing, so the price means nothing there
    assert cell["supervised"]["method"]["edit_l1"] == 3.0 and cell["l2l_no_rple"]["method"]["edit_l1"] == 3.0
    assert cell["l2l_no_rple"]["method"]["fixed_threshold"] is not None  # the variant's own overrides still apply
    with pytest.raises(ConfigError, match="edit_l2"):  # a typo is still refused where the method trains
        _cell_config(TINY, "data", "shaperefs", "unc", "supervised", 0.01, 1, ["data.proposal=gaussian", "method.edit_l2=3.0"])
