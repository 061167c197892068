"""Typed values that cross module and actor boundaries.

`CallResult` is the one contract between whoever calls a candidate model (the episode
machine, evaluation, serving) and whoever answers (the ModelPool and its backends): a call
never raises to its caller, it ends in a `CallResult` whose `status` says how it went.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class CallStatus(str, Enum):
    """How a candidate-model call ended. Everything but OK carries an `error` text."""

    OK = "ok"
    BUDGET_EXCEEDED = "budget_exceeded"  # refused before sending: a budget cap would be overrun
    RATE_LIMITED = "rate_limited"  # provider kept answering 429 through every attempt
    TIMEOUT = "timeout"  # no answer within the model's timeout on every attempt
    HTTP_ERROR = "http_error"  # 5xx/4xx through every attempt
    CONNECTION_ERROR = "connection_error"  # connection refused/dropped through every attempt
    BAD_RESPONSE = "bad_response"  # the provider answered something unparseable
    CIRCUIT_OPEN = "circuit_open"  # the model is cooling down after repeated failures
    UNKNOWN_MODEL = "unknown_model"  # the router named a model that is not in the pool
    NOT_ALLOWED = "not_allowed"  # the model exists but is excluded for this request
    CANCELLED = "cancelled"  # the caller's deadline passed or it went away
    INVALID_REQUEST = "invalid_request"  # the call itself was malformed (params, messages, context)
    NOT_CONFIGURED = "not_configured"  # the model cannot be called as configured (API key unset)
    # The pool actor stopped before the reply reached the caller (PoolClient asks the restarted
    # pool what its ledger says; router_r1/pool/README.md, "After a crash"):
    NOT_SENT = "not_sent"  # no attempt left the pool, nothing billed: safe to retry
    OUTCOME_UNKNOWN = "outcome_unknown"  # sent, reply lost; billed (at its capped cost if unknown)


@dataclass
class CallResult:
    """Outcome of one routed call, successful or not.

    `model` is the pool's display name when the name resolved, else what the caller wrote.
    Token counts and cost are what was billed (zero for refusals and cache hits).
    """

    model: str
    text: str = ""
    status: CallStatus = CallStatus.OK
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    attempts: int = 0
    cache_hit: bool = False
    error: str | None = None
    served_by: str | None = None  # differs from `model` when a fallback answered
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is CallStatus.OK

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CallResult":
        d = dict(d)
        d["status"] = CallStatus(d.get("status", "ok"))
        return cls(**d)

    @classmethod
    def failure(cls, model: str, status: CallStatus, error: str, **kw: Any) -> "CallResult":
        return cls(model=model, status=status, error=error, **kw)


# How anyone calls a candidate model: `await call(model, query, **context)`, where `context`
# names the caller (`episode_id=...`, `run_id=...`, `tenant=...`) for billing and replay. A call
# never raises; it ends in a `CallResult`. The pool's client (actors.model_pool.PoolClient.call),
# the episode machine, evaluation, the worlds' call wrappers and the RLlib router's service all
# take or give exactly this.
CallFn = Callable[..., Awaitable[CallResult]]
