"""Turning an MLLM's free-text answer into a box and points in original image pixels.

Grounding models answer in two dialects:
- Qwen2.5-VL: JSON such as `[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": "cup"}]` in absolute
  pixels of the image *as the processor resized it* (`json_frame` = that resized width and height);
- Qwen2-VL: `<|object_ref_start|>cup<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` in 0..1000
  (servers that skip special tokens leave the bare `(x1,y1),(x2,y2)`, accepted too).
Real answers wrap these in prose or markdown fences, list several objects, get cut off mid-JSON, or point
outside the image. `parse_answer` never raises: anything unusable becomes a reason string that the caller
records as a failed prior, because one odd answer among 100k must not stop a run.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

EMPTY = "empty answer"
NO_BOX = "no box in answer"
MALFORMED = "malformed box"
OUTSIDE = "box outside image"
DEGENERATE = "degenerate box"

QWEN2_FRAME = 1000.0  # Qwen2-VL box tokens are in 0..1000 of the image side
MAX_ANSWER_CHARS = 20000  # longer answers are runaway generations; parse only their start
_BOX_KEYS = ("bbox_2d", "bbox", "box", "box_2d")
_POINT_KEYS = ("point_2d", "point")
_NUM = r"[-+]?\d+(?:\.\d+)?"
_BOX_TOKENS = re.compile(
    r"(?:<\|object_ref_start\|>(.*?)<\|object_ref_end\|>)?\s*<\|box_start\|>(.*?)<\|box_end\|>", re.S)
_PAIR_BOX = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
_LOOSE_BOX = re.compile(r"""['"]?(?:bbox_2d|bbox|box_2d)['"]?\s*:\s*\[([^\[\]]*)\]""")
_FENCE = re.compile(r"```[a-zA-Z]*")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class Parsed:
    """The chosen box/points in original pixels, or `box=None` and the failure `reason`."""

    box: list[float] | None
    points: list[tuple[float, float, int]] = field(default_factory=list)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.box is not None


@dataclass
class _Candidate:
    box: Any            # raw value as found (validated later)
    frame: tuple[float, float] | None  # coordinate frame (w, h); None = original pixels
    points: list[Any] = field(default_factory=list)
    label: str | None = None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _json_values(text: str) -> list[Any]:
    """Every JSON array/object embedded in `text`, left to right (prose and fences around them ignored).

    A value that fails to decode is skipped one character at a time, so the complete objects inside a
    truncated list are still found.
    """
    text = _FENCE.sub(" ", text)
    dec = json.JSONDecoder()
    out, i = [], 0
    starts = re.compile(r"[\[{]")
    while True:
        m = starts.search(text, i)
        if m is None:
            return out
        try:
            val, end = dec.raw_decode(text, m.start())
        except (json.JSONDecodeError, RecursionError):
            i = m.start() + 1
            continue
        out.append(val)
        i = end


