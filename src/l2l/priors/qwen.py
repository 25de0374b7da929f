"""Qwen2.5-VL and Qwen2-VL as prior providers, in process through `transformers`, from a local checkpoint.

The image processor and the tokenizer are loaded separately and the image placeholder is expanded here
(one `<|image_pad|>` per merged patch, as the Qwen processors do): the combined `AutoProcessor` needs
torchvision for its video half, which an image-only provider has no use for.

Coordinates: Qwen2.5-VL answers in absolute pixels of the image as the processor resized it, which is
`image_grid_thw[1:] * patch_size`; Qwen2-VL answers in 0..1000. Both are mapped back to original pixels.
Confidence: exp(mean log p) of the generated answer tokens (`compute_transition_scores`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Sequence

import torch

from l2l.errors import CheckpointError, ConfigError
from l2l.priors.base import PROMPTS, PriorProvider, PriorRequest, confidence_from_logprobs
from l2l.priors.parse import parse_answer
from l2l.priors.prior import Prior

IMAGE_TOKEN = "<|image_pad|>"


def _chat_template(path: Path, tokenizer) -> str:
    """The checkpoint's chat template: the tokenizer's, else the processor's file."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    if (path / "chat_template.json").is_file():
        return json.loads((path / "chat_template.json").read_text(encoding="utf-8"))["chat_template"]
    raise CheckpointError(f"{path}: no chat template (tokenizer_config.json, chat_template.jinja or .json)")


class QwenVLProvider(PriorProvider):
    """Batched greedy generation with left padding; one prior per request."""

    def __init__(self, checkpoint: str | Path, family: str = "qwen2.5-vl", device: str = "auto",
                 dtype: str = "auto", max_new_tokens: int = 128, batch_size: int = 8,
                 prompt: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        if family not in PROMPTS:
            raise ConfigError(f"unknown Qwen family {family!r}; expected one of {sorted(PROMPTS)}")
        path = Path(checkpoint)
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a transformers checkpoint (no config.json)")
        self.name, self.family, self.batch_size = family, family, batch_size
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt or PROMPTS[family]
        if "{expression}" not in self.prompt:
            raise ConfigError("the prompt must contain '{expression}'")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        try:
            self.image_processor = AutoImageProcessor.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: cannot load the Qwen checkpoint ({exc})") from None
        self.template = _chat_template(path, self.tokenizer)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.stop_ids = {int(t) for t in eos + [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id]
                         if t is not None}
        self.patch_size = int(self.image_processor.patch_size)
        self.merge_size = int(self.image_processor.merge_size)
        self._mm_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters

    def _texts(self, batch: Sequence[PriorRequest], grid: torch.Tensor) -> list[str]:
        texts = []
        for req, thw in zip(batch, grid):
            messages = [{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": self.prompt.replace("{expression}", req.expression)}]}]
            text = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=True)
            n_tokens = int(thw.prod()) // self.merge_size**2
            texts.append(text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n_tokens, 1))
        return texts

    def _generate(self, inputs: dict[str, torch.Tensor], prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy answers: (new token ids [B, T], their log-probabilities [B, T]) on the CPU."""
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                  output_scores=True, return_dict_in_generate=True,
                                  pad_token_id=self.tokenizer.pad_token_id)
        scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        return out.sequences[:, prompt_len:].cpu(), scores.float().cpu()

    @torch.no_grad()
    def predict(self, batch: Sequence[PriorRequest]) -> list[Prior]:
        if not batch:
            return []
        vision = self.image_processor(images=[r.image for r in batch], return_tensors="pt")
        grid = vision["image_grid_thw"]
        enc = self.tokenizer(self._texts(batch, grid), return_tensors="pt", padding=True)
        inputs = {**enc, **vision}
        if self._mm_types:
            inputs["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).long()
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        new_tokens, scores = self._generate(inputs, enc["input_ids"].shape[1])
        priors = []
        for i, req in enumerate(batch):
            ids, lps = [], []
            for tok, lp in zip(new_tokens[i].tolist(), scores[i].tolist()):
                if tok in self.stop_ids:
                    break
                ids.append(tok)
                lps.append(lp)
            # Qwen2-VL's box markers are special tokens: keep them in the decoded answer.
            answer = self.tokenizer.decode(ids, skip_special_tokens=self.family == "qwen2.5-vl")
            h, w = req.image.shape[:2]
            frame = (float(grid[i, 2]) * self.patch_size, float(grid[i, 1]) * self.patch_size)
            parsed = parse_answer(answer, req.expression, w, h, json_frame=frame)
            conf = confidence_from_logprobs(lps)
            if parsed.ok:
                priors.append(Prior(req.sample_id, parsed.box, parsed.points, conf, answer, self.name))
            else:
                priors.append(Prior.failed(req.sample_id, parsed.reason, answer, self.name, conf, parsed.points))
        return priors
