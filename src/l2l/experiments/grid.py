"""The evidence grid: every (method, label ratio, seed) trained with one schedule and scored on the test splits.

Each run lives in `OUT/runs/<method>/r<ratio>/s<seed>/` (a normal training run directory, so a run killed
half-way resumes from its checkpoint) and ends with `final.json`, the run's result records. A finished run
is never redone, so the grid can span several sittings. `OUT/results.json` and `OUT/table.md` are rebuilt
from all finished runs after each one.

Each cell is scored twice: `best` is the weight average that validation on val chose among the schedule's
checkpoints (step 0 included, so a network with priors that learnt nothing useful stays prior_only; what a user
deploys), `last` is the last step's (what training did). The test splits are read once per cell, after training,
at the original image resolution, on every sentence of every ref, in two modes: `prior` (the model is given the
proposal of the (simulated) MLLM prior, the L2L setting) and `prior_free`.

One module for the grid: cells, their configs, running (one process or a pool), aggregation and tables belong
together (a cell's name, config and table row must agree); figures live in `figures`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from l2l.data.dataset import DataId, RESDataset
from l2l.errors import ConfigError
from l2l.evaluation.evaluator import evaluate
from l2l.evaluation.metric import METRIC_KEYS
from l2l.methods import METHODS, get_method_class
from l2l.training.config import load_config
from l2l.utils.io import atomic_write_json, atomic_write_text, make_dir
from l2l.utils.provenance import code_version

SCORE_KEYS = tuple(k for k in METRIC_KEYS if k != "n")  # the metrics a table reports (no count)
# Derived from the registry: every method is a grid row, every ablation a row at the smallest ratio.
ALL_METHODS = tuple(name for name, cls in METHODS.items() if not cls.ablation_of)
QUICK_METHODS = ALL_METHODS
ABLATIONS = (*(name for name, cls in METHODS.items() if cls.ablation_of), "l2l_uninformative_conf")
FULL = "supervised_full"  # the fully supervised upper bound: `supervised` on a 100% split
FULL_STEPS = 1800  # the bound's own schedule: 100% labels need more steps than a 1% cell to reach what they can
# Grid cells that are a registered method with fixed overrides (the cell name is the row in the table).
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    FULL: ("supervised", (f"train.max_steps={FULL_STEPS}",)),
    # robustness: the simulated MLLM's confidence made uninformative (0.5 for every prior)
    "l2l_uninformative_conf": ("l2l", ("data.uninformative_confidence=true",)),
}


def method_of(cell: str) -> str:
    """The registered method a grid cell trains."""
    return VARIANTS[cell][0] if cell in VARIANTS else cell


def ratio_tag(ratio: float) -> str:
    return f"r{ratio:g}"


def run_dir_for(out: Path, method: str, ratio: float, seed: int) -> Path:
    return out / "runs" / method / ratio_tag(ratio) / f"s{seed}"


def _modes_for(method: str, uses_sesm: bool) -> list[str]:
    cls = get_method_class(method_of(method))
    if not cls.needs_training:
        return ["prior"]  # prior_only: the proposal is the prediction; prior-free it would predict nothing
    return ["prior", "prior_free"] if uses_sesm else ["prior_free"]


def _cell_config(
    config: str | Path, root: str | Path, dataset: str, split_by: str, method: str, ratio: float, seed: int,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """The loaded config of one grid cell: the user's overrides, then the cell's data, seed and method. A method
    that trains nothing (`prior_only`) has no training knobs, so `method.*` overrides it does not know are not
    passed to it (the same command sets them for every trained method of the table)."""
    name = method_of(method)
    cls = get_method_class(name)
    if not cls.needs_training:
        overrides = [o for o in overrides if not o.startswith("method.") or o.split("=", 1)[0][7:] in cls.defaults]
    return load_config(
        config,
        [
            *overrides,
            *VARIANTS.get(method, ("", ()))[1],
            f"data.root={root}",
            f"data.dataset={dataset}",
            f"data.split_by={split_by}",
            f"data.ratio={ratio}",
            f"data.split_seed={seed}",
            f"seed={seed}",
            f"method.name={name}",
        ],
    )


# Where and how fast a cell ran, not what it learnt: a finished cell stays valid when only these differ.
PLACE_KEYS = frozenset({"data.root", "data.cache_dir", "train.threads", "train.num_workers", "train.device",
                        "train.eval_batch_size", "train.log_every"})


def _flat(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_finished_cell(run_dir: Path, cfg: dict[str, Any]) -> None:
    """Refuse a finished cell whose stored `config.yaml` differs from what the grid asks now (a changed default or
    override), so that a table never mixes cells of two configs. Cells without a stored config are trusted; a key
    the stored config lacks (a knob added since) must have its code default, which keeps the old behaviour."""
    import yaml

    from l2l.training.config import resolve_config

    stored = run_dir / "config.yaml"
    if not stored.is_file():
        return
    old = _flat(yaml.safe_load(stored.read_text(encoding="utf-8")) or {})
    new = _flat(cfg)
    default = _flat(resolve_config({"method": {"name": cfg["method"]["name"]}}))
    for key in new.keys() - old.keys():
        if key in default:
            old[key] = default[key]
    diff = sorted(k for k in old.keys() | new.keys() if k not in PLACE_KEYS and old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:4])
        raise ConfigError(f"{run_dir}: this finished cell was trained with another config ({shown}"
                          f"{', ...' if len(diff) > 4 else ''}); delete the cell or give the grid another --out")


def run_one(
    config: str | Path,
    root: str | Path,
    dataset: str,
    split_by: str,
    method: str,
    ratio: float,
    seed: int,
    out: Path,
    eval_splits: Sequence[str],
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train one grid cell (or resume it) and return its result records; cached in `final.json`."""
    from l2l.proposals import BankSpec
    from l2l.training.trainer import Trainer

    run_dir = run_dir_for(out, method, ratio, seed)
    final = run_dir / "final.json"
    cfg = _cell_config(config, root, dataset, split_by, method, ratio, seed, overrides)
    if final.is_file():
        check_finished_cell(run_dir, cfg)
        return json.loads(final.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    summary = trainer.fit()
    if summary.get("stopped"):
        raise RuntimeError(f"{run_dir}: training stopped early (train.stop_after_steps is set)")
    train_s = time.perf_counter() - t0
    # Two picks, both reported: `best` (the network validation chose, what a user deploys) and `last` (what the
    # schedule's last step gives, so a table also shows what training did where val picked the start).
    nets = {"last": trainer.eval_network()}
    best_step = int(summary["best"]["step"])
    if hasattr(nets["last"], "save_pretrained") and (run_dir / "best").is_dir() and best_step != trainer.step:
        from l2l.model.modeling import RESModel

        nets["best"] = RESModel.from_pretrained(run_dir / "best")
    uses_sesm = bool(trainer.model_config.use_sesm)
    records: list[dict[str, Any]] = []
    code = code_version()
    spec = BankSpec.from_data(trainer.dcfg, trainer.model_config.image_size)
    for split in eval_splits:
        data_id = DataId(dataset, split_by, split)
        ds = RESDataset(root, data_id)
        modes = _modes_for(method, uses_sesm)
        bank = None
        if "prior" in modes:
            bank, _ = spec.prepare(data_id, out / "cache")
        for mode in modes:
            for pick, net in nets.items():
                metrics = evaluate(
                    net, ds, trainer.processor, bank=bank, use_priors=mode == "prior",
                    batch_size=trainer.tcfg.eval_batch_size, progress=False,
                    out_jsonl=run_dir / f"samples_{split}_{mode}_{pick}.jsonl",
                )
                rec = {"method": method, "ratio": ratio, "seed": seed, "split": split, "mode": mode}
                rec.update({k: float(metrics[k]) for k in SCORE_KEYS})
                rec.update(n=int(metrics["n"]), train_s=round(train_s, 1), best_step=best_step, code=code)
                picks = [pick] if len(nets) > 1 else ["best", "last"]  # one network: both picks are it
                records += [{**rec, "pick": p} for p in picks]
                log(f"  {method:<14} ratio={ratio:<5g} seed={seed} {split:<6} {mode:<10} {'/'.join(picks):<9} "
                    f"mIoU={rec['mIoU']:.2f} oIoU={rec['oIoU']:.2f}")
    atomic_write_json(final, records)
    return records


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var)


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per (method, ratio, split, mode); the test splits pooled as split 'test'."""
    groups: dict[tuple, dict[int, list[dict[str, Any]]]] = {}
    for r in records:
        for split in (r["split"],) if r["split"] == "val" else (r["split"], "test"):
            key = (r["method"], r["ratio"], split, r["mode"], r.get("pick", "best"))
            groups.setdefault(key, {}).setdefault(r["seed"], []).append(r)
    rows = []
    for (method, ratio, split, mode, pick), by_seed in groups.items():
        per_seed: dict[str, list[float]] = {k: [] for k in SCORE_KEYS}
        for recs in by_seed.values():
            n = sum(x["n"] for x in recs)
            for k in SCORE_KEYS:  # pooled over test splits weighted by sample count (oIoU approximated likewise)
                per_seed[k].append(sum(x[k] * x["n"] for x in recs) / max(n, 1))
        row = {"method": method, "ratio": ratio, "split": split, "mode": mode, "pick": pick, "seeds": len(by_seed),
               "best_steps": sorted(int(recs[0].get("best_step", -1)) for recs in by_seed.values())}
        for k in SCORE_KEYS:
            row[k], row[k + "_std"] = _mean_std(per_seed[k])
        rows.append(row)
    order = {m: i for i, m in enumerate((*ALL_METHODS, *ABLATIONS, FULL))}
    rows.sort(key=lambda r: (r["split"], r["pick"], r["ratio"], order.get(r["method"], 99), r["mode"]))
    return rows


PICKS = {"best": "the network validation chose (`best/`, step 0 a candidate)", "last": "the last step's network"}


def table_markdown(rows: list[dict[str, Any]], split: str = "test", pick: str = "best") -> str:
    pooled = " (testA and testB pooled, weighted by samples)" if split == "test" else ""
    lines = [
        f"Split `{split}`{pooled}, {PICKS[pick]}; mean ± std over seeds, percent. `best steps`: the step val chose, "
        "per seed.",
        "",
        "| ratio | method | mode | seeds | mIoU | oIoU | P@0.5 | P@0.7 | P@0.9 | best steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["split"] != split or r.get("pick", "best") != pick:
            continue
        cells = [f"{r[k]:.2f} ± {r[k + '_std']:.2f}" for k in ("mIoU", "oIoU", "P@0.5", "P@0.7", "P@0.9")]
        ratio = "100%" if r["method"] == FULL else f"{r['ratio'] * 100:g}%"
        steps = ", ".join(str(s) for s in r.get("best_steps", [])) if r["method"] != "prior_only" else "-"
        lines.append(f"| {ratio} | {r['method']} | {r['mode']} | {r['seeds']} | " + " | ".join(cells) + f" | {steps} |")
    return "\n".join(lines) + "\n"


def provenance_line(records: list[dict[str, Any]]) -> str:
    """How many cells each commit produced (a cell's records share one), so a mixed table says it is mixed."""
    cells: dict[tuple, str] = {}
    for r in records:
        code = r.get("code")
        if not code:
            tag = "with no recorded commit (run before cells recorded one)"
        elif not code.get("commit"):
            tag = f"from an installed l2l {code.get('l2l')} (no git checkout)"
        else:
            tag = f"from commit {code['commit'][:10]}" + (" with modified src/" if code.get("dirty") else "")
        cells[(r["method"], r["ratio"], r["seed"])] = tag
    counts: dict[str, int] = {}
    for tag in cells.values():
        counts[tag] = counts.get(tag, 0) + 1
    listed = "; ".join(f"{n} {tag}" for tag, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"Code: {len(cells)} cells: {listed}."


def write_outputs(out: Path, records: list[dict[str, Any]], command: str) -> list[dict[str, Any]]:
    rows = aggregate(records)
    atomic_write_json(out / "results.json", records)
    parts = [f"# Benchmark results\n\nCommand: `{command}`\n", provenance_line(records) + "\n"]
    for split in ("test", "val", "testA", "testB"):
        for pick in PICKS:
            if any(r["split"] == split and r.get("pick", "best") == pick for r in rows):
                parts.append(f"## {split}, {pick}\n\n" + table_markdown(rows, split, pick))
    atomic_write_text(out / "table.md", "\n".join(parts))
    from l2l.experiments.figures import plot_evolution, plot_ratio_curve, plot_rple

    if rows:
        plot_ratio_curve(rows, out / "miou_vs_ratio.png")
    plot_evolution(out, out / "evolution.png")
    plot_rple(out, out / "rple.png")
    return rows


def update_doc(doc: Path, out: Path) -> None:
    """Put the grid's `table.md` into `doc` between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` (NAME: the
    grid directory's name), so a results page quotes exactly what `results.json` gives, never a hand-edited copy.
    The rest of the page (the prose) is left as it is; a page without the markers gets them appended."""
    name = out.name
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    body = (out / "table.md").read_text(encoding="utf-8").replace("# Benchmark results", "").strip()
    body = body.replace("\n## ", "\n#### ")
    block = f"{start}\n{body}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.is_file() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    atomic_write_text(doc, text)


def grid_cells(
    methods: Sequence[str], ratios: Sequence[float], seeds: Sequence[int], full: bool = True, ablations: bool = False
) -> list[tuple[str, float, int]]:
    """The (method, ratio, seed) cells, in run order: the smallest ratio first (every method, and the L2L ablations
    when `ablations`, seed by seed), then the fully supervised upper bound once per seed when `full`, then the
    other ratios. A grid stopped early has the headline column (the smallest ratio, where the claims are) whole."""
    for m in (*methods, *(ABLATIONS if ablations else ())):
        get_method_class(method_of(m))  # fail on a typo before any training
    ratios = sorted(ratios)
    extra = [m for m in ABLATIONS if m not in methods] if ablations else []
    cells = [(m, ratios[0], s) for s in seeds for m in (*methods, *extra)]
    if full:
        cells += [(FULL, 1.0, s) for s in seeds]
    cells += [(m, r, s) for r in ratios[1:] for s in seeds for m in methods]
    return cells


def prebuild_banks(
    config: str | Path,
    root: str | Path,
    dataset: str,
    split_by: str,
    cells: Sequence[tuple[str, float, int]],
    out: Path,
    eval_splits: Sequence[str],
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> int:
    """Build, one after the other, every proposal bank the `cells` will open; returns how many distinct banks.

    Banks are cached on disk and built on first use: the train and val banks by the Trainer in the shared
    cache (`data.cache_dir`, default `<root>/.l2l_cache`), the eval-split banks by `run_one` in `OUT/cache`. Cells
    run in parallel processes (`run_grid(jobs>1)`) would otherwise race to build the same bank. The same
    `BankSpec` and cache directories as the Trainer and `run_one` are used, so the workers open these banks."""
    import torch

    from l2l.model.config import ModelConfig
    from l2l.proposals import BankSpec, shared_cache
    from l2l.proposals.candidates import prepare_candidates
    from l2l.training.config import DataConfig

    done: set[tuple] = set()
    for method, ratio, seed in cells:
        cfg = _cell_config(config, root, dataset, split_by, method, ratio, seed, overrides)
        d = DataConfig(**cfg["data"])
        model_config = ModelConfig.from_dict(cfg["model"], source="config: model")
        cls = get_method_class(cfg["method"]["name"])
        spec = BankSpec.from_data(d, model_config.image_size)
        shared = shared_cache(d.root, d.cache_dir)
        wanted: list[tuple[DataId, Path, str]] = []
        if cls.takes_proposals(model_config.use_sesm) and d.proposal != "none":  # as Trainer._build_banks
            device = "cuda:0" if torch.cuda.is_available() and cfg["train"]["device"] != "cpu" else "cpu"
            wanted += [(DataId(d.dataset, d.split_by, s), shared, device) for s in (d.train_split, d.val_split)]
        if "prior" in _modes_for(method, bool(model_config.use_sesm)):  # as run_one's evaluation
            wanted += [(DataId(dataset, split_by, s), out / "cache", "cpu") for s in eval_splits]
        if cls.needs_candidates:  # as Trainer._build_banks
            train_id = DataId(d.dataset, d.split_by, d.train_split)
            if ("candidates", str(train_id), str(shared)) not in done:
                done.add(("candidates", str(train_id), str(shared)))
                log(f"  candidate masks {train_id} (size {spec.size}) in {shared}")
                prepare_candidates(d.root, train_id, spec.size, shared, sam_checkpoint=d.sam_checkpoint or None)
        for data_id, cache_dir, device in wanted:
            key = (spec, str(data_id), str(cache_dir))
            if key in done:
                continue
            done.add(key)
            log(f"  proposal bank {data_id} ({spec.method}, size {spec.size}) in {cache_dir}")
            spec.prepare(data_id, cache_dir, device=device)
    return len(done)


def _run_cell_worker(
    config: str, root: str, dataset: str, split_by: str, method: str, ratio: float, seed: int, out: str,
    eval_splits: list[str], overrides: list[str],
) -> list[dict[str, Any]]:
    """`run_one` in a worker process of `run_grid(jobs>1)`; logs to stdout with the cell as prefix."""
    prefix = f"[{method} {ratio_tag(ratio)} s{seed}]"

    def log(msg: str) -> None:
        print(f"{prefix} {msg.strip()}", flush=True)

    return run_one(config, root, dataset, split_by, method, ratio, seed, Path(out), eval_splits, overrides, log)


def _worker_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides of a parallel cell: one intra-op thread per process unless the user chose `train.threads`."""
    mine = list(overrides)
    if not any(o.split("=", 1)[0].strip() == "train.threads" for o in mine):
        mine.append("train.threads=1")
    return mine


def _cost_rank(method: str) -> int:
    """Rough cost order of a cell: self-evolving L2L first, then other semi-supervised methods, then the rest."""
    cls = get_method_class(method_of(method))
    if not cls.needs_training:
        return 3
    if cls.evolves:
        return 0
    return 1 if cls.needs_unlabelled else 2


def longest_first(cells: Sequence[tuple[str, float, int]], todo: Sequence[int]) -> list[int]:
    """Submission order for parallel workers: (ratio, seed) groups keep their order, so a grid stopped early still
    has whole groups; inside a group the costliest cells start first (the quick grid: ~15 instead of ~19 minutes
    on two workers, since the L2L cell no longer starts last)."""
    group: dict[tuple[float, int], int] = {}
    for i in todo:
        group.setdefault((cells[i][1], cells[i][2]), len(group))
    return sorted(todo, key=lambda i: (group[(cells[i][1], cells[i][2])], _cost_rank(cells[i][0]), i))


def report_grid(cells: Sequence[tuple[str, float, int]], out: str | Path, command: str = "",
                log: Callable[[str], None] = print) -> list[tuple[str, float, int]]:
    """Rebuild `results.json`, `table.md` and the plots from the cells that have finished, training nothing (a grid
    that spans several sittings can be reported at any point); returns the cells still missing."""
    out = Path(out)
    records: list[dict[str, Any]] = []
    missing = []
    for cell in cells:
        final = run_dir_for(out, *cell) / "final.json"
        if final.is_file():
            records += json.loads(final.read_text(encoding="utf-8"))
        else:
            missing.append(cell)
    write_outputs(out, records, command)
    log(f"{len(cells) - len(missing)} of {len(cells)} cells finished")
    for method, ratio, seed in missing:
        log(f"  missing: {method} ratio={ratio:g} seed={seed}")
    return missing


def run_grid(
    config: str | Path,
    root: str | Path,
    dataset: str,
    split_by: str,
    cells: Sequence[tuple[str, float, int]],
    out: str | Path,
    eval_splits: Sequence[str],
    overrides: Sequence[str] = (),
    command: str = "",
    log: Callable[[str], None] = print,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Run every missing cell (finished ones load from their `final.json`), then write the table.

    With `jobs > 1` up to `jobs` cells train at once, each in its own (spawned) process with one intra-op
    thread; the proposal banks are built beforehand in this process (`prebuild_banks`). A failed cell does not
    stop the others; once all have ended, a RuntimeError names the failed ones."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    out = Path(out)
    make_dir(out)
    if jobs > 1:
        grid = dict(config=config, root=root, dataset=dataset, split_by=split_by, out=out, eval_splits=eval_splits,
                    overrides=overrides)
        return _run_grid_parallel(grid, cells, command, log, jobs)
    records: list[dict[str, Any]] = []
    for i, (method, ratio, seed) in enumerate(cells, 1):
        done = (run_dir_for(out, method, ratio, seed) / "final.json").is_file()
        log(f"[{i}/{len(cells)}] {method} ratio={ratio:g} seed={seed}{' (done, cached)' if done else ''}")
        t0 = time.perf_counter()
        records += run_one(config, root, dataset, split_by, method, ratio, seed, out, eval_splits, overrides, log)
        if not done:
            log(f"  finished in {time.perf_counter() - t0:.0f}s")
        write_outputs(out, records, command)
    return write_outputs(out, records, command)


def _run_grid_parallel(
    grid: dict[str, Any], cells: Sequence[tuple[str, float, int]], command: str, log: Callable[[str], None], jobs: int
) -> list[dict[str, Any]]:
    """`run_grid` with up to `jobs` cells at once in spawned processes (torch and fork do not mix); `grid` holds
    run_grid's config, root, dataset, split_by, out, eval_splits and overrides."""
    config, root, dataset, split_by = grid["config"], grid["root"], grid["dataset"], grid["split_by"]
    out, eval_splits, overrides = grid["out"], grid["eval_splits"], grid["overrides"]
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    n = len(cells)
    by_cell: dict[int, list[dict[str, Any]]] = {}

    def flush() -> list[dict[str, Any]]:
        records = [r for i in sorted(by_cell) for r in by_cell[i]]  # cell order, whatever order they finished in
        return write_outputs(out, records, command)

    todo: list[int] = []
    for i, (method, ratio, seed) in enumerate(cells):
        if (run_dir_for(out, method, ratio, seed) / "final.json").is_file():
            log(f"[{i + 1}/{n}] {method} ratio={ratio:g} seed={seed} (done, cached)")
            by_cell[i] = run_one(config, root, dataset, split_by, method, ratio, seed, out, eval_splits, overrides, log)
        else:
            todo.append(i)
    if not todo:
        return flush()
    todo = longest_first(cells, todo)
    log(f"building the proposal banks of {len(todo)} cell(s) before starting {min(jobs, len(todo))} worker(s)")
    prebuild_banks(config, root, dataset, split_by, [cells[i] for i in todo], out, eval_splits, overrides, log)
    worker_overrides = _worker_overrides(overrides)
    failed: list[str] = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
        running: dict[Future, tuple[int, float]] = {}
        for i in todo:
            method, ratio, seed = cells[i]
            fut = pool.submit(_run_cell_worker, str(config), str(root), dataset, split_by, method, float(ratio),
                              int(seed), str(out), list(eval_splits), worker_overrides)
            running[fut] = (i, time.perf_counter())
            log(f"[{i + 1}/{n}] {method} ratio={ratio:g} seed={seed} (queued)")
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                i, t0 = running.pop(fut)
                method, ratio, seed = cells[i]
                name = f"{method} ratio={ratio:g} seed={seed}"
                try:
                    by_cell[i] = fut.result()
                except Exception as exc:  # noqa: BLE001 - one failed cell must not stop the others
                    failed.append(name)
                    log(f"[{i + 1}/{n}] {name} FAILED: {type(exc).__name__}: {exc}")
                    if exc.__cause__ is not None:  # the worker's traceback, as concurrent.futures attaches it
                        log(str(exc.__cause__).rstrip())
                    continue
                log(f"[{i + 1}/{n}] {name} finished ({time.perf_counter() - t0:.0f}s since queued)")
                flush()
    rows = flush()
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} cell(s) failed: " + "; ".join(failed))
    return rows
