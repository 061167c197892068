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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from router_r1.pool.descriptors import ModelDescriptor, PoolSpec

if TYPE_CHECKING:
    from router_r1.env.episode import Tokenizer

log = logging.getLogger(__name__)
POLICY_META = "router_r1.json"  # beside a saved policy (router_r1.engines.model.save_policy)

# The prompt layouts (`policy.prompt_layout`): "full", the paper's instructions and one line per
# model with price, latency, size and description; "compact", for tiny routers built from scratch
# (the demo), the same protocol in about a third of the tokens and one short line per model.
# Two more, measured for models unseen in training and not enough, were removed
# (docs/results_simulator.md, "A model unseen in training"); their code is at REMOVED_LAYOUTS_COMMIT.
PromptLayout = Literal["full", "compact"]
REMOVED_LAYOUTS = ("name_last", "by_strength")
REMOVED_LAYOUTS_COMMIT = "bd566f4"

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


def describe_model(m: ModelDescriptor, layout: PromptLayout = "full") -> str:
    """One model's line: name, price, latency, size and description ("full"), or name, price and
    description ("compact")."""
    if layout == "compact":
        return f"- {m.name}: {compact_price(m)}/1M tokens. {m.description.strip()}".rstrip()
    size = f"{m.params_b:g}B parameters" if m.params_b is not None else "size unknown"
    price = (f"${m.price_in:.2f}/1M tokens" if m.price_in == m.price_out
             else f"${m.price_in:.2f}/1M input tokens, ${m.price_out:.2f}/1M output tokens")
    line = f"- {m.name}: {price}; ~{m.latency_s:g}s latency; {size}."
    return f"{line} {m.description.strip()}" if m.description.strip() else line


def render_prompt(pool: PoolSpec, question: str, instructions: str | None = None,
                  layout: PromptLayout = "full", history: Sequence[Turn] = ()) -> str:
    """The full user turn for one question. Chat templates, if any, are applied by the policy.
    The "compact" layout uses COMPACT_INSTRUCTIONS (unless `instructions` is given) and short
    model lines. `history`: the conversation before the question (`conversation_block`); none
    renders exactly the single-question prompt."""
    if instructions is None:
        instructions = COMPACT_INSTRUCTIONS if layout == "compact" else INSTRUCTIONS
    models = "\n".join(describe_model(m, layout) for m in pool.models)
    convo = conversation_block(history)
    return f"{instructions}\n\nCandidate LLMs:\n{models}\n\n{convo}Question: {question.strip()}\n"


# A conversation turn before the question: {"role": "system" | "user" | "assistant", "content": str}.
Turn = Mapping[str, str]
SPEAKERS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def conversation_block(history: Sequence[Turn]) -> str:
    """The earlier turns as the router reads them: "Conversation so far:" then one "Role: text"
    line per turn (newlines inside a turn kept as spaces), then a blank line; "" for none."""
    lines = [f"{SPEAKERS.get(t['role'], 'User')}: {' '.join(t['content'].split())}"
             for t in history if t.get("content", "").strip()]
    return "Conversation so far:\n" + "\n".join(lines) + "\n\n" if lines else ""


def fit_history(history: Sequence[Turn], fits: Callable[[list[Turn]], bool]) -> list[Turn]:
    """The longest history `fits` accepts, cut by one rule: the oldest user/assistant turn goes
    first, one at a time; system turns are kept to the last and then go too (the question
    itself is never cut here; `max_question_tokens` cuts it to its tail). `fits` must be monotone
    (a history that fits still fits with a turn fewer, as a token budget is): the number of turns
    to cut is then found by bisection, in about log2(n) calls of `fits` instead of up to n, each
    of which renders and tokenizes the whole prompt."""
    turns = list(history)
    if not turns or fits(turns):  # the common case: the whole conversation fits
        return turns
    # The order turns go in: user/assistant turns oldest first, then system turns (a stable sort).
    order = sorted(range(len(turns)), key=lambda i: turns[i]["role"] in ("system", "developer"))

    def without_first(k: int) -> list[Turn]:
        gone = set(order[:k])
        return [t for i, t in enumerate(turns) if i not in gone]

    lo, hi = 1, len(turns)  # the fewest turns to cut lies in [lo, hi]; cutting all always "fits"
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(without_first(mid)):
            hi = mid
        else:
            lo = mid + 1
    return without_first(lo)


class PromptOptions(BaseModel):
    """How a router's prompt is rendered; saved with every policy checkpoint (`POLICY_META`,
    key "prompt") so that every consumer renders the prompt the router was trained with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: PromptLayout = "full"  # see PromptLayout
    max_question_tokens: int | None = Field(default=None, ge=1)  # question cut to its tail; None: whole
    use_chat_template: bool = True  # wrap the user turn in the tokenizer's chat template, if it has one
    # Trained with earlier turns in its prompt (`render_prompt_ids(history=...)`); Serve renders a
    # request's conversation for such a router (serve.conversation "auto"), the last message otherwise.
    conversation: bool = False


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


def user_turn(pool: PoolSpec, question: str, options: PromptOptions, tokenizer: Tokenizer | None = None,
              history: Sequence[Turn] = ()) -> str:
    """The user turn under `options`, before any chat template (the question tail is counted in
    `tokenizer`'s tokens, or in words without one: tokenizer corpora, before it exists)."""
    return render_prompt(pool, question_tail(question, options.max_question_tokens, tokenizer),
                         layout=options.layout, history=history)


def render_prompt_ids(tokenizer, pool: PoolSpec, question: str, options: PromptOptions,
                      history: Sequence[Turn] = ()) -> tuple[str, list[int]]:
    """(text, ids) of the prompt the router conditions on: the user turn, wrapped in the chat
    template when `options` says so and the tokenizer has one, encoded once without added
    special tokens (the template already holds any; this equals apply_chat_template's ids).
    `history`: the conversation before `question` (system prompt and earlier turns), rendered
    into the user turn (`conversation_block`); without it the prompt is the single-question one,
    token for token, so every router trained on single questions reads what it was trained on."""
    text = user_turn(pool, question, options, tokenizer, history)
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
        saved = _from_old_record(record["prompt"], meta)
        try:
            return PromptOptions.model_validate(saved)
        except ValueError as e:
            raise ValueError(f"{meta}: invalid prompt options: {e}") from None
    if default is None:
        raise ValueError(f"{checkpoint}: the checkpoint records no prompt options ({POLICY_META} "
                         f"has no 'prompt'); it was saved before they were recorded or not trained here")
    log.warning("%s records no prompt options; rendering with %s", checkpoint, default)
    return default


def _from_old_record(saved: Any, meta: Path) -> Any:
    """A record saved before `layout` (`compact`, and in later ones `name_last` and `by_strength`)
    as today's fields: `compact` becomes the layout; one asking for a removed layout is refused in
    one line."""
    if not isinstance(saved, dict) or "layout" in saved or not {"compact", *REMOVED_LAYOUTS} & set(saved):
        return saved
    removed = [k for k in REMOVED_LAYOUTS if saved.get(k)]
    if removed:
        raise ValueError(f"{meta}: the router was trained with the prompt layout {removed[0]!r}, since removed; "
                         f"render it with commit {REMOVED_LAYOUTS_COMMIT} of router-r1")
    rest = {k: v for k, v in saved.items() if k not in ("compact", *REMOVED_LAYOUTS)}
    return {"layout": "compact" if saved.get("compact") else "full", **rest}
