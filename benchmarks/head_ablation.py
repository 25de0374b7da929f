"""Which output head of a trained with-priors network moves the proposal's edges?

Scores a run's last network on val with priors, then again with the refine head, the stride-4 correction, the trust
gate (forced to 1) or several of them switched off; "all off" is the proposal itself (the do-no-harm init).

    python benchmarks/head_ablation.py runs/dev/pl_dice0 --root data/shaperefs
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from l2l.data.dataset import DataId, RESDataset
from l2l.evaluation.evaluator import evaluate
from l2l.model.modeling import RESModel
from l2l.proposals import BankSpec
from l2l.training.config import DataConfig, load_config


def switched_off(net: RESModel, refine: bool, correction: bool, gate: bool) -> RESModel:
    """A copy with the chosen heads at their initial, do-nothing values."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        heads = ([net.refine.head] if refine and net.refine is not None else []) + (
            [net.decoder.prior_head] if correction else [])
        for head in heads:
            head.weight.zero_()
            head.bias.zero_()
        if gate and net.decoder.gate_head is not None:
            net.decoder.gate_head.weight.zero_()
            net.decoder.gate_head.bias.fill_(50.0)
    return net


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory with last/ and config.yaml")
    p.add_argument("--root", type=Path, default=Path("data/shaperefs"))
    p.add_argument("--split", default="val")
    p.add_argument("--cache", type=Path, default=Path("benchmarks/results/grid/cache"))
    a = p.parse_args()
    net = RESModel.from_pretrained(a.run / "last").eval()
    dcfg = DataConfig(**load_config(a.run / "config.yaml", [])["data"])
    data_id = DataId(dcfg.dataset, dcfg.split_by, a.split)
    bank, _ = BankSpec.from_data(dcfg, net.config.image_size).prepare(data_id, a.cache)
    ds = RESDataset(a.root, data_id)
    variants = {"trained": (False, False, False), "no refine": (True, False, False),
                "no correction": (False, True, False), "gate = 1": (False, False, True),
                "all off (the proposal)": (True, True, True)}
    rows = {}
    for name, flags in variants.items():
        m = evaluate(switched_off(net, *flags), ds, net.processor(), bank=bank, use_priors=True, batch_size=32,
                     progress=False)
        rows[name] = {k: round(float(m[k]), 2) for k in ("mIoU", "P@0.5", "P@0.9")}
        print(f"{name:24s} mIoU={m['mIoU']:.1f} P@0.5={m['P@0.5']:.1f} P@0.9={m['P@0.9']:.1f}", flush=True)
    print(json.dumps({"run": str(a.run), "prior_out_scale": float(net.prior_out_scale), "rows": rows}))


if __name__ == "__main__":
    main()
