"""`Prior`: what a multimodal model said about one sentence, in original image pixels.

One prior per sample (`sample_id = "<ref_id>:<sent_id>"`), one JSON object per line in a priors file, so a
file can be appended to, resumed, grepped and diffed. A failed answer is still a prior (status "failed"
plus the reason), so a run records every sentence exactly once and the report can count failures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from l2l.errors import DataError

STATUSES = ("ok", "failed")

# Used when a provider gives no token log-probabilities: an uninformative middle value, so that
# confidence-weighted code treats such priors as neither trusted nor distrusted.
DEFAULT_CONFIDENCE = 0.5
# Reason prefix of a failure that says nothing about the sample (server down, timeouts, 429/5xx after the retries):
# the next run asks again instead of keeping the failure.
TRANSPORT_FAILURE = "transport error: "


@dataclass
class Prior:
    """A box / points prior for one sample; `box` is [x1, y1, x2, y2] in original pixels or None."""

    sample_id: str
    box: list[float] | None
    points: list[tuple[float, float, int]] = field(default_factory=list)
    confidence: float = DEFAULT_CONFIDENCE
    raw: str = ""
    provider: str = ""
    status: str = "ok"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def transport_failure(self) -> bool:
        """A failure of the connection, not of the model's answer: worth asking again on the next run."""
        return self.status == "failed" and self.reason.startswith(TRANSPORT_FAILURE)

    @classmethod
    def failed(cls, sample_id: str, reason: str, raw: str = "", provider: str = "",
               confidence: float = 0.0, points: list[tuple[float, float, int]] | None = None) -> "Prior":
        """A recorded failure: no box, the reason kept for the run summary and the report."""
        return cls(sample_id, None, list(points or []), confidence, raw, provider, "failed", reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "box": None if self.box is None else [round(float(v), 2) for v in self.box],
            "points": [[round(float(x), 2), round(float(y), 2), int(lab)] for x, y, lab in self.points],
            "confidence": round(float(self.confidence), 6),
            "raw": self.raw,
            "provider": self.provider,
            "status": self.status,
            "reason": self.reason,
        }

    def to_json(self) -> str:
        """One line of JSON (no newline inside: `raw` is escaped by json)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "prior") -> "Prior":
        """Validate and build; `where` names the file and line in the error message."""
        if not isinstance(d, dict) or not isinstance(d.get("sample_id"), str):
            raise DataError(f"{where}: not a prior object with a string 'sample_id'")
        status = d.get("status", "ok")
        if status not in STATUSES:
            raise DataError(f"{where}: status must be one of {STATUSES}, got {status!r}")
        box = d.get("box")
        if box is not None:
            if (not isinstance(box, (list, tuple)) or len(box) != 4
                    or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
                raise DataError(f"{where}: 'box' must be null or four finite numbers, got {box!r}")
            box = [float(v) for v in box]
        if status == "ok" and box is None:
            raise DataError(f"{where}: status 'ok' needs a box")
        points = []
        for p in d.get("points") or []:
            if (not isinstance(p, (list, tuple)) or len(p) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p[:2])
                    or p[2] not in (0, 1) or isinstance(p[2], bool)):
                raise DataError(f"{where}: each point must be [x, y, label] with numbers x, y and label 0 or 1, "
                                f"got {p!r}")
            points.append((float(p[0]), float(p[1]), int(p[2])))
        conf = d.get("confidence", DEFAULT_CONFIDENCE)
        if not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
            raise DataError(f"{where}: 'confidence' must be a number in [0, 1], got {conf!r}")
        return cls(d["sample_id"], box, points, float(conf), str(d.get("raw", "")),
                   str(d.get("provider", "")), status, str(d.get("reason", "")))

    @classmethod
    def from_json(cls, line: str, where: str = "prior") -> "Prior":
        try:
            d = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
        return cls.from_dict(d, where)


def box_iou(a: list[float] | None, b: list[float] | None) -> float:
    """IoU of two [x1, y1, x2, y2] boxes; 0 when either is missing."""
    if a is None or b is None:
        return 0.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
