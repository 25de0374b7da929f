"""A prior provider for any OpenAI-compatible chat-completions server (vLLM, SGLang, ...).

This is how a 7B grounding model is run over 100k sentences: a server batches the requests; this client
keeps `concurrency` of them in flight. Errors are handled per request: 429 and 5xx (and timeouts and
dropped connections) are retried with exponential backoff, honouring `Retry-After`; any other 4xx is a
bad request that will not improve, so it is recorded as a failed prior at once.

Coordinates: `answer_format` says which frame the served model answers in: "qwen2.5-vl" (absolute pixels
of the image after Qwen's smart resize, recomputed here with the server's `min_pixels`/`max_pixels`),
"qwen2-vl" (0..1000), or "pixels" (original pixels).
"""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import cv2
import numpy as np

from l2l.errors import ConfigError
from l2l.priors.base import PROMPTS, PriorProvider, PriorRequest, confidence_from_logprobs
from l2l.priors.parse import parse_answer
from l2l.priors.prior import TRANSPORT_FAILURE, Prior

ANSWER_FORMATS = ("qwen2.5-vl", "qwen2-vl", "pixels")
# Qwen2-VL / Qwen2.5-VL image processor defaults (what a server uses unless configured otherwise).
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 28 * 28 * 1280
QWEN_FACTOR = 28  # patch size 14 x merge size 2


def qwen_resized_size(height: int, width: int, factor: int = QWEN_FACTOR, min_pixels: int = QWEN_MIN_PIXELS,
                      max_pixels: int = QWEN_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) the Qwen processors resize an image to: multiples of `factor`, area within bounds,
    aspect ratio kept as well as rounding allows."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def image_data_url(image: np.ndarray) -> str:
    """RGB uint8 image as a PNG base64 data URL (lossless: the model sees the pixels we have)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class OpenAIProvider(PriorProvider):
    """Chat-completions client with bounded concurrency, timeouts and retries."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 answer_format: str = "qwen2.5-vl", prompt: str | None = None, concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0,
                 max_tokens: int = 128, logprobs: bool = True, min_pixels: int = QWEN_MIN_PIXELS,
                 max_pixels: int = QWEN_MAX_PIXELS) -> None:
        if answer_format not in ANSWER_FORMATS:
            raise ConfigError(f"unknown answer format {answer_format!r}; expected one of {ANSWER_FORMATS}")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must start with http:// or https://, got {base_url!r}")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ConfigError("concurrency >= 1, max_retries >= 0 and timeout > 0 are required")
        self.name = f"openai:{model}"
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.answer_format = model, answer_format
        self.prompt = prompt or PROMPTS["qwen2-vl" if answer_format == "qwen2-vl" else "qwen2.5-vl"]
        self.api_key = os.environ.get(api_key_env, "")
        self.concurrency, self.batch_size = concurrency, concurrency * 4
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_tokens, self.logprobs = max_tokens, logprobs
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def _frame(self, height: int, width: int) -> tuple[float, float] | None:
        if self.answer_format == "qwen2.5-vl":
            h, w = qwen_resized_size(height, width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
            return float(w), float(h)
        return None  # qwen2-vl box tokens carry their own 0..1000 frame; "pixels" is the original frame

    def _body(self, req: PriorRequest) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(req.image)}},
                {"type": "text", "text": self.prompt.replace("{expression}", req.expression)}]}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        if self.logprobs:
            body["logprobs"] = True
        return json.dumps(body).encode("utf-8")

    def _post(self, data: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            if exc.code == 429 or exc.code >= 500:
                raise _Retryable(f"HTTP {exc.code}", _retry_after(exc.headers.get("Retry-After"))) from None
            raise ValueError(f"HTTP {exc.code}: {detail}" if detail else f"HTTP {exc.code}") from None
        except (socket.timeout, TimeoutError):
            raise _Retryable("timeout") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise _Retryable("timeout") from None
            raise _Retryable(f"connection error: {exc.reason}") from None
        except (ConnectionError, OSError) as exc:
            raise _Retryable(f"connection error: {exc}") from None
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise ValueError("bad response: not JSON") from None

    def _one(self, req: PriorRequest) -> Prior:
        data = self._body(req)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._post(data)
                break
            except _Retryable as exc:
                if attempt == self.max_retries:
                    return Prior.failed(req.sample_id, f"{TRANSPORT_FAILURE}request failed after {attempt + 1} "
                                        f"tries: {exc.reason}", provider=self.name)
                wait = exc.wait if exc.wait is not None else self.backoff * 2**attempt
                time.sleep(min(wait, self.max_backoff))
            except ValueError as exc:
                return Prior.failed(req.sample_id, f"request failed: {exc}", provider=self.name)
        try:
            choice = response["choices"][0]
            answer = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            return Prior.failed(req.sample_id, "bad response: no choices[0].message.content",
                                raw=json.dumps(response)[:2000], provider=self.name)
        logprobs = None
        lp_field = choice.get("logprobs")
        content = lp_field.get("content") if isinstance(lp_field, dict) else None
        if isinstance(content, list):
            logprobs = [t.get("logprob") for t in content if isinstance(t, dict)
                        and isinstance(t.get("logprob"), (int, float))]
        h, w = req.image.shape[:2]
        parsed = parse_answer(answer, req.expression, w, h, json_frame=self._frame(h, w))
        conf = confidence_from_logprobs(logprobs)
        if parsed.ok:
            return Prior(req.sample_id, parsed.box, parsed.points, conf, answer, self.name)
        return Prior.failed(req.sample_id, parsed.reason, answer, self.name, conf, parsed.points)

    def predict(self, batch: Sequence[PriorRequest]) -> list[Prior]:
        if len(batch) <= 1:
            return [self._one(r) for r in batch]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batch))) as pool:
            return list(pool.map(self._one, batch))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (the seconds form; an HTTP date falls back to backoff)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
