"""Qwen2.5-VL and Qwen2-VL providers end to end on tiny random checkpoints built offline.

The checkpoints are real `transformers` Qwen2-VL / Qwen2.5-VL models (hidden size 32, one or two layers,
a tiny vision tower) saved with a byte-level tokenizer made here with `tokenizers` (Qwen's special tokens,
a Qwen-style chat template) and the Qwen2-VL image processor, then loaded by the provider from disk.
Their answers are nonsense: they must come back as recorded failures, never as exceptions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from l2l.cli.main import main
from l2l.errors import CheckpointError
from l2l.priors import PriorRequest, read_priors
from l2l.priors.qwen import QwenVLProvider
from tests.refer_fixtures import make_refer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>", "<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=TEMPLATE)


def build_tiny_qwen(path: Path, family: str) -> Path:
    """Save a random tiny Qwen2-VL ("qwen2-vl") or Qwen2.5-VL ("qwen2.5-vl") checkpoint to `path`."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    if family == "qwen2-vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **special))
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                      fullatt_block_indexes=[1], window_size=56)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["qwen2.5-vl", "qwen2-vl"])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return request.param, build_tiny_qwen(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def provider(checkpoint: tuple[str, Path]) -> QwenVLProvider:
    family, path = checkpoint
    return QwenVLProvider(path, family=family, device="cpu", dtype="float32", max_new_tokens=8, batch_size=3)


def _requests() -> list[PriorRequest]:
    rng = np.random.default_rng(0)
    sizes = [(60, 90), (100, 50), (150, 210)]  # different sizes: different numbers of image tokens, left padding
    return [PriorRequest(f"{k}:{k}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8), text)
            for k, ((h, w), text) in enumerate(zip(sizes, ["the red cup", "dog on the left", "a man"]))]


def test_tiny_model_nonsense_becomes_recorded_failures(provider: QwenVLProvider) -> None:
    reqs = _requests()
    priors = provider.predict(reqs)
    assert [p.sample_id for p in priors] == [r.sample_id for r in reqs]
    for p, r in zip(priors, reqs):
        assert p.provider == provider.family and isinstance(p.raw, str)
        assert 0.0 < p.confidence < 0.5  # exp(mean log p) of a random 270-token model: about 1/270 per token
        if p.ok:  # a random model may, very rarely, emit something box-like: then it must be a valid box
            h, w = r.image.shape[:2]
            assert 0 <= p.box[0] < p.box[2] <= w and 0 <= p.box[1] < p.box[3] <= h
        else:
            assert p.reason
    # left padding and the attention mask: an answer does not depend on its batch mates
    alone = [provider.predict([r])[0] for r in reqs[:2]]
    assert [p.raw for p in alone] == [p.raw for p in priors[:2]]
    assert [p.confidence for p in alone] == pytest.approx([p.confidence for p in priors[:2]], abs=1e-4)
    assert provider.predict([]) == []


def test_realistic_answer_maps_back_through_the_processor_resize(provider: QwenVLProvider,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The generation step replaced by a scripted answer; prompt building, the image processor's grid,
    decoding, stop tokens, parsing and the coordinate mapping are the provider's own."""
    req = _requests()[2]  # 150 x 210: resized by the processor (max 28*28*16 pixels) to an 84 x 112 frame
    grid = provider.image_processor(images=[req.image], return_tensors="pt")["image_grid_thw"][0]
    fh, fw = int(grid[1]) * provider.patch_size, int(grid[2]) * provider.patch_size
    assert (fh, fw) == (84, 112)
    if provider.family == "qwen2.5-vl":
        answer = 'Sure.\n```json\n[{"bbox_2d": [28, 21, 84, 63], "point_2d": [56, 42], "label": "man"}]\n```'
        expected = [28 * 210 / fw, 21 * 150 / fh, 84 * 210 / fw, 63 * 150 / fh]
    else:
        answer = "<|object_ref_start|>a man<|object_ref_end|><|box_start|>(250,250),(750,500)<|box_end|>"
        expected = [52.5, 37.5, 157.5, 75.0]
    ids = provider.tokenizer(answer, add_special_tokens=False)["input_ids"]
    eos, pad = provider.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    tokens = torch.tensor([ids + [eos, pad, pad]])
    logprobs = torch.full(tokens.shape, -0.05)
    logprobs[0, len(ids):] = -30.0  # after the answer: must not count
    monkeypatch.setattr(provider, "_generate", lambda inputs, prompt_len: (tokens, logprobs))
    [p] = provider.predict([req])
    assert p.ok and p.raw == answer
    assert p.box == pytest.approx(expected)
    assert p.confidence == pytest.approx(math.exp(-0.05))
    if provider.family == "qwen2.5-vl":
        assert p.points == [pytest.approx((56 * 210 / fw, 42 * 150 / fh, 1))]


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json"):
        QwenVLProvider(tmp_path, family="qwen2.5-vl")


def test_cli_run_with_a_tiny_checkpoint(checkpoint: tuple[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    family, path = checkpoint
    root = make_refer(tmp_path / "data")
    out = tmp_path / "priors.jsonl"
    assert main(["priors", "run", "--root", str(root), "--data", "refcoco/unc/val", "--provider", family,
                 "--checkpoint", str(path), "--device", "cpu", "--max-new-tokens", "4", "--out", str(out),
                 "--no-progress"]) == 0
    priors = read_priors(out)
    assert len(priors) == 3 and all(p.provider == family for p in priors)
    assert "written now: 3" in capsys.readouterr().out
