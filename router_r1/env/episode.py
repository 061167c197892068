"""The multi-round episode machine: batched generation, routed calls, inserted information.

Ray-free. Given a batched `generate(contexts) -> [Generation]` (router_r1.env.generation; it should
stop at </search> or </answer>) and an async `call(model, query) -> CallResult`, `run_episodes`
plays a batch of episodes to the end:

    generate for every episode ready -> cut at stop -> answer? done : route? call (in parallel)
    -> insert <information> when the reply returns -> ready again

After `max_turns` routed turns one last turn is generated; an episode that still does not
answer ends without an answer (a format violation, scored as such).

Token mode (every episode has `prompt_ids`, and a tokenizer is given): the context is token ids.
The prompt is encoded once; the policy's ids are kept exactly as sampled, with the sampler's
log-probs; each inserted <information> block is encoded once when it is inserted, and those same
ids are the context of the next turn. No policy text is ever encoded again, so the learner trains
on the tokens the policy produced. Text mode (no prompt ids: a prompt-only router behind an
endpoint whose tokenizer is not at hand) continues raw text; it is for evaluation, never training.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from router_r1.env.generation import Generation, cut_generation, eos_ids
from router_r1.env.protocol import STOP_STRINGS, cut_at_stop, information_block, parse, parse_route
from router_r1.pool.cost import episode_cost
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.types import CallFn, CallResult, CallStatus

Origin = Literal["policy", "information"]
Context = "list[int] | str"
# contexts (token ids in token mode, text in text mode) -> one Generation (or text) per context
GenerateFn = Callable[[list], "list[Generation | str] | Awaitable[list[Generation | str]]"]


class EpisodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=4, ge=0)  # routed calls before the forced final turn
    max_obs_tokens: int = Field(default=256, ge=1)  # inserted reply truncated to this many tokens
    max_new_tokens: int = Field(default=128, ge=1)  # per generation turn
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)

    @property
    def max_response_tokens(self) -> int:
        """The longest response an episode can make: every turn's generation and every inserted
        block with its tags (training cuts responses here)."""
        return (self.max_turns + 1) * self.max_new_tokens + self.max_turns * (self.max_obs_tokens + 16)


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class Segment:
    """A piece of the response. Token mode: `ids` are the tokens exactly as sampled (policy) or as
    inserted (information), `logprobs` the sampler's log-prob of each policy id (0.0 for
    information); `text` is their decoded text. Text mode: `ids` and `logprobs` are empty."""

    text: str
    origin: Origin
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


@dataclass
class Episode:
    """One question's trajectory. `prompt` is the full rendered prompt the policy conditions on."""

    uid: str
    question: str
    golden_answers: list[str]
    prompt: str
    prompt_ids: list[int] = field(default_factory=list)  # token mode: the prompt, encoded once
    segments: list[Segment] = field(default_factory=list)
    calls: list[CallResult] = field(default_factory=list)
    routes: list[tuple[str, str]] = field(default_factory=list)  # (model as written, query)
    turns: int = 0
    done: bool = False
    truncated: bool = False  # ended by the turn limit or a generation without a stop
    policy_version: int = -1
    meta: dict[str, Any] = field(default_factory=dict)
    # The candidate pool the prompt is rendered over when it is not the run's: a warm-start trace
    # over a synthetic pool (router_r1.worlds.sim.synthetic), which teaches reading descriptors.
    # None: the run's pool. Renderers pass it to `render_prompt_ids` with the run's PromptOptions.
    pool: PoolSpec | None = None
    # The conversation before the question ({"role", "content"} turns): a follow-up's. Renderers
    # pass it to `render_prompt_ids(history=...)`, as Serve passes a request's earlier turns.
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def response(self) -> str:
        """Everything after the prompt: policy text and inserted information."""
        return "".join(s.text for s in self.segments)

    @property
    def context(self) -> str:
        return self.prompt + self.response

    @property
    def token_mode(self) -> bool:
        return bool(self.prompt_ids)

    @property
    def context_ids(self) -> list[int]:
        """Prompt ids then every segment's ids: exactly what the policy conditions on next."""
        return self.prompt_ids + [t for s in self.segments for t in s.ids]

    @property
    def response_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.ids]

    @property
    def cost_usd(self) -> float:
        return episode_cost(c.cost_usd for c in self.calls)

    def parsed(self, pool: PoolSpec | None = None):
        return parse(self.response, pool)


def truncate_tokens(text: str, max_tokens: int, tokenizer: Tokenizer | None) -> str:
    """Keep the first `max_tokens` tokens (whitespace words without a tokenizer)."""
    if tokenizer is None:
        words = text.split()
        return text if len(words) <= max_tokens else " ".join(words[:max_tokens]) + " ..."
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True) + " ..."


