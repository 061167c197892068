"""A real OpenAI chat-completions HTTP server on 127.0.0.1 that misbehaves on request.

Tests (pool, serving) point an OpenAI-compatible client at it and tell it, per model name or per
request (header `X-Fake-Mode`), how to answer:

    ok          200 with a reply and usage (after `delay_s`)
    no_usage    200 without the `usage` field
    429         429 with `Retry-After: <retry_after>`
    500         500 with an error body
    slow        answers ok after `delay_s` (default 5 s): past a short client timeout
    malformed   200 whose body is not JSON
    incomplete  200 JSON without `choices`
    drop        closes the connection without answering
    echo_key    401 whose error body echoes the bearer token so that it crosses byte 200
    echo_key_ok 200 whose reply text echoes the bearer token (a successful reply carrying a key)
    echo_key_mixed  echo_key and echo_key_ok by turns (odd requests 401, even ones 200)
    huge_usage  200 reporting 10^12 prompt and completion tokens
    overlong    200 reporting 10x max_tokens completion tokens
    huge_reply  200 whose body is `size_bytes` long (default 20 MB), a valid reply
    redirect    307 to `location` (another origin, say), which a client must not follow

`times=N` applies a mode to the next N requests of that model only, then it answers ok again.
Every request is counted and logged (time, model, mode, whether it carried a bearer token, its
Idempotency-Key header) when it arrives; `done` and `http` are set once the server has answered it
(what a provider would bill, whether or not the client was still there to read it).

Replies are deterministic: "<model> answers: <first words of the last user message>"; usage
counts whitespace words (prompt: all message contents; completion: the reply, capped at
max_tokens).

In-process:      with FakeOpenAIServer() as srv: srv.url ... srv.set("m", "429", times=2)
As a fixture:    from fake_openai_server import fake_openai  (function-scoped, reset after use)
As a process:    python tests/fake_openai_server.py --port 0 --delay 0.02  (prints the URL)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

MODES = ("ok", "no_usage", "429", "500", "slow", "malformed", "incomplete", "drop", "echo_key",
         "echo_key_ok", "echo_key_mixed", "huge_usage", "overlong", "huge_reply", "redirect")


@dataclass
class Behaviour:
    mode: str = "ok"
    times: int | None = None  # None: every request; N: the next N requests, then "ok"
    retry_after: float = 1.0
    delay_s: float | None = None  # None: the server default ("slow": 5 s)
    location: str | None = None  # "redirect": where to
    size_bytes: int = 20_000_000  # "huge_reply": body size


class FakeOpenAIServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, delay_s: float = 0.0):
        self.host, self.port, self.default_delay_s = host, port, delay_s
        self._behaviours: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._mixed = 0  # echo_key_mixed turns

    # -- control (any thread) ------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def set(self, model: str, mode: str = "ok", times: int | None = None, retry_after: float = 1.0,
            delay_s: float | None = None, location: str | None = None, size_bytes: int = 20_000_000) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        with self._lock:
            self._behaviours[model] = Behaviour(mode, times, retry_after, delay_s, location, size_bytes)

    def reset(self) -> None:
        with self._lock:
            self._behaviours.clear()
            self.log.clear()

    def count(self, model: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.log if model is None or r["model"] == model)

    def answered(self, status: int | None = 200) -> list[dict[str, Any]]:
        """Logged requests the server has answered (with `status`; None: any)."""
        with self._lock:
            return [dict(r) for r in self.log if r["done"] and (status is None or r["http"] == status)]

    def times(self, model: str) -> list[float]:
        """Arrival times (time.monotonic) of a model's requests."""
        with self._lock:
            return [r["t"] for r in self.log if r["model"] == model]

    # -- lifecycle -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_post("/_admin/set", self._admin_set)
        app.router.add_get("/_admin/stats", self._admin_stats)
        return app

    async def start_async(self) -> None:
        if self.port == 0:
            with socket.socket() as s:  # a free port now; tiny race with other binders is acceptable
                s.bind((self.host, 0))
                self.port = s.getsockname()[1]
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, backlog=1024).start()

    def start(self) -> "FakeOpenAIServer":
        """Serve from a background thread with its own event loop."""
        ready = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self.start_async())
            except BaseException as e:  # report start failures to the starting thread
                error.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        if error:
            raise error[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)  # type: ignore[union-attr]
        try:
            fut.result(5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- handlers ------------------------------------------------------------------------------
    def _take(self, model: str, header_mode: str | None) -> Behaviour:
        with self._lock:
            if header_mode:
                return Behaviour(header_mode)
            b = self._behaviours.get(model)
            if b is None:
                return Behaviour()
            if b.times is not None:
                if b.times <= 0:
                    return Behaviour(delay_s=b.delay_s)
                b.times -= 1
            return Behaviour(b.mode, None, b.retry_after, b.delay_s, b.location, b.size_bytes)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            model, messages = body["model"], body["messages"]
        except Exception:
            return web.json_response({"error": {"message": "invalid request body"}}, status=400)
        b = self._take(model, request.headers.get("X-Fake-Mode"))
        with self._lock:
            if b.mode == "echo_key_mixed":
                self._mixed += 1
                b.mode = "echo_key" if self._mixed % 2 else "echo_key_ok"
            entry = {"t": time.monotonic(), "model": model, "mode": b.mode,
                     "bearer": request.headers.get("Authorization", "").startswith("Bearer "),
                     "idempotency_key": request.headers.get("Idempotency-Key"), "done": False, "http": None}
            self.log.append(entry)
        delay = b.delay_s if b.delay_s is not None else (5.0 if b.mode == "slow" else self.default_delay_s)
        if delay:
            await asyncio.sleep(delay)
        resp = await self._answer(b, body, model, messages, request)
        with self._lock:
            entry["done"], entry["http"] = b.mode != "drop", resp.status
        return resp

    async def _answer(self, b: Behaviour, body: dict, model: str, messages: list,
                      request: web.Request) -> web.StreamResponse:
        if b.mode == "redirect":
            return web.Response(status=307, headers={"Location": b.location or "http://127.0.0.1:9/v1/chat/completions"})
        if b.mode == "429":
            return web.json_response({"error": {"message": "rate limited"}}, status=429,
                                     headers={"Retry-After": f"{b.retry_after:g}"})
        if b.mode == "500":
            return web.json_response({"error": {"message": "internal error"}}, status=500)
        if b.mode == "malformed":
            return web.Response(text='{"choices": [ {"message": ', content_type="application/json")
        if b.mode == "incomplete":
            return web.json_response({"id": "x", "object": "chat.completion"})
        if b.mode == "drop":
            request.transport.abort()  # type: ignore[union-attr]
            return web.Response()  # never reaches the client: the connection is gone
        if b.mode == "echo_key":  # as some providers do, padded so the key straddles byte 200
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            msg = "Incorrect API key provided: ".ljust(170, ".") + token
            return web.json_response({"error": {"message": msg}}, status=401)
        out = _reply(model, messages, body.get("max_tokens"), b.mode != "no_usage")
        if b.mode == "echo_key_ok":  # a reply that carries the key, early enough to survive any cut
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            out["choices"][0]["message"]["content"] = f"key {token} . " + out["choices"][0]["message"]["content"]
        if b.mode == "huge_reply":
            out["choices"][0]["message"]["content"] = "x" * b.size_bytes
        if b.mode == "huge_usage":
            out["usage"] = {"prompt_tokens": 10**12, "completion_tokens": 10**12, "total_tokens": 2 * 10**12}
        if b.mode == "overlong":
            out["usage"]["completion_tokens"] = 10 * (body.get("max_tokens") or 16)
        return web.json_response(out)

    async def _admin_set(self, request: web.Request) -> web.Response:
        self.set(**(await request.json()))
        return web.json_response({"ok": True})

    async def _admin_stats(self, request: web.Request) -> web.Response:
        with self._lock:
            counts: dict[str, int] = {}
            for r in self.log:
                counts[r["model"]] = counts.get(r["model"], 0) + 1
            behaviours = {k: asdict(v) for k, v in self._behaviours.items()}
        return web.json_response({"counts": counts, "behaviours": behaviours})


def _reply(model: str, messages: list[dict[str, Any]], max_tokens: int | None, usage: bool) -> dict:
    last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    words = f"{model} answers: {last_user}".split()
    if max_tokens:
        words = words[:max_tokens]
    out: dict[str, Any] = {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                     "finish_reason": "stop"}]}
    if usage:
        pt = sum(len(str(m.get("content", "")).split()) for m in messages)
        out["usage"] = {"prompt_tokens": pt, "completion_tokens": len(words), "total_tokens": pt + len(words)}
    return out


try:  # the fixture is only defined where pytest is importable
    import pytest

    @pytest.fixture(scope="session")
    def fake_openai_session():
        with FakeOpenAIServer() as srv:
            yield srv

    @pytest.fixture
    def fake_openai(fake_openai_session):
        """The shared server, with behaviours and the request log cleared after each test."""
        fake_openai_session.reset()
        yield fake_openai_session
        fake_openai_session.reset()
except ImportError:  # pragma: no cover
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before every normal answer")
    args = ap.parse_args()
    srv = FakeOpenAIServer(args.host, args.port, args.delay)

    async def serve() -> None:
        await srv.start_async()
        print(srv.url, flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
