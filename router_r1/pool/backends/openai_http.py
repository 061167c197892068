"""Any OpenAI-compatible chat-completions endpoint (vLLM server, NVIDIA NIM, Together, OpenAI).

One aiohttp session serves every model of the pool, so connections are pooled and reused. The
API key is read from the environment variable the descriptor names at call time and only ever
placed in the Authorization header: never logged, never in an error, never in a record. A
provider's error body is redacted (any run of 6+ characters of the key) *before* it is cut, and
travels as `BackendError.detail` (for the ledger), never in the message the router reads.
Every attempt carries the pool's idempotency key (`Idempotency-Key` and `X-Request-ID`).
Failures become `BackendError`s the pool knows how to retry: 429, 5xx, timeouts and connection
errors (and 408) are retryable; other 4xx are not; an unparseable body is BAD_RESPONSE.

Bounded and same-origin: a redirect is followed only to the same origin (scheme, host, port) and
only as a 307/308 (which keep the method and body), at most `MAX_REDIRECTS` times; any other
redirect ends the attempt (HTTP_ERROR, not retried) before the prompt or the key goes anywhere
else. A reply body is read up to `max_reply_bytes` (4 MiB by default; the pool's
`backends: {openai: {max_reply_bytes: N}}`): a longer 200 is billed at the call's capped cost (the
provider answered it) and ends BAD_RESPONSE; a longer error body is cut.
"""
from __future__ import annotations

import asyncio
import email.utils
import http
import json
import os
import re
import time
from typing import Any

import aiohttp
from yarl import URL

from router_r1.pool.backends.base import IDEMPOTENCY_KEY, BackendError, BackendReply, Message, ModelBackend
from router_r1.pool.cost import estimate_prompt_tokens, estimate_tokens
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.pool.types import CallStatus
from router_r1.util.redact import redact

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads pairs valid ones: any left is lone
DETAIL_CHARS = 200  # of a provider's error body kept for the ledger, after redaction
MAX_REPLY_BYTES = 4 << 20  # default bound on a reply body
MAX_REDIRECTS = 3  # same-origin 307/308 hops followed per attempt


class _TooLarge(Exception):
    pass


