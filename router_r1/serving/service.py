"""Answering one chat request with the router: check it, render the prompt, play the episode,
account for every token and cent. Ray-free.

The Serve deployment (deployments/router.py) is a thin shell around `RouterService`: it supplies a
batched `generate_one` (one router turn; Serve groups concurrent turns into one generation) and
the shared ModelPool's `call`. Everything a client sees is decided here, so it is tested without
Ray as well as through HTTP.

The answer: the router's last `<answer>` block. On the final turn (after `max_turns` routed
calls, so at once with `max_turns=0`) the router must answer; if it routes again or stops
without an answer, the server appends `<answer>` to its context and lets it write the answer:
what it writes up to its first tag (`router_r1.forced_answer: true`, `format_ok: false`). The OpenAI bounds then apply to the answer alone: cut before the
first `stop` string (finish_reason "stop"), then to `max_tokens` tokens (finish_reason "length").

Status of a finished episode (the router may answer on its own, so failures only matter when
every routed call failed): all failures budget refusals by the pool -> 429 (`insufficient_quota`, as OpenAI's); any candidate
unavailable (down, timed out, circuit open, cut by the deadline) -> 503 naming them; calls refused
by the request's own `max_cost_usd` are the client's choice and still give 200.

No silent failure: an episode that ends without a valid answer (none, empty, or holding protocol
markup, even after the forced final turn) is answered by `serve.fallback_model`, a pool model
sent the conversation itself (`router_r1.fallback: true`, `format_ok: false`, the call in the
trace and the cost); without one, or when the fallback fails too, it is a 502
(`router_no_answer`). A 200 never carries empty content or the router's markup.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from router_r1.serving.generation import GenParams
from router_r1.serving.openai_api import APIError, ChatCompletionRequest, usage_dict
from router_r1.env.episode import Episode, EpisodeConfig, Segment, run_episodes
from router_r1.env.generation import Generation, cut_generation, eos_ids
from router_r1.env.prompt import PromptOptions, conversation_block, fit_history, render_prompt_ids
from router_r1.env.protocol import STOP_STRINGS, first_tag, parse, parse_route
from router_r1.infra.config import ServeConfig
from router_r1.pool.cost import call_cost, episode_cost, estimate_prompt_tokens
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.types import CallFn, CallResult, CallStatus

# One turn from context ids: (context, gen) or, when streaming, (context, gen, on_token) where
# on_token(token_id) hears each sampled token (router_r1.serving.generation.TokenSink).
GenerateOne = Callable[..., Awaitable[Generation]]
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
    answer_max_tokens: int | None = None  # the request's max_tokens / max_completion_tokens
    stops: tuple[str, ...] = ()  # the request's stop strings, applied to the answer
    seed: int | None = None  # the request's seed: each router turn's sampling is seeded from it
    end_user: str | None = None  # the request's user (ledger: end_user)
    dropped: tuple[str, ...] = ()  # fields left out under serve.drop_params
    messages: list[dict[str, str]] | None = None  # the conversation, as a fallback model is sent it
    history: list[dict[str, str]] | None = None  # the earlier turns the router's prompt holds

    def gen_for(self, turn: int) -> GenParams:
        """The sampling parameters of router turn `turn` (its own seed when the request has one)."""
        t, p, n, _ = self.gen
        seed = None if self.seed is None or t == 0 else (self.seed * 1_000_003 + turn) % (2 ** 63)
        return (t, p, n, seed)


@dataclass
class Outcome:
    plan: Plan
    episode: Episode
    answer: str
    finish_reason: str  # "stop": the router answered; "length": cut at max_tokens, or no answer
    router_prompt_tokens: int
    router_completion_tokens: int
    latency_s: float
    format_ok: bool = True  # the router's text follows the protocol
    forced_answer: bool = False  # the answer was forced on the final turn
    fallback: CallResult | None = None  # the fallback model's call, when the router gave no answer

    @property
    def calls(self) -> list[CallResult]:
        """Every billed candidate call: the routed ones, then the fallback's."""
        return self.episode.calls + ([self.fallback] if self.fallback is not None else [])

    @property
    def cost_usd(self) -> float:
        return episode_cost(c.cost_usd for c in self.calls)

    def usage(self) -> dict[str, int]:
        """Router tokens plus every candidate call's billed tokens."""
        return usage_dict(self.router_prompt_tokens + sum(c.prompt_tokens for c in self.calls),
                          self.router_completion_tokens + sum(c.completion_tokens for c in self.calls))

    def extra(self) -> dict[str, Any]:
        """The `router_r1` field: cost always; the route trace when the request asked for it."""
        out: dict[str, Any] = {"cost_usd": self.cost_usd, "tenant": self.plan.tenant,
                               "turns": self.episode.turns, "latency_s": round(self.latency_s, 4),
                               "router_usage": usage_dict(self.router_prompt_tokens,
                                                          self.router_completion_tokens),
                               "format_ok": self.format_ok, "forced_answer": self.forced_answer,
                               "fallback": self.fallback is not None,
                               "models_called": [c.model for c in self.calls],
                               "history_turns": len(self.plan.history or [])}
        if self.plan.end_user is not None:
            out["end_user"] = self.plan.end_user
        if self.plan.return_trace:
            out["trace"] = [step_dict(c, q) for c, q in zip(self.episode.calls, _queries(self.episode))]
            if self.fallback is not None:
                out["trace"].append({**step_dict(self.fallback, FALLBACK_QUERY), "fallback": True})
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
                 max_context: int | None = None, on_outcome: Callable[[Outcome], None] | None = None):
        """`prompt_options`: those the router was trained with (router_r1.env.prompt.load_prompt_options).
        `max_context`: the engine's context window in tokens (a longer prompt is a 400,
        `context_length_exceeded`). `on_outcome`: told of every played episode, answered or
        refused after playing (metrics: its calls were made and billed either way)."""
        self.pool, self.cfg, self.episode_cfg, self.tokenizer = pool, serve, episode, tokenizer
        self._generate_one, self._call = generate_one, call
        self.prompt_options, self.run_id, self._clock = prompt_options, run_id, clock
        self.max_context = max_context
        self._on_outcome = on_outcome

    # -- checking ------------------------------------------------------------------------------
    def plan(self, req: ChatCompletionRequest, tenant: str) -> Plan:
        """Every check that needs no model: raises `APIError` (400/404) or returns a Plan."""
        cfg = self.cfg
        if req.model.strip().casefold() != cfg.model_name.casefold():
            raise APIError(404, f"the model '{req.model}' does not exist; this server serves "
                           f"'{cfg.model_name}'", param="model", code="model_not_found")
        question = req.question()
        if len(question) > cfg.max_prompt_chars:
            raise APIError(400, f"the last user message has {len(question)} characters; the limit is "
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
        max_new = req.max_turn_tokens or self.episode_cfg.max_new_tokens
        if max_new > cfg.max_new_tokens_limit:
            raise APIError(400, f"max_turn_tokens={max_new} per router turn is above this server's limit "
                           f"of {cfg.max_new_tokens_limit}", param="max_turn_tokens", code="invalid_value")
        temperature = cfg.temperature if req.temperature is None else req.temperature
        top_p = self.episode_cfg.top_p if req.top_p is None else req.top_p
        now = self._clock()
        timeout = cfg.request_timeout_s
        reads_history = cfg.conversation == "on" or (cfg.conversation == "auto" and self.prompt_options.conversation)
        prompt, prompt_ids, history = self._render(pool, question, history_of(req) if reads_history else [], max_new)
        if self.max_context is not None and len(prompt_ids) + max_new > self.max_context:
            # Counted in tokens: a prompt the window cannot hold would be answered from garbage.
            raise APIError(400, f"the prompt is {len(prompt_ids)} tokens and a router turn needs up to "
                           f"{max_new} more; the router's context window is {self.max_context} tokens",
                           param="messages", code="context_length_exceeded")
        return Plan(
            request_id=uuid.uuid4().hex, tenant=tenant, question=question, prompt=prompt,
            prompt_ids=prompt_ids, pool=pool, allowed=allowed,
            episode=self.episode_cfg.model_copy(update={"max_turns": max_turns, "max_new_tokens": max_new,
                                                        "temperature": temperature, "top_p": top_p}),
            gen=(float(temperature), float(top_p), int(max_new), None), max_cost_usd=req.max_cost_usd,
            return_trace=req.return_trace, started=now, deadline=now + timeout,
            call_deadline=now + timeout * (1.0 - cfg.answer_reserve_fraction),
            answer_max_tokens=req.answer_max_tokens, stops=tuple(req.stops), seed=req.seed,
            end_user=req.end_user, dropped=tuple(req.dropped), messages=conversation(req), history=history)

    def _render(self, pool: PoolSpec, question: str, history: list[dict[str, str]],
                max_new: int) -> tuple[str, list[int], list[dict[str, str]]]:
        """The prompt over as much of the conversation as fits (router_r1.env.prompt.fit_history:
        oldest user/assistant turns cut first, system turns last): the history's own tokens
        within `serve.max_history_tokens`, and the whole prompt leaving one router turn of room
        in the context window."""
        cap, window = self.cfg.max_history_tokens, self.max_context

        def fits(turns: list[dict[str, str]]) -> bool:
            block = conversation_block(turns)
            if len(self.tokenizer.encode(block, add_special_tokens=False)) > cap:
                return False
            if window is None:
                return True
            return len(render_prompt_ids(self.tokenizer, pool, question, self.prompt_options, turns)[1]) + max_new <= window

        kept = fit_history(history[-MAX_HISTORY_TURNS:], fits) if history else []
        prompt, ids = render_prompt_ids(self.tokenizer, pool, question, self.prompt_options, kept)
        return prompt, ids, kept

    # -- running -------------------------------------------------------------------------------
    async def run(self, plan: Plan, on_event: EventSink | None = None) -> Outcome:
        """Play the episode within the request deadline; raises APIError 429/502/503/504."""
        episode = Episode(uid=plan.request_id, question=plan.question, golden_answers=[],
                          prompt=plan.prompt, prompt_ids=list(plan.prompt_ids))
        spend = _Spend()
        emit = on_event or (lambda ev: None)
        turn = [0]
        # Streaming: the answer's text as the router writes it (answer_delta events).
        stream = None if on_event is None else AnswerStream(self.tokenizer, plan, emit)

        async def generate(contexts: list[list[int]]) -> list[Generation]:
            gen = plan.gen_for(turn[0])
            turn[0] += 1
            if stream is None:
                return list(await asyncio.gather(*(self._generate_one(c, gen) for c in contexts)))
            stream.new_turn()
            return [await self._generate_one(contexts[0], gen, stream.sink())]

        async def call(model: str, query: str) -> CallResult:
            step = spend.calls
            spend.calls += 1
            emit({"type": "route", "step": step, "model": model, "query": query})
            res = await self._guarded_call(plan, spend, model, query)
            spend.usd += res.cost_usd
            emit({"type": "call_result", "step": step, **step_dict(res, query)})
            return res

        async def play() -> None:
            await run_episodes([episode], generate, call, plan.episode, pool=plan.pool,
                               tokenizer=self.tokenizer, max_context=self.max_context)
            if valid_answer(parse(episode.response).answer) is None:
                await self._force_answer(plan, episode, turn[0], stream)

        remaining = plan.deadline - self._clock()
        try:
            await asyncio.wait_for(play(), remaining)
        except asyncio.TimeoutError:
            raise APIError(504, f"the router did not finish within request_timeout_s="
                           f"{self.cfg.request_timeout_s:g}s", type="server_error", code="timeout") from None
        outcome = self._outcome(plan, episode)
        try:
            check_calls(outcome)
            if not outcome.answer.strip():
                await self._fall_back(outcome, spend, emit)
            if stream is not None:
                stream.finish(outcome.answer)
        finally:
            if self._on_outcome is not None:
                try:
                    self._on_outcome(outcome)
                except Exception:  # an observer must never fail a request
                    pass
        return outcome

    async def _fall_back(self, outcome: Outcome, spend: "_Spend", emit: EventSink) -> None:
        """No valid answer: the configured fallback model answers the conversation itself
        (`serve.fallback_model`), or the request is a 502. Never a 200 with empty content."""
        plan, model = outcome.plan, self.cfg.fallback_model
        if model is None:
            raise APIError(502, "the router ended without a valid answer and no fallback model is "
                           "configured (serve.fallback_model)", type="server_error", code="router_no_answer")
        step = spend.calls
        emit({"type": "fallback", "step": step, "model": model})
        # The request's own max_tokens bounds the fallback's answer, and so what the pool reserves for it.
        params = {"max_tokens": plan.answer_max_tokens} if plan.answer_max_tokens is not None else None
        res = await self._guarded_call(plan, spend, model, plan.messages or [{"role": "user", "content": plan.question}],
                                       params)
        spend.usd += res.cost_usd
        emit({"type": "call_result", "step": step, "fallback": True, **step_dict(res, FALLBACK_QUERY)})
        outcome.fallback = res
        outcome.format_ok = False
        if not res.ok:
            raise_for_calls([res], plan.tenant)
            raise APIError(502, f"the router ended without a valid answer and the fallback model "
                           f"{res.model} failed: {res.status.value} ({res.error})", type="server_error",
                           code="router_no_answer")
        text, finish = shape_answer(res.text, plan.stops, plan.answer_max_tokens, self.tokenizer)
        if not text.strip():
            raise APIError(502, f"the router ended without a valid answer and the fallback model "
                           f"{res.model} answered nothing", type="server_error", code="router_no_answer")
        outcome.answer, outcome.finish_reason = text, finish
        outcome.latency_s = self._clock() - plan.started

    async def _force_answer(self, plan: Plan, episode: Episode, turn: int,
                            stream: AnswerStream | None = None) -> None:
        """The final turn did not answer: append `<answer>` (unless an answer block is already
        open, whose text so far then starts the answer) and let the router write the answer, up
        to one turn's tokens. The answer is what it wrote up to its first tag."""
        text = episode.response
        open_answer = text.rfind("<answer>") > text.rfind("</answer>")
        carried = text[text.rfind("<answer>") + len("<answer>"):] if open_answer else ""
        prefix = "" if open_answer else FORCE_PREFIX
        ids = list(self.tokenizer.encode(prefix, add_special_tokens=False)) if prefix else []
        context = episode.context_ids + ids
        if self.max_context is not None and len(context) + plan.gen[2] > self.max_context:
            return  # no room left: the episode ends without an answer
        if stream is None:
            out = await self._generate_one(context, plan.gen_for(turn))
        else:
            stream.new_turn(forced=True, carried=carried)
            out = await self._generate_one(context, plan.gen_for(turn), stream.sink())
        g = cut_generation(out, self.tokenizer, STOP_STRINGS, eos_ids(self.tokenizer))
        if ids:
            episode.segments.append(Segment(prefix, "information", ids, [0.0] * len(ids)))
        episode.segments.append(Segment(g.text, "policy", list(g.ids), list(g.logprobs or [0.0] * len(g.ids))))
        episode.turns += 1
        episode.meta["forced_answer"] = carried + g.text

    async def _guarded_call(self, plan: Plan, spend: _Spend, model: str,
                            query: str | list[dict[str, str]], params: dict[str, Any] | None = None) -> CallResult:
        """The pool call (a routed sub-question, or the conversation for the fallback), refused
        when this request's cost cap would be passed and cut at the call deadline even if the
        pool were to ignore it."""
        desc = plan.pool.resolve(model) or self.pool.resolve(model)
        name = desc.name if desc else model
        if isinstance(query, str) and self.cfg.candidate_context == "conversation" and plan.history:
            query = [*plan.history, {"role": "user", "content": query}]  # earlier turns, then the sub-question
            routed = True
        else:
            routed = isinstance(query, str)
        messages = [{"role": "user", "content": query}] if isinstance(query, str) else query
        if plan.max_cost_usd is not None and desc is not None:
            estimate = call_cost(desc, estimate_prompt_tokens(messages),
                                 (params or {}).get("max_tokens", desc.backend.max_tokens))
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
            who = {"end_user": plan.end_user} if plan.end_user is not None else {}
            allowed = plan.allowed if routed else None  # the operator's fallback is always allowed
            return await asyncio.wait_for(
                self._call(model, query, **({"params": params} if params else {}), run_id=self.run_id,
                           episode_id=plan.request_id,
                           tenant=plan.tenant, allowed_models=allowed,
                           deadline_s=plan.call_deadline, **who), remaining + 1.0)
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
        parsed = parse(episode.response, plan.pool)
        forced = episode.meta.get("forced_answer")
        answer = valid_answer(parsed.answer if forced is None else forced)
        text, finish = shape_answer(answer or "", plan.stops, plan.answer_max_tokens, self.tokenizer)
        return Outcome(plan=plan, episode=episode, answer=text,
                       finish_reason=finish if answer is not None else "length",
                       router_prompt_tokens=len(episode.prompt_ids) + inserted,
                       router_completion_tokens=generated, latency_s=self._clock() - plan.started,
                       format_ok=parsed.format_ok and forced is None, forced_answer=forced is not None)


FALLBACK_QUERY = "(the conversation)"  # the trace's query of the fallback call
FORCE_PREFIX = "\n<answer>"  # appended to the router's context when its final turn did not answer


MAX_HISTORY_TURNS = 64  # the most recent turns considered for the router's prompt


def history_of(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The turns before the last user message (the question), as the router's prompt holds them."""
    last = max(i for i, m in enumerate(req.messages) if m.role == "user")
    return conversation_for(req.messages[:last])


def conversation(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The whole conversation as a candidate model is sent it."""
    return conversation_for(req.messages)


def conversation_for(messages: list) -> list[dict[str, str]]:
    """Messages as a candidate model is sent them (text only; developer turns as system turns,
    tool results as user turns)."""
    out = []
    for m in messages:
        text = m.text()
        if not text.strip():
            continue
        if m.role == "tool":
            out.append({"role": "user", "content": f"[tool result] {text}"})
        else:
            out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


def valid_answer(answer: str | None) -> str | None:
    """The answer a client may see: its text up to the first protocol tag (or anything a lenient
    reader would take for one), stripped; None when that is empty."""
    if answer is None:
        return None
    cut = first_tag(answer)
    answer = (answer if cut < 0 else answer[:cut]).strip()
    return answer or None


class AnswerStream:
    """The answer's text as the router writes it, as `answer_delta` events: each turn's tokens are
    decoded as they are sampled, and the text after `<answer>` (all of a forced turn's) is sent
    as far as it can no longer change: held back are leading and trailing space, everything from
    a `<` on (a tag may start there), a tail that may begin a stop string, and, under
    `max_tokens`, the last token. `finish` sends the rest of the final answer, so the deltas add
    up to the response's content; should the final answer not extend what was sent (a fallback,
    a retokenised cut), an `answer_replaced` event carries it whole."""

    def __init__(self, tokenizer, plan: Plan, emit: EventSink):
        self.tokenizer, self.plan, self.emit = tokenizer, plan, emit
        self.sent, self.done, self.forced, self.carried = "", False, False, ""
        self.ids: list[int] = []
        self._loop = asyncio.get_running_loop()

    def new_turn(self, forced: bool = False, carried: str = "") -> None:
        self.ids, self.forced, self.carried = [], forced, carried

    def sink(self) -> Callable[[int], None]:
        """For the engine: called from the generating thread with each sampled token id."""
        return lambda token: self._loop.call_soon_threadsafe(self._token, token)

    def _token(self, token: int) -> None:
        if self.done:
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.forced:
            body = self.carried + text
        else:
            at = text.find("<answer>")
            if at < 0:
                return
            body = text[at + len("<answer>"):]
        ready = self._settled(body)
        if len(ready) > len(self.sent) and ready.startswith(self.sent):
            self.emit({"type": "answer_delta", "text": ready[len(self.sent):]})
            self.sent = ready

    def _settled(self, body: str) -> str:
        s = body.lstrip()
        lt = s.find("<")
        if lt >= 0:
            s = s[:lt]
        stops = [x for x in self.plan.stops if x]
        hits = [i for i in (s.find(x) for x in stops) if i >= 0]
        if hits:
            s, self.done = s[:min(hits)], True
        else:
            for x in stops:  # a tail that may be the start of a stop string waits
                for n in range(min(len(x) - 1, len(s)), 0, -1):
                    if s.endswith(x[:n]):
                        s = s[:-n]
                        break
        s = s.rstrip()
        if self.plan.answer_max_tokens is not None and s:
            ids = self.tokenizer.encode(s, add_special_tokens=False)
            if len(ids) > self.plan.answer_max_tokens:
                self.done = True
            s = self.tokenizer.decode(ids[:min(len(ids) - 1, self.plan.answer_max_tokens)], skip_special_tokens=True)
        return s

    def finish(self, answer: str) -> None:
        if answer.startswith(self.sent):
            if len(answer) > len(self.sent):
                self.emit({"type": "answer_delta", "text": answer[len(self.sent):]})
        else:
            self.emit({"type": "answer_replaced", "answer": answer})
        self.sent, self.done = answer, True


def shape_answer(answer: str, stops: tuple[str, ...] | list[str], max_tokens: int | None,
                 tokenizer) -> tuple[str, str]:
    """The answer under the request's OpenAI bounds: cut before the first stop string, then to
    `max_tokens` tokens of the router's tokenizer. Returns (text, finish_reason)."""
    cut = min((i for i in (answer.find(s) for s in stops if s) if i >= 0), default=-1)
    if cut >= 0:
        answer = answer[:cut]
    if max_tokens is not None:
        ids = tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) > max_tokens:
            return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True), "length"
    return answer, "stop"


def check_calls(outcome: Outcome) -> None:
    """Raise 429/503 when every routed call failed for budget or availability (module docstring)."""
    raise_for_calls(outcome.calls, outcome.plan.tenant)


def raise_for_calls(calls: list[CallResult], tenant: str) -> None:
    """`check_calls` over a list of calls billed to `tenant`."""
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
        raise APIError(429, f"budget exhausted for tenant '{tenant}': "
                       f"{budget[0].error}", type="insufficient_quota", code="insufficient_quota")
