"""The evidence protocol in the methods: independent seeds, no pseudo-label for a failed prior, SemiRES's rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from l2l.methods import METHODS, build_method
from l2l.proposals.candidates import match_candidates
from l2l.training.config import resolve_config
from methods_standin import StandInModel, make_batch

PSEUDO_LABEL_METHODS = ("prior_label", "fixmatch", "semires", "semires_mllm", "l2l", "l2l_no_rple")


def _method_cfg(name: str, *overrides: str) -> dict:
    cfg = resolve_config({"data": {"proposal": "gaussian"}}, [f"method.name={name}", *overrides])
    return {k: v for k, v in cfg["method"].items() if k != "name"}


def test_seeds_draw_different_strong_views_unless_the_method_seed_is_set() -> None:
    pixels = torch.randn(2, 3, 32, 32)
    views = {}
    for seed in (0, 1):
        cfg = _method_cfg("fixmatch", f"seed={seed}")
        assert cfg["seed"] == seed
        views[seed] = build_method("fixmatch", StandInModel(), cfg, 10).views.strong(pixels)
    assert not torch.allclose(views[0], views[1])
    # an explicit method.seed wins over the run's seed
    assert _method_cfg("fixmatch", "seed=1", "method.seed=0")["seed"] == 0
    pinned = build_method("fixmatch", StandInModel(), _method_cfg("fixmatch", "seed=1", "method.seed=0"), 10)
    assert torch.allclose(pinned.views.strong(pixels), views[0])


def _loss_unsup(name: str, batch_u: dict, step: int) -> float:
    torch.manual_seed(0)
    model = StandInModel().eval()  # BatchNorm in eval: one sample's pixels cannot move another's logits
    cfg = {"semires": {"burn_in": 0.0}, "semires_mllm": {"burn_in": 0.0},
           "fixmatch": {"threshold": 0.5}, "l2l_no_rple": {"fixed_threshold": 0.5},
           "l2l": {"fixed_threshold": 0.5}}.get(name, {})  # an untrained stand-in is never 0.95 sure
    method = build_method(name, model, cfg, 100)
    out = method.train_step(make_batch(3, labelled=True, seed=1), batch_u, step)
    return out.logs["loss_unsup"]


@pytest.mark.parametrize("name", PSEUDO_LABEL_METHODS)
def test_a_sample_without_a_proposal_contributes_nothing_to_loss_u(name: str) -> None:
    batch_u = make_batch(4, labelled=False, seed=2, prefix="u")  # its last sample's prior failed
    assert not bool(batch_u["has_proposal"][-1])
    changed = make_batch(4, labelled=False, seed=2, prefix="u")
    changed["pixel_values"] = changed["pixel_values"].clone()
    changed["pixel_values"][-1] = 5.0 * torch.randn(3, 32, 32)  # whatever the teacher and student now say there
    changed["candidates"] = changed["candidates"].clone()
    changed["candidates"][-1] = torch.rand_like(changed["candidates"][-1])
    base = _loss_unsup(name, batch_u, 60)
    assert base > 0
    assert _loss_unsup(name, changed, 60) == pytest.approx(base, rel=1e-6, abs=1e-7)
    # ...while the same change on a sample that has a proposal does move the loss (the check can fail)
    other = make_batch(4, labelled=False, seed=2, prefix="u")
    other["pixel_values"] = other["pixel_values"].clone()
    other["pixel_values"][0] = 5.0 * torch.randn(3, 32, 32)
    assert _loss_unsup(name, other, 60) != pytest.approx(base, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", ("supervised", *PSEUDO_LABEL_METHODS))
def test_every_trained_method_prices_its_edits_on_every_row(name: str) -> None:
    """`method.edit_l1` adds `edit_l1 * mean |edit|` over every row the student ran on, labelled and unlabelled."""
    batch_l = make_batch(3, labelled=True, seed=1)
    batch_u = make_batch(4, labelled=False, seed=2, prefix="u")
    cfg = {"semires": {"burn_in": 0.0}, "semires_mllm": {"burn_in": 0.0}}.get(name, {})
    outs = {}
    for price in (0.0, 2.0):
        torch.manual_seed(0)
        method = build_method(name, StandInModel().eval(), {**cfg, "edit_l1": price}, 100)
        outs[price] = method.train_step(batch_l, None if name == "supervised" else batch_u, 60)
    edit = outs[2.0].logs["edit_abs"]
    assert edit > 0.1 and edit == pytest.approx(outs[0.0].logs["edit_abs"])
    assert float((outs[2.0].loss - outs[0.0].loss).detach()) == pytest.approx(2.0 * edit, rel=1e-4)
    if name != "supervised":  # the unlabelled rows count: the mean is not the labelled rows' alone
        torch.manual_seed(0)
        alone = build_method("supervised", StandInModel().eval(), {"edit_l1": 2.0}, 100).train_step(batch_l, None, 60)
        assert alone.logs["edit_abs"] != pytest.approx(edit)


def _square(size: int, x1: int, y1: int, x2: int, y2: int) -> torch.Tensor:
    m = torch.zeros(size, size)
    m[y1:y2, x1:x2] = 1.0
    return m


def test_iom_takes_the_best_candidate_above_half_iou_and_cpi_unions_parts() -> None:
    teacher = _square(20, 2, 2, 12, 12)[None, None].bool()  # 100 px
    left = _square(20, 2, 2, 7, 12)  # half of the teacher mask (IoU 0.5, inside it)
    right = _square(20, 7, 2, 12, 12)
    near = _square(20, 3, 2, 12, 12)  # IoU 0.9
    far = _square(20, 14, 14, 20, 20)
    cand = torch.stack([left, near, far])[None] * 0.9
    target, matched = match_candidates(teacher, cand, torch.ones(1, 3, dtype=torch.bool), "iom")
    assert bool(matched[0]) and torch.equal(target[0, 0], cand[0, 1])
    # nothing above 0.5 IoU -> unmatched
    _, matched = match_candidates(teacher, torch.stack([left, far])[None], torch.ones(1, 2, dtype=torch.bool), "iom")
    assert not bool(matched[0])
    # CPI: the two halves are parts (|S n P| / |S| = 1 > 0.7); far is neither part nor cover
    parts = torch.stack([left, right, far])[None]
    target, matched = match_candidates(teacher, parts, torch.ones(1, 3, dtype=torch.bool), "cpi")
    assert bool(matched[0]) and torch.equal(target[0, 0] > 0.5, teacher[0, 0])
    # an invalid (padding) candidate is never matched
    _, matched = match_candidates(teacher, cand, torch.tensor([[False, False, True]]), "iom")
    assert not bool(matched[0])


def test_semires_burn_in_is_supervised_and_then_the_teacher_is_the_student() -> None:
    torch.manual_seed(0)
    method = build_method("semires", StandInModel(), {"burn_in": 0.5}, 4)
    opt = torch.optim.SGD(method.model.parameters(), lr=0.1)
    batch_l, batch_u = make_batch(3, seed=1), make_batch(4, labelled=False, seed=2, prefix="u")
    for step in range(2):
        out = method.train_step(batch_l, batch_u, step)
        assert "loss_unsup" not in out.logs
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_optimizer_step(step)
    out = method.train_step(batch_l, batch_u, 2)
    assert "loss_unsup" in out.logs
    for t, s in zip(method.teacher.module.parameters(), method.model.parameters()):
        assert torch.equal(t, s)


def test_candidates_read_boxes_never_masks(root: Path, tmp_path: Path) -> None:
    from l2l.proposals.candidates import prepare_candidates

    copy = tmp_path / "data"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".l2l_cache"))
    path = copy / "shaperefs" / "instances.json"
    instances = json.loads(path.read_text())
    per_image: dict[int, int] = {}
    for ann in instances["annotations"]:
        ann["segmentation"] = {"size": [1, 1], "counts": "garbage"}  # any read of a mask would fail
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    path.write_text(json.dumps(instances))
    bank = prepare_candidates(copy, "shaperefs/unc/val", 32, tmp_path / "cache")
    assert len(bank) > 0
    for image_id in bank.by_image:
        maps = bank.get(image_id)
        assert len(maps) == per_image[image_id] and all(m.shape == (32, 32) for m in maps)
    # cached: a second call computes nothing and returns the same maps
    again = prepare_candidates(copy, "shaperefs/unc/val", 32, tmp_path / "cache")
    first = next(iter(bank.by_image))
    assert all((a == b).all() for a, b in zip(bank.get(first), again.get(first)))


def test_matched_labels_replace_a_proposal_by_the_candidate_it_matches(root: Path, tmp_path: Path) -> None:
    """`data.label_init=iom`: a proposal with a candidate at IoU > 0.5 becomes that candidate, the others stay; on
    ShapeRefs the labels get closer to the hidden masks; the bank is built once."""
    import numpy as np

    from l2l.data.dataset import DataId, RESDataset
    from l2l.evaluation.pseudo import hidden_label_scorer
    from l2l.proposals import BankSpec
    from l2l.proposals.candidates import matched_labels, prepare_candidates

    did = DataId.parse("shaperefs/unc/train")
    cache = tmp_path / "cache"
    bank, _ = BankSpec(root=str(root), method="box", size=32).prepare(did, cache)
    cands = prepare_candidates(root, did, 32, cache)
    ds = RESDataset(root, did)
    labels = matched_labels(bank, cands, ds, "iom")

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / max(1, (a | b).sum()))

    replaced = 0
    for s in ds.samples:
        q, lab = bank.get(s.sample_id), labels.get(s.sample_id)
        best = max(cands.get(s.image_id), key=lambda c: iou(c > 0.5, q > 0.5))
        if np.array_equal(q, lab):
            assert iou(best > 0.5, q > 0.5) <= 0.5 or not bank.has_prior(s.sample_id)
            continue
        replaced += 1
        assert iou(best > 0.5, q > 0.5) > 0.5 and np.abs(lab - best).max() <= 1 / 255 + 1e-6
    assert 0 < replaced < len(ds.samples)
    score = hidden_label_scorer(root, did, [s.sample_id for s in ds.samples])
    assert score(labels)["mIoU"] > score(bank)["mIoU"] + 5  # a box is far from a mask; the matched object is not
    built = (labels.path / "index.json").stat().st_mtime_ns
    assert (matched_labels(bank, cands, ds, "iom").path / "index.json").stat().st_mtime_ns == built


def test_registry_has_every_grid_method() -> None:
    from l2l.experiments.grid import ALL_METHODS

    assert set(ALL_METHODS) <= set(METHODS) and "prior_label" in ALL_METHODS and "semires_mllm" in ALL_METHODS
