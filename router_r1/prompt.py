"""The router's prompt, rendered from the model descriptors and the question.

The router knows each candidate only through its descriptor (name, price, latency, size,
description), so swapping the descriptor file is all it takes to offer it unseen models.
"""
from __future__ import annotations

from router_r1.descriptors import ModelDescriptor, PoolSpec

INSTRUCTIONS = (
    "Answer the given question. Every time you receive new information, you must first reason "
    "inside <think> and </think>. If you lack some knowledge, you may call one of the candidate "
    "LLMs below by writing <search> Model-Name: your sub-question </search>; its reply is returned "
    "between <information> and </information>. You may call models several times, and each call "
    "is billed by its tokens and the model's price. When you are ready, give the final answer "
    "inside <answer> and </answer>, without explanation, e.g. <answer> Beijing </answer>."
)

# For tiny routers built from scratch (the demo): the same protocol in about a third of the
# tokens, and one short line per model, so prompt + a two-call trace stays near 300 tokens.
COMPACT_INSTRUCTIONS = (
    "Answer the question. Think inside <think> </think>. To ask a model, write "
    "<search> Model-Name: question </search>; its reply comes inside <information> "
    "</information>. Each call costs its tokens times the model's price. Give the final answer "
    "inside <answer> </answer>."
)


def describe_model(m: ModelDescriptor, compact: bool = False) -> str:
    if compact:  # price and description only
        price = (f"${m.price_in:.2f}" if m.price_in == m.price_out
                 else f"${m.price_in:.2f} in, ${m.price_out:.2f} out")
        return f"- {m.name}: {price}/1M tokens. {m.description.strip()}".rstrip()
    size = f"{m.params_b:g}B parameters" if m.params_b is not None else "size unknown"
    price = (f"${m.price_in:.2f}/1M tokens" if m.price_in == m.price_out
             else f"${m.price_in:.2f}/1M input tokens, ${m.price_out:.2f}/1M output tokens")
    line = f"- {m.name}: {price}; ~{m.latency_s:g}s latency; {size}."
    return f"{line} {m.description.strip()}" if m.description.strip() else line


def render_prompt(pool: PoolSpec, question: str, instructions: str | None = None,
                  compact: bool = False) -> str:
    """The full user turn for one question. Chat templates, if any, are applied by the policy.
    `compact` uses COMPACT_INSTRUCTIONS (unless `instructions` is given) and short model lines."""
    if instructions is None:
        instructions = COMPACT_INSTRUCTIONS if compact else INSTRUCTIONS
    models = "\n".join(describe_model(m, compact) for m in pool.models)
    return f"{instructions}\n\nCandidate LLMs:\n{models}\n\nQuestion: {question.strip()}\n"
