"""The router's prompt, rendered from the model descriptors and the question.

The router knows each candidate only through its descriptor (name, price, latency, size,
description), so swapping the descriptor file is all it takes to offer it unseen models.

`render_prompt_ids` is the one renderer of what a router conditions on: rollouts, `router-r1
evaluate`, Serve and the MLflow model all call it with the `PromptOptions` saved beside the
policy (`router_r1.json`, read back by `load_prompt_options`), so a served router sees exactly
the prompt it was trained on, token for token.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from router_r1.pool.description_words import description_positives
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec

if TYPE_CHECKING:
    from router_r1.env.episode import Tokenizer

log = logging.getLogger(__name__)
POLICY_META = "router_r1.json"  # beside a saved policy (router_r1.engines.model.save_policy)

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


def compact_price(m: ModelDescriptor) -> str:
    """`$0.10`, or `$0.80 in, $2.40 out` when the two prices differ (per 1M tokens)."""
    return f"${m.price_in:.2f}" if m.price_in == m.price_out else f"${m.price_in:.2f} in, ${m.price_out:.2f} out"


def describe_model(m: ModelDescriptor, compact: bool = False, name_last: bool = False) -> str:
    """One model's line. Compact: price and description only; `name_last` puts the name at the
    end of a compact line. A causal LM sees a token's left context only, so there every token of a
    name has read its model's price and description, and a router choosing a model it has never
    seen copies the name whose tokens match what the question needs (one attention lookup, then
    copying), instead of first finding the right description and then going back for its name."""
    if compact:
        price = compact_price(m)
        if name_last:
            return f"- {price}/1M tokens. {m.description.strip()} Name: {m.name}".replace("  ", " ")
        return f"- {m.name}: {price}/1M tokens. {m.description.strip()}".rstrip()
    size = f"{m.params_b:g}B parameters" if m.params_b is not None else "size unknown"
    price = (f"${m.price_in:.2f}/1M tokens" if m.price_in == m.price_out
             else f"${m.price_in:.2f}/1M input tokens, ${m.price_out:.2f}/1M output tokens")
    line = f"- {m.name}: {price}; ~{m.latency_s:g}s latency; {size}."
    return f"{line} {m.description.strip()}" if m.description.strip() else line


def strength_index(pool: PoolSpec) -> list[str]:
    """The pool as one line per thing its descriptions say models are good at, each listing the
    models described so, cheapest first: "- strong on geography: Sim-Geo-Small ($0.10)", "- fair on
    people: ...". Weaknesses are left out (a model not listed for a topic is not recommended
    for it); models with nothing listed get one "- other:" line. For a tiny router: the
    phrase its think names ("strong on geography") is followed, in exactly one line, by the names
    that fit, so choosing a model it never saw is one copy after a matching phrase."""
    groups: dict[str, list[ModelDescriptor]] = {}
    for m in pool.models:
        keys = dict.fromkeys(f"{q} {item}" for q, item in description_positives(m.description))
        for k in keys or ["other"]:
            groups.setdefault(k, []).append(m)
    return [f"- {k}: " + ", ".join(f"{m.name} ({compact_price(m)})"
                                   for m in sorted(ms, key=lambda m: (m.price_in + m.price_out, m.name)))
            for k, ms in groups.items()]


def index_key(m: ModelDescriptor, topic: str) -> str | None:
    """The `strength_index` line under which `m` is listed for `topic`: the one naming the topic,
    else one naming "every topic"; None if it is listed under neither."""
    listed = description_positives(m.description)
    for want in (topic, "every topic"):
        for q, item in listed:
            if item.lower() == want:
                return f"{q} {item}"
    return None


def render_prompt(pool: PoolSpec, question: str, instructions: str | None = None,
                  compact: bool = False, name_last: bool = False, by_strength: bool = False) -> str:
    """The full user turn for one question. Chat templates, if any, are applied by the policy.
    `compact` uses COMPACT_INSTRUCTIONS (unless `instructions` is given) and short model lines
    (with `name_last`, each ending with the model's name); `by_strength` lists the models as
    `strength_index` lines instead of one line each."""
    if instructions is None:
        instructions = COMPACT_INSTRUCTIONS if compact else INSTRUCTIONS
    lines = strength_index(pool) if by_strength else [describe_model(m, compact, name_last) for m in pool.models]
    models = "\n".join(lines)
    return f"{instructions}\n\nCandidate LLMs:\n{models}\n\nQuestion: {question.strip()}\n"


class PromptOptions(BaseModel):
    """How a router's prompt is rendered; saved with every policy checkpoint (`POLICY_META`,
    key "prompt") so that every consumer renders the prompt the router was trained with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compact: bool = False  # COMPACT_INSTRUCTIONS and one short line per model
    max_question_tokens: int | None = Field(default=None, ge=1)  # question cut to its tail; None: whole
    use_chat_template: bool = True  # wrap the user turn in the tokenizer's chat template, if it has one
    name_last: bool = False  # compact model lines end with the name (describe_model)
    by_strength: bool = False  # models listed by what their descriptions name (strength_index)



