"""The EMA teacher and the weak/strong views shared by every teacher-student method (docs/method.md, stage 3).

The teacher is an exponential moving average of the student: slower and smoother, so its predictions on the
weak view are better pseudo-labels than the student's own. The student sees a strong photometric view of the
*same* pixels, so a teacher map is a pixel-aligned target without warping. A horizontal flip, which must swap
left/right words in the text, is done by the data pipeline before collation and therefore hits both views.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from l2l.data.augment import strong_photometric


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (or the network itself), so teacher weights match the student's names."""
    return getattr(model, "module", model)


class EMATeacher:
    """`theta_t <- m * theta_t + (1 - m) * theta_s` after each student step; buffers (BN statistics) are copied.

    With `warmup` the momentum is `min(m, 1 - 1/(step + 1))` (Mean Teacher): early on the student moves fast
    and a 0.999 average would keep the teacher near its random start for thousands of steps.
    `momentum=0` makes the teacher the previous-step student (UniMatch's online pseudo-labels).
    """

    def __init__(self, student: nn.Module, momentum: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(unwrap(student))
        self.module.eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    def momentum_at(self, step: int) -> float:
        """The momentum used after student step `step` (0-based)."""
        if not self.warmup:
            return self.momentum
        return min(self.momentum, 1.0 - 1.0 / (step + 1.0))

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """Move the teacher towards the student; returns the momentum used (for logging)."""
        m = self.momentum_at(step)
        source = unwrap(student)
        self.follow_device(source)
        # Frozen student weights never change, so their teacher copies are already equal: skip them (a frozen
        # text encoder is most of the parameters). One fused lerp over the rest.
        pairs = [(t, s) for t, s in zip(self.module.parameters(), source.parameters(), strict=True) if s.requires_grad]
        if pairs:
            torch._foreach_lerp_([t for t, _ in pairs], [s.detach() for _, s in pairs], 1.0 - m)
        for t_buf, s_buf in zip(self.module.buffers(), source.buffers(), strict=True):
            t_buf.copy_(s_buf)
        return m

    @torch.no_grad()
    def reset(self, student: nn.Module) -> None:
        """Make the teacher an exact copy of the student (SemiRES: the burn-in model becomes the teacher)."""
        self.module.load_state_dict(unwrap(student).state_dict())

    def follow_device(self, student: nn.Module) -> None:
        """Move the teacher where the student is (the trainer may move the student after the method is built)."""
        s_param = next(unwrap(student).parameters(), None)
        t_param = next(self.module.parameters(), None)
        if s_param is not None and t_param is not None and s_param.device != t_param.device:
            self.module.to(s_param.device)

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Teacher forward in eval mode (no dropout, no guidance dropout) without gradients."""
        self.module.eval()
        return self.module(*args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state)


class Views:
    """Strong photometric views of a batch's pixels, reproducible from one seed (the generator state is saved
    with the method, so a resumed run continues the same stream)."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def strong(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The student's view: `strong_photometric` on the weak pixels (geometry unchanged, so aligned)."""
        return strong_photometric(pixel_values, self.generator)
