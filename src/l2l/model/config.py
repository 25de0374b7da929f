"""`ModelConfig`: every knob of the RES network, one default and one line of doc each.

The config is plain data (JSON-able), so a checkpoint directory can rebuild the network without any code
outside `l2l.model` and without pickles.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from l2l.errors import ConfigError

VISION_CHOICES = ("efficientnet-lite0", "tiny")
TEXT_CHOICES = ("minilm", "tiny")


MAX_IMAGE_SIZE = 2048  # a larger square input is a typo, not a model: it would exhaust memory before any check
PRIOR_FUSIONS = ("add", "gate")

@dataclass
class ModelConfig:
    """Configuration of `RESModel` (see docs/architecture.md, "Model contract")."""

    vision: str = "efficientnet-lite0"
    """Visual encoder: `efficientnet-lite0` (ImageNet weights from its package), `tiny` (random) or `hf:PATH`."""
    text: str = "minilm"
    """Text encoder: `minilm` (all-MiniLM-L6-v2 from its package), `tiny` (random BERT) or `hf:PATH`."""
    image_size: int = 128
    """Side of the square network input (images are squashed to it by the Processor)."""
    max_tokens: int = 20
    """Tokens per expression, padding/truncation length (LAVT uses 20)."""
    dim: int = 64
    """Width of the fused multimodal features, SESM and decoder."""
    fusion_heads: int = 2
    """Attention heads of the pixel-word attention."""
    decoder_dim: int = 64
    """Width of the decoder's top-down path."""
    refine_dim: int = 16
    """Width of the full-resolution refinement head (image + proposal + decoder); 0 = stride-4 output only."""
    freeze_text: bool = True
    """Keep the text encoder fixed (no grad, features cached per sentence); False fine-tunes it."""
    freeze_vision: bool = False
    """Keep the visual encoder fixed (BN in eval mode, no grad)."""
    pretrained: bool = True
    """Initialise packaged encoders (`efficientnet-lite0`, `minilm`) from their shipped weights."""
    use_sesm: bool = True
    """Self-Evolving Segmentation Module: proposal guidance at every stage; False = no prior input (ablation)."""
    prior_fusion: str = "add"
    """How the with-priors output uses the proposal: `add` = s logit(q) + c (a stride-4 correction, upsampled);
    `gate` = g s logit(q) + (1 - g) c (a stride-4 trust gate g, starting at 0.95): where g stays high the
    proposal's own sub-pixel edges survive, where a correction adds to them they move."""
    guidance_dropout: float = 0.3
    """Training-time probability of dropping a sample's proposal, so the network also works prior-free."""
    text_cache_size: int = 8192
    """Sentences whose frozen text features are kept in memory (least recently used are evicted)."""
    channels_last: bool = True
    """Run the convolutional parts in channels-last memory format (faster on CPU for depthwise convs)."""
    hf_out_features: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3", "stage4"])
    """Stage names requested from a `hf:` backbone (`AutoBackbone` out_features), finest first."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail early with a message naming the field, instead of deep inside the network."""
        for name, value, choices in (("vision", self.vision, VISION_CHOICES), ("text", self.text, TEXT_CHOICES)):
            if not isinstance(value, str) or not (value in choices or (value.startswith("hf:") and len(value) > 3)):
                raise ConfigError(f"model.{name}={value!r}: expected one of {', '.join(choices)} or hf:PATH")
        for name in ("image_size", "max_tokens", "dim", "fusion_heads", "decoder_dim", "text_cache_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "text_cache_size" else 1):
                raise ConfigError(f"model.{name}={value!r}: expected a positive integer")
        for name in ("freeze_text", "freeze_vision", "pretrained", "use_sesm", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name}={getattr(self, name)!r}: expected true or false")
        if isinstance(self.refine_dim, bool) or not isinstance(self.refine_dim, int) or self.refine_dim < 0:
            raise ConfigError(f"model.refine_dim={self.refine_dim!r}: expected 0 (off) or a positive integer")
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(f"model.image_size={self.image_size}: at most {MAX_IMAGE_SIZE} (LAVT uses 480)")
        if self.image_size % 32:
            raise ConfigError(f"model.image_size={self.image_size}: must be a multiple of 32 (the coarsest stride)")
        if self.dim % self.fusion_heads:
            raise ConfigError(f"model.dim={self.dim} is not divisible by model.fusion_heads={self.fusion_heads}")
        if self.prior_fusion not in PRIOR_FUSIONS:
            raise ConfigError(f"model.prior_fusion={self.prior_fusion!r}: expected one of {', '.join(PRIOR_FUSIONS)}")
        p = self.guidance_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"model.guidance_dropout={self.guidance_dropout!r}: expected a probability in [0, 1]")
        if len(self.hf_out_features) != 4:
            raise ConfigError(f"model.hf_out_features={self.hf_out_features!r}: expected four stage names")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> "ModelConfig":
        """Build from a dict; an unknown key is a `ConfigError` that suggests the nearest valid key."""
        valid = [f.name for f in fields(cls)]
        for key in data:
            if key not in valid:
                near = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"
                raise ConfigError(f"{source}: unknown key {key!r}{hint}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: file not found") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))
