"""The contract between the ModelPool and a backend.

A backend answers one attempt: `complete` returns a `BackendReply` or raises `BackendError`
saying whether the failure is worth retrying. Retries, rate limits, budgets, caching and billing
are the pool's job, never the backend's, so every backend is a few dozen lines of I/O.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from router_r1.pool.descriptors import ModelDescriptor
from router_r1.pool.types import CallStatus

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}

# The idempotency key of the call being attempted, set by the pool around each attempt: the same
# for every retry of one call to one model, so a provider (HTTP backends send it as a header) or
# an audit of the ledger can tell a retry from a new call. A context variable, so the backend
# interface stays `complete(model, messages, params)`.
IDEMPOTENCY_KEY: ContextVar[str | None] = ContextVar("router_r1_idempotency_key", default=None)


def render_chat(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text a local model sees: its chat template, or plain "role: content" lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


@dataclass
class BackendReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # Replay backends know what the call really cost; None means "price it from the descriptor".
    cost_usd: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class BackendError(Exception):
    """One failed attempt. `retryable` failures (429, 5xx, timeouts, dropped connections) are
    retried by the pool with backoff; `retry_after` (seconds) comes from a Retry-After header.
    `billed_tokens` is (prompt, completion) when the provider bills the failed attempt.
    `bill_at_cap`: the provider answered (and billed) but its usage is unknown, e.g. a reply too
    large to read: the pool bills the call's capped cost (sent text's bound, `max_tokens`).
    `detail` is the provider's own error text (redacted, cut): it goes to the ledger, never into
    the message, because the message reaches the router's context."""

    def __init__(self, status: CallStatus, message: str, *, retryable: bool,
                 retry_after: float | None = None, http_status: int | None = None,
                 billed_tokens: tuple[int, int] | None = None, detail: str | None = None,
                 bill_at_cap: bool = False):
        super().__init__(message)
        self.status, self.retryable, self.retry_after = status, retryable, retry_after
        self.http_status, self.billed_tokens, self.detail = http_status, billed_tokens, detail
        self.bill_at_cap = bill_at_cap


class ModelBackend(ABC):
    """One backend instance serves every model of its kind in the pool."""

    # False: token counts come from a provider the pool does not trust blindly (it caps them at
    # what the sent text and max_tokens allow). True: they are replayed records (replay backend).
    recorded_usage = False
    # True: an attempt reaches a provider outside this process, which may bill it even if the
    # pool dies before the reply: the pool writes each attempt's intent ahead (`intents.py`).
    # False (in-process engines, replay, the simulator): nothing outside the process bills.
    billed_remotely = False

    @abstractmethod
    async def complete(self, model: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any]) -> BackendReply:
        """One attempt at one call. `params`: temperature, max_tokens, top_p, stop, seed ..."""

    async def close(self) -> None:
        """Release sessions, engines, files. Called once when the pool shuts down."""