def expand_env(s: str) -> str:
    """`${VAR}` and `${VAR:-default}` (default when VAR is unset or empty), as in a shell."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), s)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OpenAIBackend(ModelBackend):
    billed_remotely = True  # a provider bills what it answered, whether or not we read it

    def __init__(self, pool: PoolSpec, *, max_connections: int = 256, connect_timeout_s: float = 10.0,
                 headers: dict[str, str] | None = None, max_reply_bytes: int = MAX_REPLY_BYTES):
        if not isinstance(max_reply_bytes, int) or isinstance(max_reply_bytes, bool) or max_reply_bytes < 1:
            raise ValueError("max_reply_bytes must be a positive integer")
        self.pool = pool
        self.max_connections, self.connect_timeout_s = max_connections, connect_timeout_s
        self.max_reply_bytes = max_reply_bytes
        self.headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # Overall time limits are the pool's (per-attempt timeout); only connecting is bounded here.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s))
            self._loop = loop
        return self._session

    def _headers(self, model: ModelDescriptor) -> dict[str, str]:
        h = {"Content-Type": "application/json", **self.headers}
        idem = IDEMPOTENCY_KEY.get()
        if idem:
            h["Idempotency-Key"] = h["X-Request-ID"] = idem
        env = model.backend.api_key_env
        if env:
            key = os.environ.get(env)
            if not key:  # the pool checks this first; the variable's name is in the pool's info()
                raise BackendError(CallStatus.NOT_CONFIGURED, f"{model.name}: API key not set",
                                   retryable=False)
            h["Authorization"] = f"Bearer {key}"
        return h

    async def complete(self, model: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any]) -> BackendReply:
        base = model.backend.base_url
        unset = [m.group(1) for m in _VAR.finditer(base or "")
                 if m.group(2) is None and not os.environ.get(m.group(1))]
        if not base or unset:  # retrying cannot mend a URL
            raise BackendError(CallStatus.NOT_CONFIGURED, f"{model.name}: no base_url" if not base else
                               f"{model.name}: base_url needs ${{{unset[0]}}}, which is not set",
                               retryable=False)
        url = expand_env(base).rstrip("/") + "/chat/completions"
        body = {"model": model.backend.api_model or model.name, "messages": messages, **params}
        headers = self._headers(model)
        too_large = False
        try:
            target, hops = URL(url), 0
            while True:
                async with self._get_session().post(target, json=body, headers=headers,
                                                    allow_redirects=False) as resp:
                    status, retry_after = resp.status, parse_retry_after(resp.headers.get("Retry-After"))
                    if 300 <= status < 400:
                        nxt = _same_origin_redirect(target, status, resp.headers.get("Location"))
                        if nxt is None or hops >= MAX_REDIRECTS:
                            raise BackendError(
                                CallStatus.HTTP_ERROR,
                                f"{model.name}: HTTP {status} redirect " + (
                                    "to another origin refused" if nxt is None else "loop refused"),
                                retryable=False, http_status=status)
                        target, hops = nxt, hops + 1
                        continue
                    try:
                        raw = await _read_bounded(resp, self.max_reply_bytes)
                    except _TooLarge as e:
                        if status < 400:
                            too_large = True
                            raw = b""
                        else:
                            raw = e.args[0]  # an error body: its start is enough
                    break
        except asyncio.TimeoutError:
            raise BackendError(CallStatus.TIMEOUT, f"{model.name}: connect timed out", retryable=True) from None
        except aiohttp.InvalidURL:
            raise BackendError(CallStatus.NOT_CONFIGURED, f"{model.name}: base_url is not a valid URL",
                               retryable=False) from None
        except aiohttp.ClientError as e:  # refused, reset, dropped mid-reply
            raise BackendError(CallStatus.CONNECTION_ERROR, f"{model.name}: {type(e).__name__}: {e}",
                               retryable=True) from None
        if too_large:  # answered (so billed by the provider) but not read: bill the capped cost
            raise BackendError(CallStatus.BAD_RESPONSE,
                               f"{model.name}: reply larger than {self.max_reply_bytes} bytes, not read",
                               retryable=False, http_status=status, bill_at_cap=True)
        if status == 429:
            raise BackendError(CallStatus.RATE_LIMITED, f"{model.name}: HTTP 429 rate limited",
                               retryable=True, retry_after=retry_after, http_status=429)
        if status >= 400:
            # Redact first, then cut: a cut made first can leave a key's prefix behind.
            text = raw.decode("utf-8", "replace")
            if "Authorization" in headers:  # never echo a key back, even if a provider does
                text = redact(text, [headers["Authorization"][7:]])
            detail = " ".join(text.split())[:DETAIL_CHARS] or None
            raise BackendError(CallStatus.HTTP_ERROR, f"{model.name}: HTTP {status} {_reason(status)}".rstrip(),
                               retryable=status >= 500 or status == 408, retry_after=retry_after,
                               http_status=status, detail=detail)
        return _parse_reply(model, raw, messages)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _same_origin_redirect(current: URL, status: int, location: str | None) -> URL | None:
    """The next URL of a 307/308 redirect to the same origin, else None (refused)."""
    if status not in (307, 308) or not location:
        return None
    try:
        nxt = current.join(URL(location))
    except ValueError:
        return None
    return nxt if nxt.is_absolute() and nxt.origin() == current.origin() else None


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or `_TooLarge(first limit bytes)` past `limit` (never reads much more)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise _TooLarge(await resp.content.read(limit))
    chunks, size = [], 0
    while True:
        chunk = await resp.content.read(min(1 << 16, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _TooLarge(b"".join(chunks)[:limit])


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _parse_reply(model: ModelDescriptor, raw: bytes, messages: list[Message]) -> BackendReply:
    try:
        data = json.loads(raw)
        text = data["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("message content is not text")
        # A lone surrogate ("\ud800" in the JSON) would make the router's tokenizer raise later:
        # the reply becomes valid Unicode here, with U+FFFD in its place.
        text = _SURROGATE.sub("\ufffd", text)
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BackendError(CallStatus.BAD_RESPONSE,
                           f"{model.name}: malformed chat-completions reply ({type(e).__name__})",
                           retryable=False) from None
    usage = data.get("usage") if isinstance(data, dict) else None
    pt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    ct = usage.get("completion_tokens") if isinstance(usage, dict) else None
    meta: dict[str, Any] = {}
    if not (isinstance(pt, int) and isinstance(ct, int) and pt >= 0 and ct >= 0):
        # No usage reported: bill an estimate rather than nothing, and say so.
        pt, ct = estimate_prompt_tokens(messages), estimate_tokens(text)
        meta["usage_estimated"] = True
    finish = data["choices"][0].get("finish_reason")
    if finish:
        meta["finish_reason"] = finish
    return BackendReply(text=text, prompt_tokens=pt, completion_tokens=ct, meta=meta)
