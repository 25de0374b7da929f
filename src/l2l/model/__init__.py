"""The RES network (docs/method.md, stage 2): encoders, pixel-word fusion, SESM, decoder, checkpoints."""

from l2l.model.config import ModelConfig
from l2l.model.modeling import SESM, Decoder, PixelWordAttention, RESModel
from l2l.model.text import TextEncoder
from l2l.model.vision import EfficientNetLite0, HFBackbone, TinyEncoder, build_vision

__all__ = ["ModelConfig", "RESModel", "SESM", "Decoder", "PixelWordAttention", "TextEncoder",
           "EfficientNetLite0", "HFBackbone", "TinyEncoder", "build_vision"]
