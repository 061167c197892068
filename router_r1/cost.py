"""Pricing: a call costs prompt tokens x input price + completion tokens x output price."""
from __future__ import annotations

import math
from collections.abc import Iterable

from router_r1.descriptors import ModelDescriptor

PER_TOKENS = 1_000_000  # descriptor prices are USD per 1M tokens


def call_cost(model: ModelDescriptor, prompt_tokens: int, completion_tokens: int) -> float:
    """USD billed for one call."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise ValueError("token counts must be non-negative")
    return (prompt_tokens * model.price_in + completion_tokens * model.price_out) / PER_TOKENS


def episode_cost(call_costs: Iterable[float]) -> float:
    """An episode costs the sum of its calls."""
    return float(sum(call_costs))


def estimate_tokens(text: str) -> int:
    """Deliberately high token estimate (3 chars/token; BPE averages ~4 on English text), so
    budget reservations and token buckets err on the safe side when usage is not known."""
    return math.ceil(len(text) / 3)


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Content estimate plus a few tokens per message for the chat template."""
    return sum(estimate_tokens(m["content"]) + 4 for m in messages) + 2
