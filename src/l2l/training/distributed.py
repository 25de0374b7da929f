"""Distributed helpers shared by the trainer and evaluation: where this process sits, gradient and buffer averaging,
RNG state for exact resume. Single process by default; `torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from l2l.errors import ConfigError


@dataclass
class DistEnv:
    """Where this process sits in a (possibly single-process) job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, device: str = "auto") -> "DistEnv":
        """Read torchrun's variables; join the process group (nccl on CUDA, gloo on CPU) when there are several ranks."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(dev)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
        return cls(rank, world, local, dev)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches, as tensors/lists so `torch.load(weights_only=True)` accepts it."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_reduce_grads(params: list[nn.Parameter], env: DistEnv) -> None:
    """Average the gradients of `params` across ranks in one flat all-reduce (a parameter some rank left unused
    gets a zero gradient there first, so every rank reduces the same tensors)."""
    if not env.distributed:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=env.device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not live:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in live])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for p in live:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def average_buffers(modules: Iterable[nn.Module], env: DistEnv) -> None:
    """Average floating-point buffers (BatchNorm statistics) so every rank evaluates and saves one model."""
    if not env.distributed:
        return
    for module in {id(m): m for m in modules}.values():
        for buf in module.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf /= env.world_size
