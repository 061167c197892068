"""Answering one chat request with the router: check it, render the prompt, play the episode,
account for every token and cent. Ray-free.

The Serve deployment (deployments/router.py) is a thin shell around `RouterService`: it supplies a
batched `generate_one` (one router turn; Serve groups concurrent turns into one generation) and
the shared ModelPool's `call`. Everything a client sees is decided here, so it is tested without
Ray as well as through HTTP.

Status of a finished episode (the router may answer on its own, so failures only matter when
every routed call failed): all failures budget refusals by the pool -> 402; any candidate
unavailable (down, timed out, circuit open, cut by the deadline) -> 503 naming them; calls refused
by the request's own `max_cost_usd` are the client's choice and still give 200.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from deployments.openai_api import APIError, ChatCompletionRequest, usage_dict
from router_r1.env.episode import Episode, EpisodeConfig, run_episodes
from router_r1.env.generation import Generation
from router_r1.env.prompt import PromptOptions, render_prompt_ids
from router_r1.env.protocol import parse, parse_route
from router_r1.infra.config import ServeConfig
from router_r1.pool.cost import call_cost, estimate_prompt_tokens
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.types import CallFn, CallResult, CallStatus

GenParams = tuple[float, float, int]  # temperature, top_p, max_new_tokens: one batch group
GenerateOne = Callable[[list[int], GenParams], Awaitable[Generation]]  # one turn from context ids
EventSink = Callable[[dict[str, Any]], None]

# A call that ended like this says the candidate could not answer (now).
UNAVAILABLE = {CallStatus.TIMEOUT, CallStatus.CONNECTION_ERROR, CallStatus.HTTP_ERROR,
               CallStatus.RATE_LIMITED, CallStatus.CIRCUIT_OPEN, CallStatus.BAD_RESPONSE,
               CallStatus.CANCELLED, CallStatus.NOT_CONFIGURED, CallStatus.NOT_SENT,
               CallStatus.OUTCOME_UNKNOWN}
REQUEST_CAP = "request"  # CallResult.meta["budget_scope"] of refusals by this request's own cap


@dataclass
class Plan:
    """A checked request, ready to run."""

    request_id: str
    tenant: str
    question: str
    prompt: str  # rendered by router_r1.env.prompt.render_prompt_ids with the checkpoint's options
    prompt_ids: list[int]  # what the router conditions on
    pool: PoolSpec  # the candidates this request may use
    allowed: list[str] | None  # display names, None = the whole pool
    episode: EpisodeConfig
    gen: GenParams
    max_cost_usd: float | None
    return_trace: bool
    started: float  # time.time()
    deadline: float  # time.time() by which the response must be complete
    call_deadline: float  # candidate calls end by then, leaving the router time to answer


@dataclass
class Outcome:
    plan: Plan
    episode: Episode
    answer: str
    finish_reason: str  # "stop": the router answered; "length": turn or token limit hit
    router_prompt_tokens: int
    router_completion_tokens: int
    latency_s: float

    @property
    def calls(self) -> list[CallResult]:
        return self.episode.calls

    @property
    def cost_usd(self) -> float:
        return self.episode.cost_usd

    def usage(self) -> dict[str, int]:
        """Router tokens plus every candidate call's billed tokens."""
        return usage_dict(self.router_prompt_tokens + sum(c.prompt_tokens for c in self.calls),
                          self.router_completion_tokens + sum(c.completion_tokens for c in self.calls))

    def extra(self) -> dict[str, Any]:
        """The `router_r1` field: cost always; the route trace when the request asked for it."""
        out: dict[str, Any] = {"cost_usd": self.cost_usd, "tenant": self.plan.tenant,
                               "turns": self.episode.turns, "latency_s": round(self.latency_s, 4),
                               "router_usage": usage_dict(self.router_prompt_tokens,
                                                          self.router_completion_tokens)}
        if self.plan.return_trace:
            out["trace"] = [step_dict(c, q) for c, q in zip(self.calls, _queries(self.episode))]
            out["router_text"] = self.episode.response
        return out


def step_dict(c: CallResult, query: str) -> dict[str, Any]:
    """One routed call as the client sees it."""
    return {"model": c.model, "query": query, "status": c.status.value,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "cost_usd": c.cost_usd, "latency_s": round(c.latency_s, 4), "cache_hit": c.cache_hit,
            "served_by": c.served_by, "error": c.error}


