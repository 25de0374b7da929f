"""Time one training step of each method relative to `supervised` on the same labelled batch (CPU by default).

The semi-supervised methods also get an unlabelled batch of the same size; `supervised` on twice the batch is
printed too, so the cost of the extra data can be told apart from the cost of the method. Steps include the
backward pass, the student's AdamW step and `after_optimizer_step` (EMA). Steps of all methods are interleaved
so that load from other processes hits them alike.

    python benchmarks/method_step_cost.py --model default --steps 12
    python benchmarks/method_step_cost.py --model tiny --methods supervised l2l
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from l2l.methods import METHODS, build_method
from l2l.model import ModelConfig, RESModel


def synthetic_batch(n: int, size: int, labelled: bool, seed: int) -> dict:
    """A batch per the methods contract: square objects, proposals slightly off, one failed prior."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, size, size)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        x, y = (int(v) for v in torch.randint(0, size // 2, (2,), generator=g))
        mask[i, 0, y:y + size // 3, x:x + size // 3] = 1
        boxes[i] = torch.tensor([x - 2.0, y - 2.0, x + size // 3 + 2.0, y + size // 3 + 2.0])
    proposal = torch.nn.functional.max_pool2d(mask, 5, 1, 2) * 0.8
    has = torch.ones(n, dtype=torch.bool)
    has[-1] = False
    ids = torch.randint(1000, 2000, (n, 20), generator=g)
    ids[:, 0] = 101
    batch = {"pixel_values": torch.randn(n, 3, size, size, generator=g) + mask, "input_ids": ids,
             "attention_mask": torch.ones(n, 20, dtype=torch.long), "sample_ids": [f"{seed}_{i}:0" for i in range(n)],
             "image_ids": torch.arange(n),
             "texts": ["the object"] * n, "boxes": boxes, "prior_conf": has.float() * 0.8, "proposal": proposal,
             "has_proposal": has}
    if labelled:
        batch["mask"] = mask
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["default", "tiny"], default="default")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=["fixmatch", "semires", "prior_label", "l2l", "l2l_no_rple"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = 128 if args.model == "default" else 64

    def config(**overrides: object) -> ModelConfig:
        if args.model == "default":
            return ModelConfig(image_size=size, **overrides)
        return ModelConfig(vision="tiny", text="tiny", image_size=size, dim=32, decoder_dim=32, **overrides)

    batch_l = synthetic_batch(args.batch, size, True, 1)
    batch_u = synthetic_batch(args.batch, size, False, 2)
    batch_2 = synthetic_batch(2 * args.batch, size, True, 3)
    runs: dict[str, tuple] = {}
    for label, name, data in [("supervised", "supervised", batch_l), ("supervised_2B", "supervised", batch_2)] + [
            (m, m, batch_l) for m in args.methods]:
        torch.manual_seed(0)
        model = RESModel(config(**getattr(METHODS[name], "model_overrides", {})))
        model.train()
        method = build_method(name, model, {}, total_steps=1000)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        runs[label] = (method, opt, data)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for step in range(args.steps + 2):
        for label, (method, opt, data) in runs.items():
            start = time.perf_counter()
            out = method.train_step(data, batch_u if method.needs_unlabelled else None, step)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            method.after_optimizer_step(step)
            if step >= 2:  # the first steps allocate and warm caches
                times[label].append(time.perf_counter() - start)
    base = statistics.mean(times["supervised"])
    print(f"model={args.model} S={size} B_l=B_u={args.batch} threads={args.threads} steps={args.steps}")
    for label, values in times.items():
        mean = statistics.mean(values)
        print(f"{label:14s} mean {mean * 1000:8.1f} ms  median {statistics.median(values) * 1000:8.1f} ms  "
              f"x supervised {mean / base:.2f}")


if __name__ == "__main__":
    main()