def error_information(result: CallResult) -> str:
    """What the router reads when a call fails: plain text, never an exception."""
    return f"[call to {result.model} failed: {result.status.value}: {result.error or 'no detail'}]"


async def _maybe_await(x):
    return await x if inspect.isawaitable(x) else x


async def run_episodes(episodes: list[Episode], generate: GenerateFn, call: CallFn,
                       cfg: EpisodeConfig, pool: PoolSpec | None = None,
                       tokenizer: Tokenizer | None = None,
                       pass_episode_id: bool = False, max_context: int | None = None,
                       batch_wait_s: float | None = None) -> list[Episode]:
    """Play every episode to the end (see module docstring). Mutates and returns `episodes`.

    With `batch_wait_s` set, episodes do not wait for each other: an episode whose routed call
    has returned joins the next generation batch while slower calls are still out (continuous
    batching over episodes). Each batch takes every episode ready to generate, after waiting at
    most `batch_wait_s` for calls about to return, and a synchronous `generate` runs in a worker
    thread while calls are out, so they can return meanwhile. With None (the default) every batch
    waits for every call: one turn of every live episode per batch, whatever the timing, so a
    run repeats exactly (which batch an episode is in decides its sampling noise).

    Token mode needs `tokenizer` (to decode, and to encode inserted information once). With
    `max_context`, an episode whose context leaves no room for another `max_new_tokens` ends
    (truncated) rather than letting the engine cut its context: the learner must see the same
    context the sampler saw. With `pass_episode_id`, calls are `call(model, query,
    episode_id=uid)`, so a pool can attribute each call (ledger, budgets) to its episode."""
    token_mode = bool(episodes) and all(e.token_mode for e in episodes)
    if token_mode and tokenizer is None:
        raise ValueError("token-mode episodes need the tokenizer")
    eos = eos_ids(tokenizer) if token_mode else set()
    order = {id(e): i for i, e in enumerate(episodes)}
    ready = [e for e in episodes if not e.done]  # waiting for a generation
    out: dict[asyncio.Task, Episode] = {}  # routed calls in flight
    try:
        while ready or out:
            if out:
                # Collect the calls that have returned: wait for the first one when nothing is ready,
                # then up to `batch_wait_s` for the rest (no longer, when episodes already wait).
                if batch_wait_s is None:
                    await asyncio.wait(out)
                elif not ready:
                    await asyncio.wait(out, return_when=asyncio.FIRST_COMPLETED)
                pending = [t for t in out if not t.done()]
                if pending and batch_wait_s:
                    await asyncio.wait(pending, timeout=batch_wait_s)
                for t in [t for t in out if t.done()]:
                    e = out.pop(t)
                    _insert(e, t.result(), cfg, tokenizer, token_mode)
                    ready.append(e)
                ready.sort(key=lambda e: order[id(e)])
            if token_mode and max_context is not None:
                for e in ready:
                    if len(e.context_ids) + cfg.max_new_tokens > max_context:
                        e.done = e.truncated = True
                        e.meta["context_full"] = True
                ready = [e for e in ready if not e.done]
            if not ready:
                continue
            batch, ready = ready, []
            t0 = time.perf_counter()
            contexts = [e.context_ids if token_mode else e.context for e in batch]
            outs = await _generate(generate, contexts, in_thread=bool(out))
            if len(outs) != len(batch):
                raise RuntimeError(f"generate returned {len(outs)} generations for {len(batch)} prompts")
            gen_s = time.perf_counter() - t0
            for e, g in zip(batch, outs):
                e.meta["generate_s"] = e.meta.get("generate_s", 0.0) + gen_s
                seg, stop = _policy_segment(g, token_mode, tokenizer, eos)
                e.segments.append(seg)
                e.turns += 1
                if stop == "</search>" and e.turns <= cfg.max_turns:
                    route = _route(e, cut_at_stop(seg.text)[0], call, pool, pass_episode_id)
                    out[asyncio.ensure_future(route)] = e
                else:
                    # An answer, a route past the turn limit, or a generation that never stopped.
                    e.done = True
                    e.truncated = stop != "</answer>"
    finally:
        for t in out:  # an engine error ends the batch: no call is left running behind it
            t.cancel()
    return episodes


async def _generate(generate: GenerateFn, contexts: list, in_thread: bool) -> list:
    """One batched generation. A synchronous engine runs in a worker thread while calls are in
    flight (they return meanwhile), inline otherwise (the same thread as ever: same numerics)."""
    if in_thread and not inspect.iscoroutinefunction(generate):
        return await _maybe_await(await asyncio.to_thread(generate, contexts))
    return await _maybe_await(generate(contexts))


