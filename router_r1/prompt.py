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


def describe_model(m: ModelDescriptor) -> str:
    size = f"{m.params_b:g}B parameters" if m.params_b is not None else "size unknown"
    price = (f"${m.price_in:.2f}/1M tokens" if m.price_in == m.price_out
             else f"${m.price_in:.2f}/1M input tokens, ${m.price_out:.2f}/1M output tokens")
    line = f"- {m.name}: {price}; ~{m.latency_s:g}s latency; {size}."
    return f"{line} {m.description.strip()}" if m.description.strip() else line


def render_prompt(pool: PoolSpec, question: str, instructions: str = INSTRUCTIONS) -> str:
    """The full user turn for one question. Chat templates, if any, are applied by the policy."""
    models = "\n".join(describe_model(m) for m in pool.models)
    return f"{instructions}\n\nCandidate LLMs:\n{models}\n\nQuestion: {question.strip()}\n"
