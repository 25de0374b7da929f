"""Soft proposals (box, gaussian, grabcut, tiny random SAM) and the on-disk ProposalBank."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from l2l.data.processor import Processor
from l2l.errors import CheckpointError, ConfigError, InputError
from l2l.evaluation.evaluator import proposal_batch
from l2l.priors import Prior
from l2l.proposals import ProposalBank, build_bank, make_proposal
from l2l.proposals import bank as bank_module
from l2l.proposals.sam import SamProposer


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A bright non-rectangular polygon (a concave arrow-like shape) on a noisy darker background."""
    rng = np.random.default_rng(seed)
    image = rng.normal(90, 18, (120, 160, 3)).clip(0, 255).astype(np.uint8)
    gt = np.zeros((120, 160), np.uint8)
    cv2.fillPoly(gt, [np.array([[30, 20], [130, 30], [70, 60], [120, 100], [25, 95]], np.int32)], 1)
    gt = gt.astype(bool)
    image[gt] = rng.normal(200, 18, (int(gt.sum()), 3)).clip(0, 255).astype(np.uint8)
    ys, xs = np.nonzero(gt)
    return image, gt, [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _iou(soft: np.ndarray, gt: np.ndarray) -> float:
    pred = soft > 0.5
    return float((pred & gt).sum() / (pred | gt).sum())


@pytest.mark.parametrize("method", ["box", "gaussian", "grabcut"])
def test_methods_give_unit_range_maps_at_image_size(method: str) -> None:
    image, _, box = _scene()
    prop = make_proposal(method, image, Prior("1:1", box, [(60.0, 80.0, 1)], 0.8))
    assert prop.map.shape == image.shape[:2] and prop.map.dtype == np.float32
    assert prop.map.min() >= 0.0 and prop.map.max() <= 1.0 and prop.map.max() > 0.5
    assert 0.0 < prop.quality <= 0.8  # bounded by the prior's confidence
    x1, y1, x2, y2 = (int(v) for v in box)
    assert prop.map[:, : x1 - 1].max() == 0.0 and prop.map[y2 + 1 :, :].max() == 0.0  # nothing outside the box


def test_failed_prior_gives_zero_map_and_zero_quality() -> None:
    image, _, _ = _scene()
    for prior in (Prior.failed("1:1", "no box in answer"), None):
        prop = make_proposal("gaussian", image, prior)
        assert prop.quality == 0.0 and not prop.map.any() and prop.reason.startswith("prior failed")
    degenerate = make_proposal("box", image, Prior("1:1", [500, 500, 600, 600], [], 0.9))  # off the image
    assert degenerate.quality == 0.0 and not degenerate.map.any()


def test_bad_method_and_bad_image_are_user_errors() -> None:
    image, _, box = _scene()
    with pytest.raises(ConfigError):
        make_proposal("snake", image, Prior("1:1", box))
    with pytest.raises(ConfigError):
        make_proposal("sam", image, Prior("1:1", box))  # no SAM proposer given
    with pytest.raises(InputError):
        make_proposal("box", image[..., 0], Prior("1:1", box))


def test_gaussian_is_sharpened_near_positive_and_suppressed_near_negative_points() -> None:
    image, _, box = _scene()
    plain = make_proposal("gaussian", image, Prior("1:1", box, [], 0.8)).map
    pos = make_proposal("gaussian", image, Prior("1:1", box, [(28.0, 98.0, 1)], 0.8)).map
    neg = make_proposal("gaussian", image, Prior("1:1", box, [(80.0, 60.0, 0)], 0.8)).map
    assert plain[98, 28] < 0.35 and pos[98, 28] > 0.95  # a corner of the box becomes foreground at the point
    assert pos[5:, :].sum() > plain.sum()
    assert plain[60, 80] > 0.9 and neg[60, 80] < 0.05  # the centre is cut out at the negative point
    # The blob's 0.5-contour is the inscribed ellipse: the box centre is ~1, the box corners < 0.5.
    assert plain[int(box[1]) + 1, int(box[0]) + 1] < 0.5


def test_grabcut_beats_the_box_on_a_non_rectangular_shape() -> None:
    image, gt, box = _scene()
    prior = Prior("1:1", box, [(50.0, 70.0, 1)], 0.9)
    ious = {m: _iou(make_proposal(m, image, prior).map, gt) for m in ("box", "gaussian", "grabcut")}
    assert ious["grabcut"] > ious["box"] + 0.15 and ious["grabcut"] > 0.85, ious
    grab = make_proposal("grabcut", image, prior)
    assert grab.reason is None
    assert grab.quality > make_proposal("box", image, prior).quality  # edges agree with GrabCut's outline
    # Soft edge: values strictly between 0 and 1 exist along the outline.
    assert ((grab.map > 0.1) & (grab.map < 0.9)).sum() > 20


def test_grabcut_falls_back_with_a_reason_when_it_cannot_run() -> None:
    image, _, _ = _scene()
    whole = Prior("1:1", [0, 0, image.shape[1], image.shape[0]], [], 0.5)  # no background left to model
    prop = make_proposal("grabcut", image, whole)
    assert prop.reason is not None and "fell back" in prop.reason
    assert prop.map.max() > 0.9 and prop.quality > 0.0


def _tiny_sam(path: Path) -> Path:
    """A randomly initialised SAM a few kB large, plus a SamProcessor built offline, saved to `path`."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    vision = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=8, mlp_dim=64, global_attn_indexes=[1], window_size=4,
                             num_pos_feats=8)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    SamModel(config).save_pretrained(path)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                   mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
                 ).save_pretrained(path)
    return path


class _Images:
    """A minimal dataset: `.samples` and `.image(i)`, counting decodes."""

    def __init__(self, images: dict[int, np.ndarray], sample_images: list[int]) -> None:
        self.images = images
        self.decodes = 0
        self.samples = [
            SimpleNamespace(sample_id=f"{i}:0", image_id=img, image_path=Path(f"img{img}.jpg"),
                            height=images[img].shape[0], width=images[img].shape[1])
            for i, img in enumerate(sample_images)
        ]

    def image(self, index: int) -> np.ndarray:
        self.decodes += 1
        return self.images[self.samples[index].image_id].copy()


def test_tiny_sam_end_to_end_embeds_each_image_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import SamModel

    ckpt = _tiny_sam(tmp_path / "sam")
    calls = {"n": 0}
    original = SamModel.get_image_embeddings

    def counting(self, pixel_values, **kwargs):  # noqa: ANN001
        calls["n"] += 1
        return original(self, pixel_values, **kwargs)

    monkeypatch.setattr(SamModel, "get_image_embeddings", counting)
    image, _, box = _scene()
    sam = SamProposer.from_pretrained(ckpt)
    a = make_proposal("sam", image, Prior("1:1", box, [(60.0, 80.0, 1)], 0.8), sam=sam, image_key=7)
    b = make_proposal("sam", image, Prior("1:2", [10, 10, 50, 40], [(20.0, 20.0, 1), (45.0, 35.0, 0)], 0.5),
                      sam=sam, image_key=7)
    assert calls["n"] == 1 and sam.embed_calls == 1
    for prop in (a, b):
        assert prop.map.shape == image.shape[:2] and prop.map.dtype == np.float32
        assert 0.0 <= prop.map.min() <= prop.map.max() <= 1.0 and 0.0 <= prop.quality <= 0.8
    assert not np.array_equal(a.map, b.map)  # different prompts, different masks

    # Through the bank: 3 sentences on 2 images -> 2 decodes, 2 embeddings.
    calls["n"] = 0
    data = _Images({0: image, 1: image[::-1].copy()}, [0, 1, 0])
    priors = {s.sample_id: Prior(s.sample_id, box, [], 0.7) for s in data.samples}
    bank = build_bank(data, priors, "sam", 32, tmp_path / "cache", progress=False, sam_checkpoint=ckpt)
    assert len(bank) == 3 and calls["n"] == 2 and data.decodes == 2
    assert bank.get("0:0").shape == (32, 32)


def test_missing_sam_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        SamProposer.from_pretrained(tmp_path / "nowhere")


def test_bank_reuses_cache_and_recomputes_only_changed_priors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image, gt, box = _scene()
    data = _Images({0: image, 1: image[:, ::-1].copy()}, [0, 0, 1])
    priors = {"0:0": Prior("0:0", box, [], 0.9, provider="sim"), "1:0": Prior("1:0", box, [(60, 80, 1)], 0.6),
              "2:0": Prior.failed("2:0", "no box")}
    bank = build_bank(data, priors, "grabcut", 48, tmp_path, progress=False)
    assert len(bank) == 3 and data.decodes == 2  # the two sentences of image 0 share one decode
    first = bank.get("0:0")
    assert first.shape == (48, 48) and first.dtype == np.float32 and 0.0 <= first.min() <= first.max() <= 1.0
    assert np.abs(first - cv2.resize(make_proposal("grabcut", image, priors["0:0"]).map, (48, 48))).max() <= 1 / 255
    assert bank.quality("2:0") == 0.0 and not bank.get("2:0").any() and bank.reason("2:0").startswith("prior failed")
    assert bank.has_prior("0:0") and bank.has_prior("1:0") and not bank.has_prior("2:0")
    proposal, has = proposal_batch(bank, ["0:0", "2:0"], Processor(48, tokenizer=None))
    assert has.tolist() == [True, False] and proposal.shape == (2, 1, 48, 48)
    assert bank.confidence("1:0") == pytest.approx(0.6)

    made = {"n": 0}
    real = bank_module.make_proposal

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        made["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(bank_module, "make_proposal", counting)
    again = build_bank(data, priors, "grabcut", 48, tmp_path, progress=False)  # a new run: all cached
    assert made["n"] == 0 and np.array_equal(again.get("0:0"), first)

    priors["0:0"] = Prior("0:0", [box[0], box[1], box[2] - 30, box[3]], [], 0.9, provider="sim")
    changed = build_bank(data, priors, "grabcut", 48, tmp_path, progress=False)
    assert made["n"] == 1 and not np.array_equal(changed.get("0:0"), first)
    priors["1:0"] = Prior("1:0", box, [(60, 80, 1)], 0.61)  # confidence alone also invalidates
    build_bank(data, priors, "grabcut", 48, tmp_path, progress=False)
    assert made["n"] == 2
    reopened = ProposalBank.open(tmp_path / "grabcut-s48")
    assert reopened.confidence("1:0") == pytest.approx(0.61) and np.array_equal(reopened.get("0:0"), changed.get("0:0"))
    with pytest.raises(ConfigError):
        ProposalBank(tmp_path / "grabcut-s48", 64, "grabcut")  # same folder, other side


def test_bank_update_moves_accepted_pixels_towards_the_teacher(tmp_path: Path) -> None:
    bank = ProposalBank(tmp_path / "b", 8, "box")
    q0 = np.full((20, 20), 0.2, np.float32)
    bank.put("a", q0, 0.5, 0.9, key="k")
    teacher = np.ones((8, 8), np.float32)
    accept = np.zeros((8, 8), bool)
    accept[:4] = True
    q1 = bank.update("a", teacher, accept, mu=0.5)
    assert np.allclose(q1[:4], 0.6, atol=1 / 255) and np.allclose(q1[4:], 0.2, atol=1 / 255)
    bank.save()
    stored = ProposalBank.open(tmp_path / "b").get("a")
    assert np.allclose(stored, q1, atol=1 / 255)
    with pytest.raises(ConfigError):
        bank.update("a", teacher, accept, mu=1.5)
    with pytest.raises(ConfigError):
        bank.update("a", np.ones((4, 4)), accept, mu=0.1)


def test_bank_grows_beyond_its_initial_capacity(tmp_path: Path) -> None:
    bank = ProposalBank(tmp_path / "g", 4, "box")
    for i in range(150):  # initial capacity is 64 rows
        bank.put(str(i), np.full((4, 4), i / 149.0, np.float32), 0.1, 0.1, key=str(i))
    bank.save()
    back = ProposalBank.open(tmp_path / "g")
    assert len(back) == 150 and back.get("149").min() == 1.0 and back.get("0").max() == 0.0
    assert back.get("75") == pytest.approx(np.full((4, 4), round(75 / 149 * 255) / 255), abs=1e-6)


def test_prepare_bank_simulates_priors_once_and_reuses_them(tmp_path: Path) -> None:
    from refer_fixtures import make_refer

    from l2l.data.dataset import RESDataset
    from l2l.proposals import prepare_bank

    root = make_refer(tmp_path / "data")
    bank, priors = prepare_bank(root, "refcoco/unc/train", "gaussian", 32, tmp_path / "cache", progress=False)
    ids = RESDataset(root, "refcoco/unc/train").sample_ids()
    assert sorted(priors) == sorted(ids) and sorted(bank.ids()) == sorted(ids)
    assert all(p.provider == "simulated-mllm" for p in priors.values())
    again, priors2 = prepare_bank(root, "refcoco/unc/train", "gaussian", 32, tmp_path / "cache", progress=False)
    assert priors2 == priors and np.array_equal(again.get(ids[0]), bank.get(ids[0]))
    with pytest.raises(ConfigError):
        prepare_bank(root, "refcoco/unc/train", "gaussian", 32, tmp_path / "cache", provider="openai")
    with pytest.raises(KeyError):  # the bank's missing-sample error is a KeyError for mapping-style callers
        bank.get("no-such-sample")


def test_evolved_maps_survive_a_rebuild_unless_asked_to_restart(tmp_path: Path) -> None:
    image, _, box = _scene()
    data = _Images({0: image}, [0])
    priors = {"0:0": Prior("0:0", box, [], 0.9)}
    bank = build_bank(data, priors, "box", 16, tmp_path, progress=False)
    original = bank.get("0:0")
    bank.update("0:0", np.zeros((16, 16), np.float32), np.ones((16, 16), bool), mu=1.0)
    bank.save()
    kept = build_bank(data, priors, "box", 16, tmp_path, progress=False)
    assert kept.evolved("0:0") == 1 and not kept.get("0:0").any()  # a resumed run continues from evolved maps
    fresh = build_bank(data, priors, "box", 16, tmp_path, progress=False, keep_evolved=False)
    assert fresh.evolved("0:0") == 0 and np.array_equal(fresh.get("0:0"), original)


def test_bank_pickles_without_copying_its_rows(tmp_path: Path) -> None:
    import pickle

    bank = ProposalBank(tmp_path / "p", 64, "box")
    for i in range(10):
        bank.put(str(i), np.full((64, 64), i / 9.0, np.float32), 0.5, 0.5, key=str(i))
    bank.save()
    blob = pickle.dumps(bank)
    assert len(blob) < 64 * 64  # the rows stay in the file; a worker re-maps it
    clone = pickle.loads(blob)
    assert np.array_equal(clone.get("9"), bank.get("9"))
    bank.update("9", np.zeros((64, 64), np.float32), np.ones((64, 64), bool), mu=1.0)
    assert not clone.get("9").any()  # both map the same file: the worker sees self-evolution at once


def test_a_bank_stored_below_the_model_side_reads_and_evolves_at_the_model_side(tmp_path: Path) -> None:
    disk = np.zeros((96, 96), np.float32)
    cv2.circle(disk, (48, 48), 30, 1.0, -1)
    full = ProposalBank(tmp_path / "full", 48, "box")
    small = ProposalBank(tmp_path / "small", 16, "box", read_size=48)
    for bank in (full, small):
        bank.put("a", disk, 0.5, 0.9, key="k")
    assert small.get("a").shape == (48, 48) and small.stored("a").shape == (16, 16)
    inter = ((small.get("a") > 0.5) & (full.get("a") > 0.5)).sum()
    union = ((small.get("a") > 0.5) | (full.get("a") > 0.5)).sum()
    assert inter / union > 0.95  # a smooth upsample of a 3x smaller map keeps the mask
    assert (tmp_path / "small" / "maps.u8").stat().st_size * 9 == (tmp_path / "full" / "maps.u8").stat().st_size
    accept = np.zeros((48, 48), bool)
    accept[:, :24] = True  # the left half becomes the teacher's (all ones)
    q = small.update("a", np.ones((48, 48), np.float32), accept, mu=1.0)
    assert q.shape == (16, 16) and np.allclose(q[:, :8], 1.0) and np.allclose(q[:, 8:], small.stored("a")[:, 8:])
    small.save()
    assert ProposalBank.open(tmp_path / "small", read_size=48).get("a").shape == (48, 48)