def question_tail(question: str, max_tokens: int | None, tokenizer: Tokenizer | None = None) -> str:
    """The last `max_tokens` tokens of the question (whitespace words without a tokenizer),
    prefixed with '... ' when cut. None keeps the whole question. RouterBench puts its few-shot
    examples first and the question itself last, and a tiny router cannot read all of it."""
    q = question.strip()
    if max_tokens is None:
        return q
    if tokenizer is None:
        words = q.split()
        return q if len(words) <= max_tokens else "... " + " ".join(words[-max_tokens:])
    ids = tokenizer.encode(q, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return q
    return "... " + tokenizer.decode(ids[-max_tokens:], skip_special_tokens=True).strip()


def user_turn(pool: PoolSpec, question: str, options: PromptOptions, tokenizer: Tokenizer | None = None) -> str:
    """The user turn under `options`, before any chat template (the question tail is counted in
    `tokenizer`'s tokens, or in words without one: tokenizer corpora, before it exists)."""
    return render_prompt(pool, question_tail(question, options.max_question_tokens, tokenizer),
                         compact=options.compact, name_last=options.name_last, by_strength=options.by_strength)


def render_prompt_ids(tokenizer, pool: PoolSpec, question: str, options: PromptOptions) -> tuple[str, list[int]]:
    """(text, ids) of the prompt the router conditions on: the user turn, wrapped in the chat
    template when `options` says so and the tokenizer has one, encoded once without added
    special tokens (the template already holds any; this equals apply_chat_template's ids)."""
    text = user_turn(pool, question, options, tokenizer)
    if options.use_chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text, list(tokenizer.encode(text, add_special_tokens=False))


def load_prompt_options(checkpoint: str | Path, default: PromptOptions | None = None) -> PromptOptions:
    """The options saved with a policy checkpoint. A checkpoint that records none (written before
    they were saved, or not trained here: a stock instruct model) gets `default`, with a warning,
    or a ValueError when there is no default. A malformed record is always an error."""
    meta = Path(checkpoint) / POLICY_META
    try:
        record = json.loads(meta.read_text()) if meta.exists() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{meta}: unreadable ({e})") from None
    if isinstance(record, dict) and "prompt" in record:
        try:
            return PromptOptions.model_validate(record["prompt"])
        except ValueError as e:
            raise ValueError(f"{meta}: invalid prompt options: {e}") from None
    if default is None:
        raise ValueError(f"{checkpoint}: the checkpoint records no prompt options ({POLICY_META} "
                         f"has no 'prompt'); it was saved before they were recorded or not trained here")
    log.warning("%s records no prompt options; rendering with %s", checkpoint, default)
    return default
