"""The `openai` provider against a loopback chat-completions server: retries, 4xx, hangs, concurrency."""

from __future__ import annotations

import json
import math
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import l2l.priors.openai as openai_mod
from l2l.errors import ConfigError
from l2l.priors import DEFAULT_CONFIDENCE, PriorRequest
from l2l.priors.openai import OpenAIProvider, qwen_resized_size

Reply = tuple[int, dict[str, str], bytes]


def completion(content: str, logprobs: list[float] | None = None) -> Reply:
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": content},
                              "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": f"t{i}", "logprob": lp, "top_logprobs": []}
                                          for i, lp in enumerate(logprobs)]}
    body = {"id": "cmpl-1", "object": "chat.completion", "model": "m", "choices": [choice]}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


class Server:
    """Answers POST /v1/chat/completions with `script(request_index, body) -> Reply` and records requests."""

    def __init__(self, script: Callable[[int, dict], Reply]) -> None:
        self.script, self.requests, self.lock = script, [], threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    index = len(outer.requests)
                    outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, headers, payload = outer.script(index, body)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int, dict], Reply]], Server]]:
    servers: list[Server] = []

    def start(script: Callable[[int, dict], Reply]) -> Server:
        servers.append(Server(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the provider's backoff waits instead of sleeping (the server threads keep the real clock)."""
    waits: list[float] = []
    monkeypatch.setattr(openai_mod, "time", types.SimpleNamespace(sleep=waits.append))
    return waits


IMG = np.full((60, 100, 3), 127, np.uint8)
GOOD = '```json\n[{"bbox_2d": [0, 0, 56, 28], "point_2d": [28, 14], "label": "cup"}]\n```'


def _req(i: int = 0) -> PriorRequest:
    return PriorRequest(f"{i}:0", IMG, "the cup")


def test_request_shape_success_and_mapping_to_original_pixels(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-test")
    server = serve(lambda i, body: completion(GOOD, [-0.1, -0.3]))
    prov = OpenAIProvider(server.url, "qwen-vl", api_key_env="MY_KEY")
    [p] = prov.predict([_req()])
    assert qwen_resized_size(60, 100) == (56, 112)
    assert p.ok and p.box == pytest.approx([0.0, 0.0, 50.0, 30.0])  # (56, 28) of a 112x56 frame
    assert p.points == [pytest.approx((25.0, 15.0, 1))]
    assert p.confidence == pytest.approx(math.exp(-0.2))
    assert p.provider == "openai:qwen-vl" and p.raw == GOOD
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    content = req["body"]["messages"][0]["content"]
    assert req["body"]["model"] == "qwen-vl" and req["body"]["logprobs"] is True
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "the cup" in content[1]["text"]


def test_429_and_500_are_retried_with_backoff_honouring_retry_after(serve, sleeps: list[float]) -> None:
    replies = [(429, {"Retry-After": "7"}, b'{"error": "slow down"}'), (500, {}, b"oops"), completion(GOOD)]
    server = serve(lambda i, body: replies[i])
    [p] = OpenAIProvider(server.url, "m", backoff=0.5).predict([_req()])
    assert p.ok and len(server.requests) == 3
    assert sleeps == [7.0, 1.0]  # Retry-After, then backoff * 2**1
    assert p.confidence == DEFAULT_CONFIDENCE  # no logprobs in the answer


def test_retries_run_out_into_a_recorded_failure(serve, sleeps: list[float]) -> None:
    server = serve(lambda i, body: (503, {}, b"busy"))
    [p] = OpenAIProvider(server.url, "m", max_retries=2, backoff=1.0, max_backoff=1.5).predict([_req()])
    assert p.status == "failed" and p.reason == "transport error: request failed after 3 tries: HTTP 503" and p.transport_failure
    assert len(server.requests) == 3 and sleeps == [1.0, 1.5]


def test_400_is_not_retried(serve, sleeps: list[float]) -> None:
    server = serve(lambda i, body: (400, {}, b'{"error": {"message": "image too large"}}'))
    [p] = OpenAIProvider(server.url, "m").predict([_req()])
    assert p.status == "failed" and p.reason.startswith("request failed: HTTP 400") and "image too large" in p.reason
    assert len(server.requests) == 1 and sleeps == []


def test_a_hanging_server_times_out(serve, sleeps: list[float]) -> None:
    holder: dict[str, Server] = {}

    def hang(i: int, body: dict) -> Reply:
        holder["s"].release.wait(10)
        return completion(GOOD)

    server = holder["s"] = serve(hang)
    t0 = time.monotonic()
    [p] = OpenAIProvider(server.url, "m", timeout=0.3, max_retries=1).predict([_req()])
    assert time.monotonic() - t0 < 3.0
    assert p.status == "failed" and p.reason == "transport error: request failed after 2 tries: timeout"
    assert len(sleeps) == 1


def test_bad_responses_and_unusable_answers_are_failures_not_crashes(serve) -> None:
    replies = [(200, {}, b"<html>not json</html>"), (200, {}, b'{"choices": []}'),
               completion("I am not sure which cup you mean."), completion('{"bbox_2d": [5, 5, 5, 9]}')]
    server = serve(lambda i, body: replies[int(body["messages"][0]["content"][1]["text"].split("#")[1][0])])
    prov = OpenAIProvider(server.url, "m", prompt="find {expression}", concurrency=2)
    reqs = [PriorRequest(f"{i}:0", IMG, f"cup #{i}") for i in range(4)]
    out = prov.predict(reqs)
    assert [p.sample_id for p in out] == ["0:0", "1:0", "2:0", "3:0"]
    assert [p.reason for p in out] == ["request failed: bad response: not JSON",
                                       "bad response: no choices[0].message.content",
                                       "no box in answer", "degenerate box"]


def test_concurrency_is_bounded(serve) -> None:
    def slow(i: int, body: dict) -> Reply:
        time.sleep(0.15)
        return completion(GOOD)

    server = serve(slow)
    out = OpenAIProvider(server.url, "m", concurrency=3).predict([_req(i) for i in range(9)])
    assert all(p.ok for p in out) and len(server.requests) == 9
    assert 2 <= server.max_in_flight <= 3


def test_unreachable_server_is_a_failure(sleeps: list[float]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    [p] = OpenAIProvider(f"http://127.0.0.1:{port}/v1", "m", max_retries=1).predict([_req()])
    assert p.status == "failed" and "connection error" in p.reason


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        OpenAIProvider("localhost:8000", "m")
    with pytest.raises(ConfigError):
        OpenAIProvider("http://x/v1", "m", answer_format="yolo")


def test_transport_failures_are_asked_again_and_answer_failures_kept(root, tmp_path, serve, sleeps,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """Server down: exit 1 with the summary, nothing counted as done. Server back: those samples are asked again;
    a model-answer failure (no box) stays unless --retry-failed."""
    import socket

    from l2l.cli.main import main
    from l2l.priors import load_priors

    out = tmp_path / "priors.jsonl"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}/v1"

    def run(url: str, *extra: str) -> int:
        return main(["priors", "run", "--root", str(root), "--data", "shaperefs/unc/val", "--provider", "openai",
                     "--base-url", url, "--model", "m", "--max-retries", "0", "--limit", "3", "--out", str(out),
                     "--no-progress", *extra])

    assert run(down) == 1
    captured = capsys.readouterr()
    assert "transport" in captured.err and "Traceback" not in captured.err and "samples: 3" in captured.out
    assert all(p.transport_failure for p in load_priors(out).values())
    server = serve(lambda i, body: completion("I cannot find it.") if i == 0 else completion(GOOD))
    assert run(server.url) == 0
    priors = load_priors(out)  # one prior per sample, no duplicates
    assert len(priors) == 3 and len(server.requests) == 3
    assert sum(p.ok for p in priors.values()) == 2 and not any(p.transport_failure for p in priors.values())
    assert run(server.url) == 0 and len(server.requests) == 3  # the answer failure is kept
    assert run(server.url, "--retry-failed") == 0 and len(server.requests) == 4
    assert all(p.ok for p in load_priors(out).values())