def _walk(value: Any, frame: tuple[float, float] | None, out: list[_Candidate], depth: int = 0) -> None:
    if depth > 8:
        return
    if isinstance(value, dict):
        key = next((k for k in _BOX_KEYS if k in value), None)
        if key is not None:
            pts = []
            for pk in _POINT_KEYS:
                if pk in value:
                    pts.append(value[pk])
            if isinstance(value.get("points"), list):
                pts.extend(value["points"])
            label = value.get("label")
            out.append(_Candidate(value[key], frame, pts, label if isinstance(label, str) else None))
            return
        for v in value.values():
            _walk(v, frame, out, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _walk(v, frame, out, depth + 1)


def _candidates(text: str, json_frame: tuple[float, float] | None) -> list[_Candidate]:
    q2 = (QWEN2_FRAME, QWEN2_FRAME)
    cands: list[_Candidate] = []
    for m in _BOX_TOKENS.finditer(text):
        pair = _PAIR_BOX.search(m.group(2))
        cands.append(_Candidate(list(pair.groups()) if pair else m.group(2), q2, [], m.group(1)))
    if cands:
        return cands
    values = _json_values(text)
    for v in values:
        _walk(v, json_frame, cands)
    if cands:
        return cands
    for m in _LOOSE_BOX.finditer(text):  # malformed JSON: single quotes, missing braces, cut-off answers
        cands.append(_Candidate(m.group(1).split(","), json_frame))
    if cands:
        return cands
    for v in values:  # a bare [x1, y1, x2, y2] list
        if isinstance(v, list) and len(v) == 4 and all(_as_float(x) is not None for x in v):
            cands.append(_Candidate(v, json_frame))
    if cands:
        return cands
    for m in _PAIR_BOX.finditer(text):  # Qwen2-VL answer with its special tokens skipped by the server
        cands.append(_Candidate(list(m.groups()), q2))
    return cands


def _scale(frame: tuple[float, float] | None, width: int, height: int) -> tuple[float, float]:
    if frame is None:
        return 1.0, 1.0
    return width / frame[0], height / frame[1]


def _check_box(c: _Candidate, width: int, height: int) -> tuple[list[float] | None, str]:
    raw = c.box
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        return None, MALFORMED
    vals = [_as_float(v) for v in raw]
    if any(v is None for v in vals):
        return None, MALFORMED
    sx, sy = _scale(c.frame, width, height)
    x1, x2 = sorted((vals[0] * sx, vals[2] * sx))
    y1, y2 = sorted((vals[1] * sy, vals[3] * sy))
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return None, OUTSIDE
    x1, x2 = max(0.0, x1), min(float(width), x2)
    y1, y2 = max(0.0, y1), min(float(height), y2)
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None, DEGENERATE
    return [x1, y1, x2, y2], ""


def _points(c: _Candidate, width: int, height: int) -> list[tuple[float, float, int]]:
    """Positive points (label 1), mapped and clipped into the image; unusable ones dropped."""
    sx, sy = _scale(c.frame, width, height)
    out = []
    for p in c.points:
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            x, y = _as_float(p[0]), _as_float(p[1])
            if x is not None and y is not None:
                out.append((min(max(x * sx, 0.0), width - 1.0), min(max(y * sy, 0.0), height - 1.0), 1))
    return out


def label_score(label: str | None, expression: str) -> float:
    """Share of the label's words that occur in the expression (0 when there is no label)."""
    if not label:
        return 0.0
    words = set(_WORD.findall(label.lower()))
    if not words:
        return 0.0
    return len(words & set(_WORD.findall(expression.lower()))) / len(words)


def parse_answer(text: str, expression: str, width: int, height: int,
                 json_frame: tuple[float, float] | None = None) -> Parsed:
    """Parse `text` into a box in original pixels (`width` x `height`).

    `json_frame` is the (width, height) of the frame JSON coordinates are given in (Qwen2.5-VL: the
    processor's resized image); None means original pixels. With several usable boxes, the one whose
    label best matches the expression wins, else the first.
    """
    if not isinstance(text, str) or not text.strip():
        return Parsed(None, [], EMPTY)
    text = text[:MAX_ANSWER_CHARS]
    cands = _candidates(text, json_frame)
    if not cands:
        return Parsed(None, [], NO_BOX)
    checked = [(c, *_check_box(c, width, height)) for c in cands]
    usable = [(c, box) for c, box, _ in checked if box is not None]
    if not usable:
        c0, _, reason = checked[0]
        return Parsed(None, _points(c0, width, height), reason)
    best, best_box = usable[0]
    best_score = label_score(best.label, expression)
    for c, box in usable[1:]:
        s = label_score(c.label, expression)
        if s > best_score:
            best, best_box, best_score = c, box, s
    return Parsed(best_box, _points(best, width, height), "")


INVERTED = "inverted box"


def check_against_image(prior: Any, width: int, height: int) -> Any:
    """The same checks as for parsed answers, for a prior from any provider (a JSONL file, a custom provider): a
    box must be four finite numbers x1 < x2, y1 < y2 overlapping the image (clipped to it) and at least 1 px wide
    and tall, else the prior becomes a recorded failure; points that are not finite numbers inside the image are
    dropped. Returns the (possibly new) prior."""
    import dataclasses
    import math

    if prior.status != "ok" or prior.box is None:
        return prior
    vals = [_as_float(v) for v in prior.box] if isinstance(prior.box, (list, tuple)) and len(prior.box) == 4 else None
    reason = ""
    if vals is None or any(v is None or not math.isfinite(v) for v in vals):
        reason = MALFORMED
    else:
        x1, y1, x2, y2 = vals
        if x1 > x2 or y1 > y2:
            reason = INVERTED
        elif x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            reason = OUTSIDE
        else:
            x1, x2, y1, y2 = max(0.0, x1), min(float(width), x2), max(0.0, y1), min(float(height), y2)
            if x2 - x1 < 1.0 or y2 - y1 < 1.0:
                reason = DEGENERATE
    if reason:
        return type(prior).failed(prior.sample_id, f"{reason} (checked against the {width}x{height} image)",
                                  prior.raw, prior.provider, prior.confidence)
    points = []
    for p in prior.points or []:
        xy = [_as_float(v) for v in p[:2]] if isinstance(p, (list, tuple)) and len(p) >= 3 else [None]
        if all(v is not None and math.isfinite(v) for v in xy) and 0 <= xy[0] < width and 0 <= xy[1] < height:
            points.append((xy[0], xy[1], int(p[2])))
    return dataclasses.replace(prior, box=[x1, y1, x2, y2], points=points)
