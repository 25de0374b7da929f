"""Contracts of the RES network on tiny random encoders (no weights, CPU, seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from l2l.errors import CheckpointError, ConfigError, InputError
from l2l.model import ModelConfig, RESModel
from l2l.model.modeling import training_card

S = 64
B = 3


def tiny(**overrides: object) -> ModelConfig:
    fields = {"vision": "tiny", "text": "tiny", "image_size": S, "dim": 16, "decoder_dim": 16}
    return ModelConfig(**{**fields, **overrides})


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (B, 8), generator=g)
    ids[:, 0] = 101
    mask = torch.ones(B, 8, dtype=torch.long)
    mask[1, 5:] = 0
    ids[1, 5:] = 0
    return {"pixel_values": torch.randn(B, 3, S, S, generator=g), "input_ids": ids, "attention_mask": mask}


def proposal(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 1, S, S, generator=g)


@pytest.fixture(scope="module")
def model() -> RESModel:
    torch.manual_seed(0)
    return RESModel(tiny()).eval()


# ----------------------------------------------------------------------------------------------- config
def test_config_round_trip(tmp_path):
    cfg = tiny(guidance_dropout=0.5, use_sesm=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    assert ModelConfig.from_json(path) == cfg
    assert json.loads(path.read_text())["guidance_dropout"] == 0.5


def test_config_unknown_key_names_nearest():
    with pytest.raises(ConfigError, match="guidance_dropout"):
        ModelConfig.from_dict({"guidance_dropuot": 0.1})


@pytest.mark.parametrize("bad", [{"vision": "resnet"}, {"text": "hf:"}, {"image_size": 100},
                                 {"guidance_dropout": 1.5}, {"dim": 30, "fusion_heads": 4},
                                 {"use_sesm": "yes"}, {"max_tokens": 0}, {"guidance_dropout": "0.3"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ModelConfig(**bad)


# ----------------------------------------------------------------------------------------------- forward
def test_shapes_with_and_without_proposal(model):
    with torch.no_grad():
        out = model(**inputs(), proposal=proposal())
        assert out["logits"].shape == (B, 1, S, S)
        assert out["refined"].shape == (B, 1, S, S)
        free = model(**inputs())
        assert free["logits"].shape == (B, 1, S, S) and free["refined"].shape == (B, 1, S, S)
        assert torch.isfinite(out["logits"]).all() and torch.isfinite(free["refined"]).all()


def test_proposal_changes_prediction_and_flag_means_absent(model):
    with torch.no_grad():
        a = model(**inputs(), proposal=proposal(1))
        b = model(**inputs(), proposal=proposal(2))
        none = model(**inputs())
        flagged = model(**inputs(), proposal=proposal(1), has_proposal=torch.zeros(B, dtype=torch.bool))
        mixed = model(**inputs(), proposal=proposal(1), has_proposal=torch.tensor([True, False, True]))
    assert not torch.allclose(a["logits"], b["logits"])
    assert not torch.allclose(a["refined"], b["refined"])
    # has_proposal=False everywhere is exactly the prior-free path
    assert torch.allclose(flagged["logits"], none["logits"], atol=1e-6)
    assert torch.allclose(mixed["logits"][1], none["logits"][1], atol=1e-5)
    assert torch.allclose(mixed["logits"][0], a["logits"][0], atol=1e-5)


def test_refined_starts_from_the_proposal():
    torch.manual_seed(0)
    fresh = RESModel(tiny()).eval()
    q = torch.zeros(B, 1, S, S)
    q[:, :, 16:48, 8:40] = 1.0
    with torch.no_grad():
        r = fresh(**inputs(), proposal=q)["refined"]
    # at initialisation r_s = logit(q) (the learned correction starts at zero), so it reproduces q
    agree = ((r > 0).float() == q).float().mean()
    assert agree > 0.8


def test_refine_head_equals_upsample_then_concat():
    """The head applies part of its input conv before upsampling (speed); the result must be the textbook one."""
    import torch.nn.functional as F

    from l2l.model.modeling import RefineHead

    torch.manual_seed(0)
    head = RefineHead(decoder_dim=12, dim=8)
    torch.nn.init.normal_(head.head.weight)  # starts at zero: make the blocks matter
    head.train()
    feat, logits, pixels = torch.randn(2, 12, 8, 8), torch.randn(2, 1, 32, 32), torch.randn(2, 3, 32, 32)
    up = F.interpolate(head.reduce(feat), size=(32, 32), mode="bilinear", align_corners=False)
    expected = logits + head.head(head.blocks(head.inp(torch.cat([up, pixels, torch.tanh(logits / 4.0)], dim=1))))
    assert torch.allclose(head(feat, logits, pixels), expected, atol=1e-5)


def test_guidance_dropout_only_in_training():
    torch.manual_seed(0)
    net = RESModel(tiny(guidance_dropout=1.0))
    x, q = inputs(), proposal()
    net.train()
    with torch.no_grad():
        dropped = net(**x, proposal=q)["logits"]
        absent = net(**x)["logits"]
    assert torch.allclose(dropped, absent, atol=1e-6)
    net.eval()
    with torch.no_grad():
        kept = net(**x, proposal=q)["logits"]
        absent_eval = net(**x)["logits"]
        again = net(**x, proposal=q)["logits"]
    assert not torch.allclose(kept, absent_eval)
    assert torch.equal(kept, again)


def test_partial_guidance_dropout_is_per_sample():
    torch.manual_seed(0)
    net = RESModel(tiny(guidance_dropout=0.5)).train()
    flags = net._guidance(4000, torch.zeros(1), None, torch.device("cpu")).flatten()
    assert 0.4 < flags.mean().item() < 0.6


def test_gradients_reach_every_sesm_parameter():
    torch.manual_seed(0)
    net = RESModel(tiny(guidance_dropout=0.0)).train()
    out = net(**inputs(), proposal=proposal(), has_proposal=torch.tensor([True, False, True]))
    (out["logits"].square().mean() + out["refined"].square().mean()).backward()
    for name, p in net.sesm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in net.text.parameters()), "frozen text must get no gradient"
    assert net.vision.stages[0][0][0].weight.grad.abs().sum() > 0


def test_without_sesm_there_is_no_prior_input():
    torch.manual_seed(0)
    net = RESModel(tiny(use_sesm=False)).eval()
    with torch.no_grad():
        a = net(**inputs(), proposal=proposal(1))
        b = net(**inputs())
    assert a["refined"] is None and b["refined"] is None
    assert torch.equal(a["logits"], b["logits"])
    assert not any("sesm" in k for k in net.state_dict())


def test_bad_inputs_raise_input_error(model):
    x = inputs()
    with pytest.raises(InputError, match="proposal"):
        model(**x, proposal=torch.rand(B, 1, S // 2, S // 2))
    with pytest.raises(InputError, match="multiples of 32"):
        model(torch.randn(B, 3, 48, 48), x["input_ids"], x["attention_mask"])


# ----------------------------------------------------------------------------------------------- text encoder
def test_frozen_text_cache_matches_uncached_and_ignores_padding():
    torch.manual_seed(0)
    cached = RESModel(tiny()).text
    uncached = RESModel(tiny(text_cache_size=0)).text
    uncached.load_state_dict(cached.state_dict())
    x = inputs()
    w1, s1 = cached(x["input_ids"], x["attention_mask"])
    assert len(cached._cache) == B
    w2, s2 = uncached(x["input_ids"], x["attention_mask"])
    assert torch.allclose(w1, w2, atol=1e-5) and torch.allclose(s1, s2, atol=1e-5)
    # the same sentences padded to a different length hit the cache and give the same features
    ids = torch.cat([x["input_ids"], torch.zeros(B, 4, dtype=torch.long)], 1)
    mask = torch.cat([x["attention_mask"], torch.zeros(B, 4, dtype=torch.long)], 1)
    w3, s3 = cached(ids, mask)
    assert len(cached._cache) == B
    assert torch.allclose(w3[:, :8], w1) and torch.equal(s3, s1)
    assert w3[1, 5:].abs().sum() == 0


def test_text_cache_is_bounded():
    torch.manual_seed(0)
    enc = RESModel(tiny(text_cache_size=2)).text
    x = inputs()
    enc(x["input_ids"], x["attention_mask"])
    assert len(enc._cache) == 2


def test_fine_tuned_text_gets_gradients():
    torch.manual_seed(0)
    net = RESModel(tiny(freeze_text=False)).train()
    out = net(**inputs(), proposal=proposal())
    free = net(**inputs())  # with a proposal the zero-initialised correction heads pass no gradient at step 0
    (out["logits"].mean() + out["refined"].mean() + free["logits"].mean()).backward()
    # every trainable parameter takes part (DDP without find_unused_parameters)
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused
    assert any(p.grad.abs().sum() > 0 for p in net.text.parameters())
    assert not net.text._cache


def test_frozen_vision_keeps_weights_and_bn_stats():
    torch.manual_seed(0)
    net = RESModel(tiny(freeze_vision=True)).train()
    before = {k: v.clone() for k, v in net.vision.state_dict().items()}
    net(**inputs())["logits"].mean().backward()
    assert all(p.grad is None for p in net.vision.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.vision.state_dict().items())


# ----------------------------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(model, tmp_path):
    card = {"data": "shaperefs/default/train", "label_ratio": 0.01, "method": "l2l", "metrics": {"mIoU": 71.25}}
    model.save_pretrained(tmp_path / "ckpt", card=card)
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "config.json", "README.md",
                                                               "training.json"}
    assert training_card(tmp_path / "ckpt") == card
    readme = (tmp_path / "ckpt" / "README.md").read_text()
    assert "l2l" in readme and "0.01" in readme and "71.25" in readme
    loaded = RESModel.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        for q in (proposal(), None):
            a, b = model(**inputs(), proposal=q), loaded(**inputs(), proposal=q)
            assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["refined"], b["refined"])


def test_missing_checkpoint_files_raise(model, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        RESModel.from_pretrained(tmp_path / "nowhere")
    model.save_pretrained(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        RESModel.from_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        RESModel.from_pretrained(tmp_path / "b")


def test_checkpoint_that_does_not_match_its_config_raises(model, tmp_path):
    model.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["use_sesm"] = False
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        RESModel.from_pretrained(tmp_path / "c")
    (tmp_path / "c" / "config.json").write_text('{"vison": "tiny"}')
    with pytest.raises(CheckpointError, match="vision"):
        RESModel.from_pretrained(tmp_path / "c")


def test_processor_matches_config(model):
    proc = model.processor()
    assert proc.image_size == S and proc.max_tokens == model.config.max_tokens
    batch = proc.texts(["the left cup"])
    assert batch["input_ids"].shape == (1, model.config.max_tokens)


def test_decoder_width_may_differ_from_fusion_width():
    torch.manual_seed(0)
    net = RESModel(tiny(decoder_dim=8)).eval()
    with torch.no_grad():
        out = net(**inputs(), proposal=proposal())
    assert out["logits"].shape == (B, 1, S, S)
    assert net.decoder.lateral[0].out_channels == 8
