"""The contract between the ModelPool and a backend.

A backend answers one attempt: `complete` returns a `BackendReply` or raises `BackendError`
saying whether the failure is worth retrying. Retries, rate limits, budgets, caching and billing
are the pool's job, never the backend's, so every backend is a few dozen lines of I/O.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from router_r1.descriptors import ModelDescriptor
from router_r1.types import CallStatus

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


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
    `billed_tokens` is (prompt, completion) when the provider bills the failed attempt."""

    def __init__(self, status: CallStatus, message: str, *, retryable: bool,
                 retry_after: float | None = None, http_status: int | None = None,
                 billed_tokens: tuple[int, int] | None = None):
        super().__init__(message)
        self.status, self.retryable, self.retry_after = status, retryable, retry_after
        self.http_status, self.billed_tokens = http_status, billed_tokens


class ModelBackend(ABC):
    """One backend instance serves every model of its kind in the pool."""

    @abstractmethod
    async def complete(self, model: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any]) -> BackendReply:
        """One attempt at one call. `params`: temperature, max_tokens, top_p, stop, seed ..."""

    async def close(self) -> None:
        """Release sessions, engines, files. Called once when the pool shuts down."""