def _insert(e: Episode, res: CallResult, cfg: EpisodeConfig, tokenizer: Tokenizer | None, token_mode: bool) -> None:
    """A returned call: its reply (or its failure, as text) inserted as an <information> block."""
    e.calls.append(res)
    body = res.text if res.ok else error_information(res)
    text = information_block(truncate_tokens(body, cfg.max_obs_tokens, tokenizer))
    ids = tokenizer.encode(text, add_special_tokens=False) if token_mode else []
    e.segments.append(Segment(text, "information", ids, [0.0] * len(ids)))


def _policy_segment(out: Generation | str, token_mode: bool, tokenizer,
                    eos: set[int]) -> tuple[Segment, str | None]:
    """The policy's turn as a segment, and the stop string that ended it (None: no stop)."""
    if not token_mode:
        text = out.text if isinstance(out, Generation) else out
        text, stop = cut_at_stop(text)
        return Segment(text, "policy"), stop
    if not isinstance(out, Generation) or (out.text and not out.ids):
        raise RuntimeError("a token-mode episode needs an engine that returns token ids "
                           "(router_r1.env.generation)")
    g = cut_generation(out, tokenizer, STOP_STRINGS, eos)
    if g.logprobs and len(g.logprobs) != len(g.ids):
        raise RuntimeError(f"engine returned {len(g.ids)} ids but {len(g.logprobs)} log-probs")
    logprobs = g.logprobs or [0.0] * len(g.ids)
    return Segment(g.text, "policy", list(g.ids), list(logprobs)), (g.stop if g.stop in STOP_STRINGS else None)


async def _route(e: Episode, policy_text: str, call: CallFn, pool: PoolSpec | None,
                 pass_episode_id: bool = False) -> CallResult:
    blocks = parse(policy_text).blocks
    searches = [b for b in blocks if b.tag == "search"]
    if not searches:  # '</search>' with no opening tag: nothing to call
        return CallResult.failure("?", CallStatus.UNKNOWN_MODEL, "route has no <search> opening tag")
    r = parse_route(searches[-1].content)
    if not r.ok:
        return CallResult.failure(r.model or "?", CallStatus.UNKNOWN_MODEL,
                                  "malformed route: expected 'Model-Name: sub-question'")
    e.routes.append((r.model, r.query))
    if pool is not None and pool.resolve(r.model) is None:
        return CallResult.failure(r.model, CallStatus.UNKNOWN_MODEL,
                                  f"no model named {r.model!r}; choose one of {', '.join(pool.names)}")
    try:
        if pass_episode_id:
            return await call(r.model, r.query, episode_id=e.uid)
        return await call(r.model, r.query)
    except Exception as ex:  # a caller's bug must not end the batch; the router sees an error
        return CallResult.failure(r.model, CallStatus.BAD_RESPONSE, f"{type(ex).__name__}: {ex}")


@dataclass
class TokenizedEpisode:
    """Token ids of an episode, ready for the learner.

    prompt_ids: the prompt. response_ids: policy and information tokens in order.
    loss_mask: 1 for tokens the policy generated, 0 for inserted information (never trained on).
    logprobs: the sampler's log-prob of each response token (empty for demonstrations).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float] = field(default_factory=list)


def episode_tokens(e: Episode, max_response_tokens: int | None = None) -> TokenizedEpisode:
    """A token-mode episode's ids exactly as sampled and inserted: nothing is encoded here."""
    if not e.token_mode or any(s.text and not s.ids for s in e.segments):
        raise ValueError(f"episode {e.uid} has no token ids: it was not played in token mode")
    ids = [t for s in e.segments for t in s.ids]
    mask = [1 if s.origin == "policy" else 0 for s in e.segments for _ in s.ids]
    lps = [lp for s in e.segments for lp in (s.logprobs or [0.0] * len(s.ids))]
    if max_response_tokens is not None:
        ids, mask, lps = ids[:max_response_tokens], mask[:max_response_tokens], lps[:max_response_tokens]
    return TokenizedEpisode(list(e.prompt_ids), ids, mask, lps)


def tokenize_trace(e: Episode, tokenizer: Tokenizer, max_response_tokens: int | None = None) -> TokenizedEpisode:
    """A demonstration (a warm-start trace written as text, never sampled), encoded segment by
    segment so each token's origin is exact. Sampled episodes use `episode_tokens` instead."""
    p_ids = e.prompt_ids or tokenizer.encode(e.prompt, add_special_tokens=False)
    ids: list[int] = []
    mask: list[int] = []
    for s in e.segments:
        seg = s.ids or tokenizer.encode(s.text, add_special_tokens=False)
        ids.extend(seg)
        mask.extend([1 if s.origin == "policy" else 0] * len(seg))
    if max_response_tokens is not None:
        ids, mask = ids[:max_response_tokens], mask[:max_response_tokens]
    return TokenizedEpisode(p_ids, ids, mask)