def _queries(e: Episode) -> list[str]:
    """The sub-query of each call in `e.calls`, read from the policy turn before each inserted
    information block (a malformed route yields its raw text)."""
    out = []
    for k, seg in enumerate(e.segments):
        if seg.origin != "information" or k == 0:
            continue
        searches = [b for b in parse(e.segments[k - 1].text).blocks if b.tag == "search"]
        if not searches:
            out.append("")
            continue
        r = parse_route(searches[-1].content)
        out.append(r.query if r.ok else r.raw.strip())
    return out


@dataclass
class _Spend:
    """What this request's calls have cost so far (for its `max_cost_usd`)."""

    usd: float = 0.0
    calls: int = 0


class RouterService:
    """Turns a `ChatCompletionRequest` into an `Outcome` (or an `APIError`)."""

    def __init__(self, pool: PoolSpec, serve: ServeConfig, episode: EpisodeConfig, tokenizer,
                 generate_one: GenerateOne, call: CallFn, *, prompt_options: PromptOptions = PromptOptions(),
                 run_id: str = "serve", clock: Callable[[], float] = time.time,
                 max_context: int | None = None):
        """`prompt_options`: those the router was trained with (router_r1.env.prompt.load_prompt_options).
        `max_context`: the engine's context window in tokens (a longer prompt is a 413)."""
        self.pool, self.cfg, self.episode_cfg, self.tokenizer = pool, serve, episode, tokenizer
        self._generate_one, self._call = generate_one, call
        self.prompt_options, self.run_id, self._clock = prompt_options, run_id, clock
        self.max_context = max_context

    # -- checking ------------------------------------------------------------------------------
    def plan(self, req: ChatCompletionRequest, tenant: str) -> Plan:
        """Every check that needs no model: raises `APIError` (400/404/413) or returns a Plan."""
        cfg = self.cfg
        if req.model.strip().casefold() != cfg.model_name.casefold():
            raise APIError(404, f"the model '{req.model}' does not exist; this server serves "
                           f"'{cfg.model_name}'", param="model", code="model_not_found")
        question = req.question()
        if len(question) > cfg.max_prompt_chars:
            raise APIError(413, f"the last user message has {len(question)} characters; the limit is "
                           f"{cfg.max_prompt_chars}", param="messages", code="context_length_exceeded")
        pool, allowed = self.pool, None
        if req.models is not None:
            unknown = [m for m in req.models if self.pool.resolve(m) is None]
            if unknown:
                raise APIError(404, f"unknown candidate model(s) {unknown}; available: "
                               f"{self.pool.names}", param="models", code="model_not_found")
            pool = self.pool.subset(req.models)
            allowed = pool.names
        max_turns = self.episode_cfg.max_turns if req.max_turns is None else req.max_turns
        if max_turns > cfg.max_turns_limit:
            raise APIError(400, f"max_turns={max_turns} is above this server's limit of "
                           f"{cfg.max_turns_limit}", param="max_turns", code="invalid_value")
        max_new = req.max_tokens or req.max_completion_tokens or self.episode_cfg.max_new_tokens
        if max_new > cfg.max_new_tokens_limit:
            raise APIError(400, f"max_tokens={max_new} per router turn is above this server's limit "
                           f"of {cfg.max_new_tokens_limit}", param="max_tokens", code="invalid_value")
        temperature = cfg.temperature if req.temperature is None else req.temperature
        top_p = self.episode_cfg.top_p if req.top_p is None else req.top_p
        now = self._clock()
        timeout = cfg.request_timeout_s
        prompt, prompt_ids = render_prompt_ids(self.tokenizer, pool, question, self.prompt_options)
        if self.max_context is not None and len(prompt_ids) + max_new > self.max_context:
            # Counted in tokens: a prompt the window cannot hold would be answered from garbage.
            raise APIError(413, f"the prompt is {len(prompt_ids)} tokens and a router turn needs up to "
                           f"{max_new} more; the router's context window is {self.max_context} tokens",
                           param="messages", code="context_length_exceeded")
        return Plan(
            request_id=uuid.uuid4().hex, tenant=tenant, question=question, prompt=prompt,
            prompt_ids=prompt_ids, pool=pool, allowed=allowed,
            episode=self.episode_cfg.model_copy(update={"max_turns": max_turns, "max_new_tokens": max_new,
                                                        "temperature": temperature, "top_p": top_p}),
            gen=(float(temperature), float(top_p), int(max_new)), max_cost_usd=req.max_cost_usd,
            return_trace=req.return_trace, started=now, deadline=now + timeout,
            call_deadline=now + timeout * (1.0 - cfg.answer_reserve_fraction))

    # -- running -------------------------------------------------------------------------------
    async def run(self, plan: Plan, on_event: EventSink | None = None) -> Outcome:
        """Play the episode within the request deadline; raises APIError 402/503/504."""
        episode = Episode(uid=plan.request_id, question=plan.question, golden_answers=[],
                          prompt=plan.prompt, prompt_ids=list(plan.prompt_ids))
        spend = _Spend()
        emit = on_event or (lambda ev: None)

        async def generate(contexts: list[list[int]]) -> list[Generation]:
            return list(await asyncio.gather(*(self._generate_one(c, plan.gen) for c in contexts)))

        async def call(model: str, query: str) -> CallResult:
            step = spend.calls
            spend.calls += 1
            emit({"type": "route", "step": step, "model": model, "query": query})
            res = await self._guarded_call(plan, spend, model, query)
            spend.usd += res.cost_usd
            emit({"type": "call_result", "step": step, **step_dict(res, query)})
            return res

        remaining = plan.deadline - self._clock()
        try:
            await asyncio.wait_for(run_episodes([episode], generate, call, plan.episode, pool=plan.pool,
                                                tokenizer=self.tokenizer), remaining)
        except asyncio.TimeoutError:
            raise APIError(504, f"the router did not finish within request_timeout_s="
                           f"{self.cfg.request_timeout_s:g}s", type="server_error", code="timeout") from None
        outcome = self._outcome(plan, episode)
        check_calls(outcome)
        return outcome

    async def _guarded_call(self, plan: Plan, spend: _Spend, model: str, query: str) -> CallResult:
        """The pool call, refused when this request's cost cap would be passed and cut at the
        call deadline even if the pool were to ignore it."""
        desc = plan.pool.resolve(model)
        name = desc.name if desc else model
        if plan.max_cost_usd is not None and desc is not None:
            estimate = call_cost(desc, estimate_prompt_tokens([{"role": "user", "content": query}]),
                                 desc.backend.max_tokens)
            if spend.usd + estimate > plan.max_cost_usd:
                return CallResult.failure(
                    name, CallStatus.BUDGET_EXCEEDED,
                    f"this request's max_cost_usd={plan.max_cost_usd:g} would be exceeded (spent "
                    f"{spend.usd:.6f}, next call estimated at up to {estimate:.6f})",
                    meta={"budget_scope": REQUEST_CAP})
        remaining = plan.call_deadline - self._clock()
        if remaining <= 0:
            return CallResult.failure(name, CallStatus.CANCELLED, "request deadline reached before the call")
        try:
            # The pool honours deadline_s itself; the extra second only covers the trip back.
            return await asyncio.wait_for(
                self._call(model, query, run_id=self.run_id, episode_id=plan.request_id,
                           tenant=plan.tenant, allowed_models=plan.allowed,
                           deadline_s=plan.call_deadline), remaining + 1.0)
        except asyncio.TimeoutError:
            return CallResult.failure(name, CallStatus.CANCELLED,
                                      "the candidate did not answer before the request deadline")
        except Exception as e:  # the pool actor died or is unreachable: a typed failure, not a 500
            return CallResult.failure(name, CallStatus.CONNECTION_ERROR,
                                      f"model pool unreachable: {type(e).__name__}: {e}")

    def _outcome(self, plan: Plan, episode: Episode) -> Outcome:
        # Token mode: the router's own ids, as sampled (completion) and as read (prompt + information).
        generated = sum(len(s.ids) for s in episode.segments if s.origin == "policy")
        inserted = sum(len(s.ids) for s in episode.segments if s.origin != "policy")
        answer = parse(episode.response).answer
        return Outcome(plan=plan, episode=episode, answer=answer or "",
                       finish_reason="stop" if answer is not None and not episode.truncated else "length",
                       router_prompt_tokens=len(episode.prompt_ids) + inserted,
                       router_completion_tokens=generated, latency_s=self._clock() - plan.started)


def check_calls(outcome: Outcome) -> None:
    """Raise 402/503 when every routed call failed for budget or availability (module docstring)."""
    calls = outcome.calls
    if not calls or any(c.ok for c in calls):
        return
    budget = [c for c in calls if c.status is CallStatus.BUDGET_EXCEEDED
              and c.meta.get("budget_scope") != REQUEST_CAP]
    down = [c for c in calls if c.status in UNAVAILABLE]
    if down:
        names = sorted({c.model for c in down})
        detail = "; ".join(f"{c.model}: {c.status.value} ({c.error})" for c in down)
        raise APIError(503, f"no candidate model could answer: {', '.join(names)} unavailable. {detail}",
                       type="service_unavailable", param=None, code="models_unavailable")
    if budget:
        raise APIError(402, f"budget exhausted for tenant '{outcome.plan.tenant}': "
                       f"{budget[0].error}", type="insufficient_quota", code="insufficient_quota")
