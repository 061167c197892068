"""The multi-round episode machine: batched generation, routed calls, inserted information.

Ray-free. Given a batched `generate(prompts) -> texts` (it should stop at </search> or
</answer>; anything past the first stop is cut here anyway) and an async
`call(model, query) -> CallResult`, `run_episodes` plays a batch of episodes to the end:

    generate for every live episode -> cut at stop -> answer? done : route? call all in parallel
    -> insert <information> -> next turn

After `max_turns` routed turns one last turn is generated; an episode that still does not
answer ends without an answer (a format violation, scored as such). Every piece of text is kept
as a `Segment` with its origin, so the learner can mask inserted information out of the loss.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from router_r1.cost import episode_cost
from router_r1.descriptors import PoolSpec
from router_r1.protocol import cut_at_stop, information_block, parse, parse_route
from router_r1.types import CallResult, CallStatus

Origin = Literal["policy", "information"]
GenerateFn = Callable[[list[str]], "list[str] | Awaitable[list[str]]"]
CallFn = Callable[[str, str], Awaitable[CallResult]]


class EpisodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=4, ge=0)  # routed calls before the forced final turn
    max_obs_tokens: int = Field(default=256, ge=1)  # inserted reply truncated to this many tokens
    max_new_tokens: int = Field(default=128, ge=1)  # per generation turn
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class Segment:
    text: str
    origin: Origin


@dataclass
class Episode:
    """One question's trajectory. `prompt` is the full rendered prompt the policy conditions on."""

    uid: str
    question: str
    golden_answers: list[str]
    prompt: str
    segments: list[Segment] = field(default_factory=list)
    calls: list[CallResult] = field(default_factory=list)
    routes: list[tuple[str, str]] = field(default_factory=list)  # (model as written, query)
    turns: int = 0
    done: bool = False
    truncated: bool = False  # ended by the turn limit or a generation without a stop
    policy_version: int = -1
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def response(self) -> str:
        """Everything after the prompt: policy text and inserted information."""
        return "".join(s.text for s in self.segments)

    @property
    def context(self) -> str:
        return self.prompt + self.response

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
                       pass_episode_id: bool = False) -> list[Episode]:
    """Play every episode to the end (see module docstring). Mutates and returns `episodes`.

    With `pass_episode_id`, calls are `call(model, query, episode_id=uid)`, so a pool can
    attribute each call (ledger, budgets) to its episode."""
    for turn in range(cfg.max_turns + 1):
        live = [e for e in episodes if not e.done]
        if not live:
            break
        t0 = time.perf_counter()
        outs = await _maybe_await(generate([e.context for e in live]))
        if len(outs) != len(live):
            raise RuntimeError(f"generate returned {len(outs)} texts for {len(live)} prompts")
        gen_s = time.perf_counter() - t0
        pending: list[tuple[Episode, Awaitable[CallResult]]] = []
        for e, out in zip(live, outs):
            e.meta["generate_s"] = e.meta.get("generate_s", 0.0) + gen_s
            text, stop = cut_at_stop(out)
            e.segments.append(Segment(text, "policy"))
            e.turns += 1
            if stop == "</search>" and turn < cfg.max_turns:
                pending.append((e, _route(e, text, call, pool, pass_episode_id)))
            else:
                # An answer, a route past the turn limit, or a generation that never stopped.
                e.done = True
                e.truncated = stop != "</answer>"
        results = await asyncio.gather(*(c for _, c in pending))
        for (e, _), res in zip(pending, results):
            e.calls.append(res)
            body = res.text if res.ok else error_information(res)
            e.segments.append(Segment(information_block(
                truncate_tokens(body, cfg.max_obs_tokens, tokenizer)), "information"))
    return episodes


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
    """

    prompt_ids: list[int]
    response_ids: list[int]
    loss_mask: list[int]


def tokenize_episode(e: Episode, tokenizer: Tokenizer, max_response_tokens: int | None = None,
                     prompt_ids: list[int] | None = None) -> TokenizedEpisode:
    """Tokenise segment by segment, so each token's origin is exact."""
    p_ids = prompt_ids if prompt_ids is not None else tokenizer.encode(e.prompt, add_special_tokens=False)
    ids: list[int] = []
    mask: list[int] = []
    for s in e.segments:
        seg = tokenizer.encode(s.text, add_special_tokens=False)
        ids.extend(seg)
        mask.extend([1 if s.origin == "policy" else 0] * len(seg))
    if max_response_tokens is not None:
        ids, mask = ids[:max_response_tokens], mask[:max_response_tokens]
    return TokenizedEpisode(p_ids, ids, mask)
