"""Pricing: a call costs prompt tokens x input price + completion tokens x output price."""
from __future__ import annotations

import math
from collections.abc import Iterable

from router_r1.pool.descriptors import ModelDescriptor

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
    """Deliberately high token estimate from the UTF-8 bytes, so budget reservations and token
    buckets err on the safe side when usage is not known: an ASCII byte counts 1/3 of a token (BPE
    averages ~4 characters per token on English), any other byte 1/2 (a CJK character, 3 bytes,
    is 1.5 tokens: tokenizers give it 1-2; counting characters undercounts such text by half)."""
    data = text.encode("utf-8", "surrogatepass")
    other = sum(b >= 0x80 for b in data)
    return math.ceil((len(data) - other) / 3 + other / 2)


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Content estimate plus a few tokens per message for the chat template."""
    return sum(estimate_tokens(m["content"]) + 4 for m in messages) + 2


# A chat template adds at most this many tokens per message and per call (role markers, BOS).
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_CALL = 16


def max_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """An upper bound on the prompt tokens of `messages`: a byte-level tokenizer emits at most one
    token per UTF-8 byte, plus the template's own tokens. Reported usage above it is not believed."""
    return sum(len(m["content"].encode("utf-8", "surrogatepass")) + TEMPLATE_TOKENS_PER_MESSAGE
               for m in messages) + TEMPLATE_TOKENS_PER_CALL
