"""Any OpenAI-compatible chat-completions endpoint (vLLM server, NVIDIA NIM, Together, OpenAI).

One aiohttp session serves every model of the pool, so connections are pooled and reused. The
API key is read from the environment variable the descriptor names at call time and only ever
placed in the Authorization header: never logged, never in an error, never in a record. A
provider's error body is redacted (any run of 6+ characters of the key) *before* it is cut, and
travels as `BackendError.detail` (for the ledger), never in the message the router reads.
Every attempt carries the pool's idempotency key (`Idempotency-Key` and `X-Request-ID`).
Failures become `BackendError`s the pool knows how to retry: 429, 5xx, timeouts and connection
errors (and 408) are retryable; other 4xx are not; an unparseable body is BAD_RESPONSE.
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

from router_r1.pool.backends.base import IDEMPOTENCY_KEY, BackendError, BackendReply, Message, ModelBackend
from router_r1.pool.cost import estimate_prompt_tokens, estimate_tokens
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.pool.types import CallStatus
from router_r1.util.redact import redact

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads pairs valid ones: any left is lone
DETAIL_CHARS = 200  # of a provider's error body kept for the ledger, after redaction


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
    def __init__(self, pool: PoolSpec, *, max_connections: int = 256, connect_timeout_s: float = 10.0,
                 headers: dict[str, str] | None = None):
        self.pool = pool
        self.max_connections, self.connect_timeout_s = max_connections, connect_timeout_s
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
        try:
            async with self._get_session().post(url, json=body, headers=headers) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, parse_retry_after(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            raise BackendError(CallStatus.TIMEOUT, f"{model.name}: connect timed out", retryable=True) from None
        except aiohttp.InvalidURL:
            raise BackendError(CallStatus.NOT_CONFIGURED, f"{model.name}: base_url is not a valid URL",
                               retryable=False) from None
        except aiohttp.ClientError as e:  # refused, reset, dropped mid-reply
            raise BackendError(CallStatus.CONNECTION_ERROR, f"{model.name}: {type(e).__name__}: {e}",
                               retryable=True) from None
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
