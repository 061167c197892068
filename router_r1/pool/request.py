"""Turning what a caller passed into a checked `Request`, or an `InvalidRequest` saying why.

Callers are untrusted in two ways: a policy being trained writes model names and queries freely,
and serving forwards tenants' input. Only known params reach a backend (no `stream`, no `model`
override), and only known context keys are accepted, so a typo is an error, not a silent default.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router_r1.pool.backends.base import Message
from router_r1.pool.descriptors import ModelDescriptor

PARAM_KEYS = frozenset({"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty",
                        "frequency_penalty"})
CONTEXT_KEYS = frozenset({"run_id", "episode_id", "tenant", "allowed_models", "deadline_s", "call_id",
                          "end_user"})
# A caller's id for one call (PoolClient draws one per call): the call's idempotency keys are
# "<call_id>.<n>" (n-th model tried), so after a crash the ledger answers for the call by this id.
CALL_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
ROLES = frozenset({"system", "user", "assistant"})
MAX_NAME = 200  # model names as written are kept (ledger, errors) up to this length


class InvalidRequest(Exception):
    pass


@dataclass(frozen=True)
class CallContext:
    run_id: str
    episode_id: str = ""
    tenant: str = "default"
    allowed_models: frozenset[str] | None = None  # display names; None = every model
    deadline_s: float | None = None  # absolute time.time()
    call_id: str | None = None  # the caller's id for this call (None: the pool draws one)
    end_user: str | None = None  # the tenant's own end user (Serve: the request's `user`), for the ledger

    def allows(self, name: str) -> bool:
        return self.allowed_models is None or name in self.allowed_models


@dataclass
class Request:
    asked: str  # the model name as the caller wrote it
    desc: ModelDescriptor | None  # None: not in the pool
    query: str | None  # a bare query; messages are then built per model (its system prompt)
    messages: list[Message] | None
    params: dict[str, Any]
    ctx: CallContext
    success: tuple[ModelDescriptor, int, int, float] | None = None  # billed answer: model, tokens, cost
    call_id: str = ""  # the caller's, or drawn by the pool; idempotency keys are "<call_id>.<tried>"
    tried: int = 0  # models tried so far (the first, then fallbacks)

    def messages_for(self, desc: ModelDescriptor) -> list[Message]:
        if self.messages is not None:
            return self.messages
        sys = desc.backend.system_prompt
        return ([{"role": "system", "content": sys}] if sys else []) + [
            {"role": "user", "content": self.query or ""}]


def parse_request(model: Any, messages_or_query: Any, params: Any, context: Any, *,
                  resolve: Callable[[str], ModelDescriptor | None], run_id: str,
                  default_params: dict[str, Any]) -> Request:
    """Check every argument of a call. Raises InvalidRequest; an unknown model is not an error
    here (desc is None), the pool answers it with UNKNOWN_MODEL."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model must be a non-empty string")
    ctx = _context(context, resolve, run_id)
    p = _params(params, default_params)
    query, messages = None, None
    if isinstance(messages_or_query, str):
        if not messages_or_query.strip():
            raise InvalidRequest("the query is empty")
        query = messages_or_query
    elif isinstance(messages_or_query, list) and messages_or_query:
        for m in messages_or_query:
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise InvalidRequest("each message must be {'role': system|user|assistant, 'content': str}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages_or_query]
    else:
        raise InvalidRequest("expected a query string or a non-empty list of messages")
    return Request(model[:MAX_NAME], resolve(model), query, messages, p, ctx)


def _params(params: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    if params is not None and not isinstance(params, dict):
        raise InvalidRequest("params must be a mapping")
    p = {**defaults, **(params or {})}
    bad = set(p) - PARAM_KEYS
    if bad:
        raise InvalidRequest(f"unsupported params {sorted(bad)}; allowed: {sorted(PARAM_KEYS)}")
    t = p.get("temperature")
    if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or t < 0):
        raise InvalidRequest("temperature must be a number >= 0")
    mt = p.get("max_tokens")
    if mt is not None and (not isinstance(mt, int) or isinstance(mt, bool) or mt < 1):
        raise InvalidRequest("max_tokens must be an integer >= 1")
    return p


def _context(context: Any, resolve: Callable[[str], ModelDescriptor | None], run_id: str) -> CallContext:
    if context is None:
        return CallContext(run_id)
    if not isinstance(context, dict):
        raise InvalidRequest("context must be a mapping")
    bad = set(context) - CONTEXT_KEYS
    if bad:
        raise InvalidRequest(f"unknown context keys {sorted(bad)}; allowed: {sorted(CONTEXT_KEYS)}")
    allowed = context.get("allowed_models")
    if allowed is not None:
        if not isinstance(allowed, (list, tuple, set, frozenset)):
            raise InvalidRequest("allowed_models must be a list of model names")
        allowed = frozenset(m.name for m in (resolve(str(a)) for a in allowed) if m)
    deadline = context.get("deadline_s")
    if deadline is not None and (not isinstance(deadline, (int, float)) or isinstance(deadline, bool)):
        raise InvalidRequest("deadline_s must be a unix time in seconds")
    call_id = context.get("call_id")
    if call_id is not None and not (isinstance(call_id, str) and CALL_ID.fullmatch(call_id)):
        raise InvalidRequest("call_id must be 8-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    end_user = context.get("end_user")
    if end_user is not None and not isinstance(end_user, str):
        raise InvalidRequest("end_user must be a string")
    return CallContext(str(context.get("run_id") or run_id), str(context.get("episode_id") or ""),
                       str(context.get("tenant") or "default"), allowed, deadline, call_id,
                       end_user[:MAX_NAME] if end_user else None)
