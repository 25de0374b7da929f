"""RefCOCO-scale rehearsal: every stage of the pipeline timed on a ShapeRefs of RefCOCO's size, on this machine.

Each stage runs in its own process (so its peak memory is its own) and reports wall time, rate, peak RSS and disk;
the results and a projection for RefCOCO, RefCOCO+ and RefCOCOg from the measured rates go to
`benchmarks/results/scale.{json,md}`. Stages:

- `synth`: `l2l data synth` of N images (20,000 gives about RefCOCO's counts; the exact ones are reported).
- `priors`: the simulated MLLM over the train split; and the OpenAI-compatible client against a local stub server that
  answers every request after a fixed delay, at several concurrencies (what a real endpoint's latency allows).
- `proposals`: box / gaussian / grabcut proposals of the first M train sentences at the model side (480), and GrabCut
  alone on the same samples scaled to COCO's 640 px long side (its crop, capped at 160 px, is what it costs).
- `loader`: the training data path at 480 px (decode, squash, proposal from the bank, collate), samples/s per
  DataLoader worker count, and the workers a GPU at 100 images/s needs.
- `eval`: `evaluate` of the tiny model over the val split (about 10k sentences): time, peak memory, record size.
- `ddp`: a two-process `gloo` training run (`torchrun`, tiny model) on the large set for a few hundred steps.

    python benchmarks/scale.py --root data/scale --images 20000 --out benchmarks/results/scale
    python benchmarks/scale.py --root /tmp/scale_smoke --images 60 --sentences 40 --steps 10 --out /tmp/scale  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# train sentences / val sentences of the usual splits (RefCOCO and RefCOCO+ unc, RefCOCOg umd)
TARGETS = {"RefCOCO": (120_624, 10_834), "RefCOCO+": (120_191, 10_758), "RefCOCOg": (80_512, 4_896)}
SIDE = 480  # the LAVT config's input side
TINY = ["model.vision=tiny", "model.text=tiny", "model.dim=32", "model.decoder_dim=32", "model.pretrained=false"]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


class _Subset:
    """The first `n` samples of a dataset, for `build_bank`."""

    def __init__(self, ds: Any, n: int) -> None:
        self.ds, self.samples = ds, ds.samples[:n]

    def image(self, i: int) -> Any:
        return self.ds.image(i)


def stage_synth(a: argparse.Namespace) -> dict:
    from l2l.data.refer import ReferData
    from l2l.data.shaperefs import generate

    if a.root.exists():
        shutil.rmtree(a.root)
    t0 = time.perf_counter()
    generate(a.root, a.images, seed=0, progress=False, workers=os.cpu_count() or 1)
    dt = time.perf_counter() - t0
    refer = ReferData(a.root, "shaperefs", "unc")
    counts = {}
    for split in ("train", "val", "testA", "testB"):
        refs = [r for r in refer.refs if r["split"] == split]
        counts[split] = {"refs": len(refs), "sentences": sum(len(r["sentences"]) for r in refs),
                         "images": len({r["image_id"] for r in refs})}
    return {"seconds": dt, "rate": a.images / dt, "unit": "images/s", "disk_mb": _du_mb(a.root), "counts": counts}


def stage_priors_simulated(a: argparse.Namespace) -> dict:
    from l2l.data.dataset import RESDataset
    from l2l.data.refer import ReferData
    from l2l.priors.run import run_priors
    from l2l.priors.simulated import SimulatedMLLM, SimulatedMLLMConfig

    ds = RESDataset(a.root, "shaperefs/unc/train")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_priors(ds, SimulatedMLLM(ReferData(a.root, "shaperefs", "unc"), SimulatedMLLMConfig(seed=0)),
                   Path(tmp) / "p.jsonl", progress=False)
        dt = time.perf_counter() - t0
        size = (Path(tmp) / "p.jsonl").stat().st_size
    return {"seconds": dt, "rate": len(ds) / dt, "unit": "sentences/s", "disk_mb": size / 2**20, "n": len(ds)}


def _stub_server(delay: float) -> ThreadingHTTPServer:
    """An OpenAI-compatible endpoint that answers every chat completion with one box after `delay` seconds."""
    content = '```json\n[{"bbox_2d": [10, 10, 60, 50], "point_2d": [35, 30], "label": "it"}]\n```'
    body = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


def stage_priors_openai(a: argparse.Namespace) -> dict:
    from l2l.data.dataset import RESDataset
    from l2l.priors.openai import OpenAIProvider
    from l2l.priors.run import run_priors

    ds = RESDataset(a.root, "shaperefs/unc/train")
    httpd = _stub_server(a.delay)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    os.environ.setdefault("OPENAI_API_KEY", "stub")
    rows = []
    try:
        for conc in a.concurrency:
            n = min(len(ds), max(conc * 8, 40))
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run_priors(ds, OpenAIProvider(url, "stub", concurrency=conc), Path(tmp) / "p.jsonl", limit=n,
                           progress=False)
                dt = time.perf_counter() - t0
            rows.append({"concurrency": conc, "requests": n, "seconds": dt, "rate": n / dt,
                         "ideal_rate": conc / a.delay})
    finally:
        httpd.shutdown()
    return {"delay_s": a.delay, "rows": rows, "unit": "sentences/s"}


def stage_proposals(a: argparse.Namespace) -> dict:
    from l2l.data.dataset import RESDataset
    from l2l.proposals import build_bank
    from l2l.proposals.prepare import prepare_bank

    ds = RESDataset(a.root, "shaperefs/unc/train")
    n = min(a.sentences, len(ds))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _, priors = prepare_bank(a.root, "shaperefs/unc/train", "box", 8, tmp, progress=False)  # simulated priors
        sub = _Subset(ds, n)
        for method in ("box", "gaussian", "grabcut"):
            t0 = time.perf_counter()
            build_bank(sub, priors, method, SIDE, Path(tmp) / method, progress=False)
            dt = time.perf_counter() - t0
            rows.append({"method": method, "sentences": n, "seconds": dt, "rate": n / dt})
        rows.append(_grabcut_at_coco_size(sub, priors, n))
    return {"rows": rows, "unit": "sentences/s", "side": SIDE}


def _grabcut_at_coco_size(sub: _Subset, priors: dict, n: int) -> dict:
    """GrabCut's cost depends on the box crop (capped at GRABCUT_MAX_SIDE), and ShapeRefs objects are small: time it
    on the same samples with the image, box and points scaled so the long side is 640 (COCO's), as RefCOCO's are."""
    import cv2

    from l2l.proposals.methods import grabcut_map

    t0, done = time.perf_counter(), 0
    for i, sample in enumerate(sub.samples):
        prior = priors.get(sample.sample_id)
        if prior is None or prior.box is None:
            continue
        image = sub.image(i)
        f = 640.0 / max(image.shape[:2])
        big = cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)), interpolation=cv2.INTER_LINEAR)
        try:
            grabcut_map(big, tuple(v * f for v in prior.box), [(x * f, y * f, lab) for x, y, lab in prior.points])
        except (cv2.error, ValueError):
            pass  # the bank falls back to the box; the time spent still counts
        done += 1
    dt = time.perf_counter() - t0
    return {"method": "grabcut_640", "sentences": done, "seconds": dt, "rate": done / dt}


def stage_loader(a: argparse.Namespace) -> dict:
    import torch

    from l2l.training.config import load_config
    from l2l.training.trainer import Trainer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("tiny", [f"data.root={a.root}", *TINY, f"model.image_size={SIDE}", "model.use_sesm=true",
                                   "data.proposal=gaussian", "data.bank_side=160", "train.batch_size=16",
                                   f"data.cache_dir={tmp}/cache"])
        trainer = Trainer(cfg, Path(tmp) / "run")
        for workers in a.workers:
            trainer.tcfg.num_workers = workers
            loader = trainer._loader(trainer.labelled, trainer.sampler_l, 16, True, True)
            it = iter(loader)
            next(it)  # worker start-up is not the steady rate
            t0, n = time.perf_counter(), 0
            for _ in range(a.batches):
                try:
                    n += len(next(it)["sample_ids"])
                except StopIteration:
                    break
            dt = time.perf_counter() - t0
            rows.append({"workers": workers, "samples": n, "seconds": dt, "rate": n / dt})
            del it, loader
    best = max(rows, key=lambda r: r["rate"] / max(r["workers"], 1))
    per_worker = best["rate"] / max(best["workers"], 1)
    return {"rows": rows, "unit": "samples/s", "workers_for_100_img_s": round(100 / per_worker, 1),
            "torch_threads": torch.get_num_threads()}


def stage_eval(a: argparse.Namespace) -> dict:
    import torch

    from l2l.data.dataset import RESDataset
    from l2l.evaluation.evaluator import evaluate
    from l2l.model import ModelConfig, RESModel

    ds = RESDataset(a.root, "shaperefs/unc/val")
    torch.manual_seed(0)
    model = RESModel(ModelConfig(vision="tiny", text="tiny", image_size=128, dim=32, decoder_dim=32, pretrained=False))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.jsonl"
        t0 = time.perf_counter()
        metrics = evaluate(model, ds, model.processor(), batch_size=32, progress=False, out_jsonl=out)
        dt = time.perf_counter() - t0
        size = out.stat().st_size
    return {"seconds": dt, "rate": metrics["n"] / dt, "unit": "sentences/s", "n": metrics["n"],
            "disk_mb": size / 2**20}


def stage_ddp(a: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "l2l.cli.main", "train",
               "--config", "tiny", "--root", str(a.root), "--out", f"{tmp}/run", *TINY, "model.image_size=64",
               "train.epochs=0", f"train.max_steps={a.steps}", "train.val_every=0", "data.max_val_samples=64",
               "train.threads=1", f"data.cache_dir={tmp}/cache", "data.ratio=1.0"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun failed:\n{proc.stderr[-3000:]}")
        logged = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        img_s = [r["train/images_per_s"] for r in logged if "train/images_per_s" in r]
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # the largest rank
    return {"seconds": dt, "rate": a.steps / dt, "unit": "steps/s (2 processes, batch 8 each, incl. start-up)",
            "steps": a.steps, "images_per_s_logged": img_s[-1] if img_s else None, "rank_peak_rss_mb": children}


STAGES = {"synth": stage_synth, "priors_simulated": stage_priors_simulated, "priors_openai": stage_priors_openai,
          "proposals": stage_proposals, "loader": stage_loader, "eval": stage_eval, "ddp": stage_ddp}


def _projection(results: dict) -> list[str]:
    """Hours per stage for each RefCOCO-family dataset at the measured rates (one such machine)."""
    def rate(stage: str, key: str | None = None, value: Any = None) -> float | None:
        r = results.get(stage)
        if not r:
            return None
        if key is None:
            return r.get("rate")
        row = next((x for x in r["rows"] if x[key] == value), None)
        return None if row is None else row["rate"]

    cols = [("simulated priors", rate("priors_simulated"), "train"),
            ("OpenAI priors (best concurrency)", max((x["rate"] for x in results.get("priors_openai", {}).get("rows", [])),
                                                     default=None), "train"),
            ("grabcut proposals (640 px images)", rate("proposals", "method", "grabcut_640"), "train"),
            ("gaussian proposals", rate("proposals", "method", "gaussian"), "train"),
            ("eval (val, tiny model)", rate("eval"), "val")]
    lines = ["| dataset | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, (train, val) in TARGETS.items():
        cells = []
        for _, r, which in cols:
            n = train if which == "train" else val
            cells.append("-" if not r else f"{n / r / 3600:.2f} h")
        lines.append(f"| {name} ({train:,} train / {val:,} val sentences) | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, required=True, help="where the large ShapeRefs is (re)generated")
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--sentences", type=int, default=500, help="train sentences the proposal stage builds")
    p.add_argument("--delay", type=float, default=0.5, help="the stub server's answer delay in seconds")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=30, help="loader batches (of 16) timed per worker count")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of the two-process run")
    p.add_argument("--stages", nargs="*", default=list(STAGES), choices=list(STAGES),
                   help="stages to (re)run; the others keep their results; none: rewrite the tables only")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scale"))
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    a = p.parse_args()
    if a.stage:
        result = STAGES[a.stage](a)
        result["peak_rss_mb"] = round(_peak_mb(), 1)
        print("RESULT " + json.dumps(result))
        return
    results: dict[str, Any] = {}
    path = a.out.with_suffix(".json")
    if path.is_file():
        results = json.loads(path.read_text())["stages"]  # a rerun keeps stages it does not redo
    argv = ["--root", str(a.root), "--images", str(a.images), "--sentences", str(a.sentences), "--delay", str(a.delay),
            "--concurrency", *map(str, a.concurrency), "--workers", *map(str, a.workers), "--batches", str(a.batches),
            "--steps", str(a.steps), "--out", str(a.out)]
    for stage in a.stages:
        print(f"[scale] {stage} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, *argv, "--stage", stage], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"stage {stage} failed:\n{proc.stderr[-3000:]}")
        results[stage] = json.loads(line[len("RESULT "):])
        print(f"[scale] {stage}: {json.dumps(results[stage])[:300]}", file=sys.stderr, flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"images": a.images, "stages": results, "cpus": os.cpu_count()}, indent=2) + "\n")
    lines = [f"# Scale rehearsal ({a.images:,} ShapeRefs images, {os.cpu_count()} CPU cores)", "",
             f"Command: `python benchmarks/scale.py --root {a.root} --images {a.images}` (a stage's row is from the "
             "last run that ran it: `--stages NAME` reruns one)", "",
             "| stage | wall s | rate | peak RSS MB | disk MB |", "|---|---|---|---|---|"]
    for stage, r in results.items():
        if "rows" in r:
            for row in r["rows"]:
                label = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("seconds", "rate"))
                lines.append(f"| {stage} ({label}) | {row['seconds']:.1f} | {row['rate']:.2f} {r['unit']} | "
                             f"{r['peak_rss_mb']:.0f} | - |")
        else:
            peak = r.get("rank_peak_rss_mb", r["peak_rss_mb"])  # ddp: the largest rank, not the launcher
            lines.append(f"| {stage} | {r['seconds']:.1f} | {r['rate']:.2f} {r['unit']} | {peak:.0f} | "
                         f"{r.get('disk_mb', 0):.0f} |")
    if "synth" in results:
        lines += ["", "Counts: " + "; ".join(f"{s}: {c['images']:,} images, {c['refs']:,} refs, {c['sentences']:,} "
                                             f"sentences" for s, c in results["synth"]["counts"].items())]
    if "loader" in results:
        lines += ["", f"Loader workers a GPU at 100 images/s needs at 480 px: {results['loader']['workers_for_100_img_s']}"]
    lines += ["", "## Projection (hours on one machine like this one, at the measured rates)", "", *_projection(results)]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
