"""`l2l eval`: score a checkpoint on one or more dataset ids, prior-free and (given priors) with priors.

Single process by default; under `torchrun --nproc-per-node G l2l eval ...` every rank scores a shard and the
records are merged without the distributed sampler's padding. Metrics are at the original image resolution.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from l2l.errors import ConfigError
from l2l.utils.io import atomic_write_json

RESOLUTION_NOTE = "original image size (logits upsampled bilinearly to HxW, threshold at probability 0.5)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: mIoU, oIoU, P@0.5..0.9 per dataset id and mode",
        description="Evaluate a save_pretrained checkpoint on dataset ids (every sentence of every ref). "
        "Prints one table row per data id and mode, writes OUT/metrics.json and one per-sample JSONL per row. "
        "Metrics are computed at the original image resolution.",
        epilog="Example: l2l eval --checkpoint runs/shaperefs/best --root data --data shaperefs/unc/val "
        "--data shaperefs/unc/testA --out runs/shaperefs/eval --priors data/priors/val.jsonl "
        "--proposal-method gaussian  (ShapeRefs: --simulated-priors instead of --priors)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="directory written by save_pretrained")
    p.add_argument("--root", required=True, type=Path, help="data root (refer layout)")
    p.add_argument("--data", required=True, action="append", help="dataset id dataset/split_by/split; repeatable")
    p.add_argument("--out", required=True, type=Path, help="output directory for metrics.json and JSONL files")
    p.add_argument("--priors", type=Path, action="append", default=None,
                   help="priors JSONL for the with-priors mode; one per --data, or one file for all")
    p.add_argument("--simulated-priors", action="store_true",
                   help="with-priors mode from the simulated MLLM (synthetic data such as ShapeRefs only)")
    p.add_argument("--priors-seed", type=int, default=0, help="seed of the simulated MLLM")
    p.add_argument("--proposal-method", default=None,
                   help="proposal from the priors: box, gaussian, grabcut, sam (default: the one the checkpoint "
                   "was trained with, from its training.json; else gaussian)")
    p.add_argument("--sam-checkpoint", type=Path, default=None, help="local SAM checkpoint (proposal method sam)")
    p.add_argument("--proposal-cache", type=Path, default=None,
                   help="where proposal banks are cached (default OUT/proposals)")
    p.add_argument("--modes", choices=("auto", "prior", "prior_free"), default="auto",
                   help="auto: prior-free, plus with priors when --priors is given")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype")
    p.set_defaults(func=run)


def _setup_device(requested: str | None) -> tuple[torch.device, bool]:
    """Pick the device; under torchrun (WORLD_SIZE > 1) join the process group, one GPU per local rank."""
    from l2l.utils.device import resolve_device

    device = resolve_device(requested)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device, True
    return device, False


def _modes(args: argparse.Namespace) -> list[bool]:
    have_priors = bool(args.priors) or args.simulated_priors
    if args.priors and args.simulated_priors:
        raise ConfigError("give either --priors FILE or --simulated-priors, not both")
    if args.priors and len(args.priors) not in (1, len(args.data)):
        raise ConfigError(f"got {len(args.priors)} --priors files for {len(args.data)} --data ids; give one or one each")
    if args.modes == "prior" and not have_priors:
        raise ConfigError("--modes prior needs --priors FILE (or --simulated-priors on synthetic data)")
    if args.modes == "prior":
        return [True]
    if args.modes == "prior_free" or not have_priors:
        return [False]
    return [False, True]


def run(args: argparse.Namespace) -> int:
    from l2l.data.dataset import RESDataset
    from l2l.evaluation import evaluate, format_table, mode_name
    from l2l.model import RESModel
    from l2l.model.modeling import trained_proposal_method

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    device, own_group = _setup_device(args.device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        modes = _modes(args)
        model = RESModel.from_pretrained(args.checkpoint).to(device)
        if args.proposal_method is None:
            args.proposal_method = trained_proposal_method(args.checkpoint)
            if True in modes and rank == 0:
                print(f"proposal method: {args.proposal_method} (the checkpoint's training proposal; "
                      "--proposal-method to change)", file=sys.stderr)
        processor = model.processor()
        rows: list[dict[str, Any]] = []
        for k, data in enumerate(args.data):
            dataset = RESDataset(args.root, data)
            bank = None
            if True in modes:
                bank = _bank(args, k, dataset, model.config.image_size, device, rank)
            for use_priors in modes:
                mode = mode_name(use_priors)
                stem = str(dataset.data_id).replace("/", "_")
                start = time.perf_counter()
                result = evaluate(
                    model, dataset, processor, bank=bank, use_priors=use_priors, batch_size=args.batch_size,
                    out_jsonl=args.out / f"{stem}.{mode}.jsonl", num_workers=args.workers, amp_dtype=amp,
                    extra={"data": str(dataset.data_id)},
                )
                rows.append({"data": str(dataset.data_id), "mode": mode, **result,
                             "seconds": round(time.perf_counter() - start, 2)})
        if rank == 0:
            atomic_write_json(args.out / "metrics.json", {
                "checkpoint": str(args.checkpoint), "root": str(args.root), "resolution": RESOLUTION_NOTE,
                "proposal_method": args.proposal_method if True in modes else None,
                "priors": ([str(p) for p in args.priors] if args.priors
                           else f"simulated MLLM, seed {args.priors_seed}" if args.simulated_priors else None),
                "results": rows,
            })
            print(format_table(rows))
            print(f"metrics in percent at the original image resolution; wrote {args.out / 'metrics.json'}")
    finally:
        if own_group:
            dist.destroy_process_group()
    return 0


def _bank(args: argparse.Namespace, k: int, dataset: Any, size: int, device: torch.device, rank: int) -> Any:
    """Build (rank 0) or open (other ranks, after a barrier) the proposal bank of one dataset id."""
    from l2l.proposals import BankSpec, ProposalBank

    cache = args.proposal_cache or args.out / "proposals"
    data_id = dataset.data_id
    priors = (args.priors[k] if len(args.priors) > 1 else args.priors[0]) if args.priors else None
    spec = BankSpec(root=str(args.root), method=args.proposal_method, size=int(size),
                    priors=str(priors) if priors else None, seed=args.priors_seed,
                    sam_checkpoint=str(args.sam_checkpoint) if args.sam_checkpoint else None)
    bank = None
    if rank == 0:
        bank, _ = spec.prepare(data_id, cache, device=str(device))
    if dist.is_initialized():
        dist.barrier()
    if bank is None:
        bank = ProposalBank.open(spec.path(data_id, cache), read_size=spec.size)
    return bank
