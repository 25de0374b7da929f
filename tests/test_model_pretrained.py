"""Encoders with real weights (shipped in registry packages) and `hf:` backbones from local directories."""

from __future__ import annotations

import shutil

import pytest
import skimage.data
import torch

from l2l.data.processor import Processor
from l2l.model import ModelConfig, RESModel
from l2l.model.vision import EfficientNetLite0

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def test_efficientnet_lite0_imagenet_weights_see_a_cat():
    net = EfficientNetLite0(with_head=True)
    net.load_imagenet()
    net.eval()
    pixels = Processor(224, tokenizer=None).images([skimage.data.chelsea()])
    with torch.no_grad():
        probs = net.classify(pixels).softmax(-1)[0]
    assert 281 <= int(probs.argmax()) <= 285  # ImageNet's domestic cat classes
    assert probs[281:286].sum() > 0.8


def test_efficientnet_lite0_stage_strides():
    net = EfficientNetLite0().eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 128, 128))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 32, 32), (40, 16, 16), (112, 8, 8), (320, 4, 4)]


@pytest.fixture(scope="module")
def default_model() -> RESModel:
    torch.manual_seed(0)
    return RESModel(ModelConfig()).eval()


def test_default_model_minilm(default_model, tmp_path):
    assert default_model.text.dim == 384
    proc = default_model.processor()
    batch = proc([skimage.data.chelsea()] * 2, ["the cat", "a cat on the sofa"])
    q = torch.zeros(2, 1, 128, 128)
    q[:, :, 32:96, 32:96] = 1.0
    with torch.no_grad():
        out = default_model(**batch, proposal=q)
        words, sentence = default_model.text(batch["input_ids"], batch["attention_mask"])
    assert out["logits"].shape == (2, 1, 128, 128) and out["refined"].shape == (2, 1, 128, 128)
    # MiniLM is trained for sentence similarity: the two cat sentences are close, a random vector is not
    assert torch.cosine_similarity(sentence[0], sentence[1], dim=0) > 0.5
    # a frozen MiniLM is not stored in the checkpoint (re-read from its package) and still round-trips
    default_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").stat().st_size < 40e6
    loaded = RESModel.from_pretrained(tmp_path)
    with torch.no_grad():
        again = loaded(**batch, proposal=q)
    assert torch.allclose(out["logits"], again["logits"], atol=1e-5)


def _tiny_hf_backbone(kind: str, directory) -> str:
    from transformers import AutoBackbone, ConvNextConfig, SwinConfig

    if kind == "swin":
        config = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                            window_size=4, out_features=STAGES)
    else:
        config = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], out_features=STAGES)
    AutoBackbone.from_config(config).save_pretrained(directory)
    return f"hf:{directory}"


def _tiny_hf_bert(directory) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    from l2l.model.text import minilm_path

    BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(directory)
    return f"hf:{directory}"


@pytest.mark.parametrize("kind", ["swin", "convnext"])
def test_hf_backbones_from_local_directory(kind, tmp_path):
    torch.manual_seed(0)
    vision = _tiny_hf_backbone(kind, tmp_path / kind)
    text = _tiny_hf_bert(tmp_path / "bert") if kind == "swin" else "tiny"
    model = RESModel(ModelConfig(vision=vision, text=text, image_size=64, dim=16, decoder_dim=16)).eval()
    x = {"pixel_values": torch.randn(2, 3, 64, 64), "input_ids": torch.randint(1000, 2000, (2, 6)),
         "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    with torch.no_grad():
        feats = model.vision(x["pixel_values"])
        out = model(**x, proposal=torch.rand(2, 1, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    assert out["logits"].shape == (2, 1, 64, 64) and out["refined"].shape == (2, 1, 64, 64)
    model.save_pretrained(tmp_path / "ckpt")
    # the checkpoint keeps the hf architecture configs and tokenizer: it loads without the original directories
    shutil.rmtree(tmp_path / kind)
    shutil.rmtree(tmp_path / "bert", ignore_errors=True)
    loaded = RESModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(model(**x)["logits"], loaded(**x)["logits"])
    assert loaded.processor().texts(["a cup"])["input_ids"].shape == (1, loaded.config.max_tokens)
