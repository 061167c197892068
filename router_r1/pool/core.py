"""PoolCore: every candidate-model call goes through one pipeline, without Ray.

    validate -> resolve name -> allowed? -> cache (single-flight) -> budget reserve -> circuit
    -> rate limit + concurrency slot -> backend attempt with timeout -> retry with backoff and
    full jitter (honouring Retry-After) -> fallback model -> settle budget -> ledger record

A call never raises to its caller: bad input and every failure end in a typed `CallResult`, and a
`deadline_s` in the context bounds the whole call. Exactly one ledger record of kind "call" is
written per call (refusals and cache hits included, at zero cost), plus one "attempt" record per
failed attempt the provider billed; the call's `CallResult.cost_usd` is the sum of both.

Each attempt's intent is on disk before the attempt is sent (`intents.py`), so a pool restarted
after a crash bills every attempt whose outcome was lost at its capped cost, and `settle_lost`
tells a caller whose reply was lost whether its call was sent. Every text that leaves the pool
(reply, error, meta, ledger) is redacted of the pool's API keys first.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from router_r1.pool.backends import make_backend
from router_r1.pool.backends.base import IDEMPOTENCY_KEY, BackendError, BackendReply, Message, ModelBackend
from router_r1.pool.budget import Budget, Reservation
from router_r1.pool.cache import ResponseCache, cache_key
from router_r1.pool.circuit import CircuitBreaker
from router_r1.pool.cost import call_cost, estimate_prompt_tokens, max_prompt_tokens
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec, env_label
from router_r1.pool.ledger import Ledger
from router_r1.pool.ratelimit import Clock, ModelLimiter, Sleep
from router_r1.pool.request import MAX_NAME, CallContext, InvalidRequest, Request, parse_request
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.stats import ModelStats
from router_r1.pool.types import CallResult, CallStatus
from router_r1.util.redact import redact

log = logging.getLogger("router_r1.pool")

# Failures that say the model is unwell; 429s and 4xx say nothing about its health.
_CIRCUIT_FAILURES = {CallStatus.TIMEOUT, CallStatus.CONNECTION_ERROR, CallStatus.BAD_RESPONSE,
                     CallStatus.HTTP_ERROR}
_NO_FALLBACK = {CallStatus.CANCELLED, CallStatus.INVALID_REQUEST, CallStatus.NOT_SENT}
UNKNOWN = "<unknown>"  # metrics bucket for names outside the pool (a policy can invent many)
CLOCK_SKEW_S = 600.0  # settle_lost: the caller's clock may be this far behind the pool's
MAX_FENCED = 100_000  # call ids settled as not sent, remembered so that they are never sent later


@dataclass
class _ModelState:
    limiter: ModelLimiter
    circuit: CircuitBreaker
    stats: ModelStats = field(default_factory=ModelStats)


class PoolCore:
    """The pool without Ray. One instance per process; `ModelPoolActor` wraps one."""

    def __init__(self, pool: PoolSpec, runtime: PoolRuntimeConfig | None = None, run_id: str = "run",
                 backends: dict[str, ModelBackend] | None = None, *,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep,
                 rng: random.Random | None = None):
        """`backends`: instances by kind, overriding the registry (tests, benchmarks).
        The ledger folder, when set, is rebuilt: totals and budget spend survive restarts."""
        self.pool, self.runtime, self.run_id = pool, runtime or PoolRuntimeConfig(), run_id
        rt = self.runtime
        self.ledger = (Ledger.rebuild(rt.ledger_dir, rt.flush_every, fsync_intents=rt.intent_fsync)
                       if rt.ledger_dir else Ledger(None, rt.flush_every))
        self.journal = self.ledger.journal  # None without a ledger folder: nothing survives a crash
        if self.ledger.reconciled:
            log.warning("model pool %r: %d attempts in flight when a pool stopped had no outcome; "
                        "billed at their capped cost ($%.6f), flagged outcome_unknown", pool.name,
                        len(self.ledger.reconciled), sum(r["cost_usd"] for r in self.ledger.reconciled))
        self.budget = Budget(rt.run_budget_usd, rt.tenant_budgets_usd,
                             spent_by_run={k: v["cost_usd"] for k, v in self.ledger.totals.get("run_id").items()},
                             spent_by_tenant={k: v["cost_usd"] for k, v in self.ledger.totals.get("tenant").items()})
        self.cache = ResponseCache(rt.cache_size) if rt.cache else None
        self._backends: dict[str, ModelBackend] = dict(backends or {})
        self._states: dict[str, _ModelState] = {}
        self._on_record, self._clock, self._sleep = on_record, clock, sleep
        self._rng = rng or random.Random()
        self._unknown_calls = 0
        self._resolved: dict[str, ModelDescriptor] = {}
        self._orphans: set[asyncio.Task] = set()  # stream calls whose consumer went away
        self._inflight: dict[str, int] = {}  # call ids of the calls running now
        self._fenced: OrderedDict[str, None] = OrderedDict()  # settled as not sent: never send them
        self._key_envs = sorted({m.backend.api_key_env for m in pool.models if m.backend.api_key_env})
        # Reported once here and in the actor's info(); each call to such a model then ends
        # NOT_CONFIGURED at once instead of trying the provider without a key.
        self.config_errors = {m.name: f"API key variable {env_label(m.backend.api_key_env)} is not set"
                              for m in pool.models if m.backend.key_missing()}
        if self.config_errors:
            log.warning("model pool %r: %s", pool.name,
                        "; ".join(f"{k}: {v}" for k, v in self.config_errors.items()))

    # -- public API ----------------------------------------------------------------------------
    async def call(self, model: str, messages_or_query: str | list[Message],
                   params: dict[str, Any] | None = None,
                   context: dict[str, Any] | None = None) -> CallResult:
        """One routed call; see the module docstring. Never raises (except the caller's own
        cancellation, which is recorded and re-raised)."""
        t0 = time.perf_counter()
        try:
            return await self._call(model, messages_or_query, params, context, t0)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug past every other guard: still a typed result, never a raise
            log.exception("model pool: internal error")
            asked = model[:MAX_NAME] if isinstance(model, str) else "?"
            res = CallResult.failure(asked, CallStatus.BAD_RESPONSE, f"internal pool error: {type(e).__name__}")
            try:
                return self._invalid(asked, res.error or "", t0, res.status)
            except Exception:  # not even a record could be written: the caller still gets an answer
                return res

    async def _call(self, model: Any, messages_or_query: Any, params: Any, context: Any,
                    t0: float) -> CallResult:
        try:
            req = parse_request(model, messages_or_query, params, context, resolve=self._resolve,
                                run_id=self.run_id, default_params=self.runtime.default_params)
        except InvalidRequest as e:
            return self._invalid(model[:MAX_NAME] if isinstance(model, str) else "?", str(e), t0)
        if req.desc is None:
            return self._finish(req, CallResult.failure(
                req.asked, CallStatus.UNKNOWN_MODEL,
                f"no model named {req.asked!r}; choose one of {', '.join(self.pool.names)}"), t0)
        if not req.ctx.allows(req.desc.name):
            return self._finish(req, CallResult.failure(
                req.desc.name, CallStatus.NOT_ALLOWED, f"model {req.desc.name!r} is not allowed here"), t0)
        cid = req.call_id = req.ctx.call_id or uuid.uuid4().hex
        if cid in self._fenced:  # its caller was told "not sent" after a restart: it never will be
            return self._finish(req, CallResult.failure(
                req.desc.name, CallStatus.NOT_SENT, "this call was already reported not sent; not sending it"), t0)
        self._inflight[cid] = self._inflight.get(cid, 0) + 1
        try:
            return await self._run(req, t0)
        finally:
            n = self._inflight.pop(cid) - 1
            if n:
                self._inflight[cid] = n

    async def _run(self, req: Request, t0: float) -> CallResult:
        assert req.desc is not None
        try:
            deadline = req.ctx.deadline_s
            if deadline is None:
                res = await self._cached(req)
            elif deadline <= time.time():
                res = CallResult.failure(req.desc.name, CallStatus.CANCELLED, "deadline already passed")
            else:
                async with asyncio.timeout(deadline - time.time()):
                    res = await self._cached(req)
        except TimeoutError:
            res = CallResult.failure(req.desc.name, CallStatus.CANCELLED, "deadline passed during the call")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # the caller went away: recorded, then re-raised
                self._finish(req, CallResult.failure(req.desc.name, CallStatus.CANCELLED, "caller went away"), t0)
                raise
            # Nobody cancelled this call: a stray CancelledError is its failure alone.
            res = CallResult.failure(req.desc.name, CallStatus.BAD_RESPONSE, "internal pool error: CancelledError")
        except Exception as e:  # a bug in the pool itself: still a typed result, never a crash
            res = CallResult.failure(req.desc.name, CallStatus.BAD_RESPONSE,
                                     f"internal pool error: {type(e).__name__}: {e}")
        return self._finish(req, res, t0)

    async def _one(self, r: Any) -> CallResult:
        """One item of a batch: a mapping of `call`'s arguments. Never raises, so one bad item
        cannot take the other calls of its batch (or stream) down with it."""
        if not isinstance(r, dict):  # still one call, so still one ledger record
            return self._invalid("?", "a batch item must be a mapping", time.perf_counter())
        return await self.call(r.get("model"), r.get("messages", r.get("query")),
                               r.get("params"), r.get("context"))

    def _invalid(self, asked: str, why: str, t0: float,
                 status: CallStatus = CallStatus.INVALID_REQUEST) -> CallResult:
        """A request that never became a call, recorded as one (INVALID_REQUEST)."""
        req = Request(asked, None, None, None, {}, CallContext(self.run_id))
        return self._finish(req, CallResult.failure(asked, status, why), t0)

    async def call_batch(self, requests: list[dict[str, Any]]) -> list[CallResult]:
        """Many calls at once; each request is {model, query | messages, params?, context?}.
        Whatever one call raises ends that call alone (the batch is only cancelled whole)."""
        outs = await asyncio.gather(*(self._one(r) for r in requests), return_exceptions=True)
        return [o if isinstance(o, CallResult) else _escaped(r, o) for r, o in zip(requests, outs)]

    async def call_stream(self, requests: list[dict[str, Any]]) -> AsyncIterator[list[tuple[int, CallResult]]]:
        """The calls of `call_batch`, yielded as lists of `(index, result)` as they end, so a fast
        reply need not wait for a slow one. Each list holds every call that had ended when the
        stream woke up: one message per wake-up, not per call (a Ray generator item costs ~2 ms of
        CPU). Calls left when the consumer stops still run to the end (and are billed and
        recorded): a sent request cannot be unsent."""
        tasks = [asyncio.ensure_future(self._one(r)) for r in requests]
        index = {t: i for i, t in enumerate(tasks)}
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                yield [(index[t], _task_result(t, requests[index[t]])) for t in sorted(done, key=index.get)]
        finally:
            for t in pending:  # held until they end: the loop keeps only weak references to tasks
                self._orphans.add(t)
                t.add_done_callback(self._orphans.discard)

    def settle_lost(self, call_ids: list[str], since: float) -> dict[str, dict[str, Any]]:
        """What became of calls whose replies were lost (the pool actor died, or a stream broke),
        by the call ids their caller gave (`context["call_id"]`), submitted after `since` (unix
        time, the caller's clock). Per call id, "status" is one of
          "in_flight": running in this pool now (it will be billed as it ends);
          "sent": the ledger holds its records ("cost_usd": what they bill, "statuses"); an attempt
                  whose outcome a crash lost is among them, billed at its capped cost;
          "not_sent": no attempt of it is on record, so none left the pool: nothing is billed and
                  a retry cannot pay twice. The id is remembered: if the call still arrives here
                  later, it is refused, not sent;
          "unknown": no ledger folder, so nothing survives a crash to tell."""
        ids = [c for c in dict.fromkeys(call_ids) if isinstance(c, str)]
        found = self.ledger.find_calls(ids, since - CLOCK_SKEW_S)
        out: dict[str, dict[str, Any]] = {}
        for cid in ids:
            if self._inflight.get(cid):
                out[cid] = {"status": "in_flight"}
            elif found is None:
                out[cid] = {"status": "unknown"}
            elif found[cid]:
                recs = found[cid]
                out[cid] = {"status": "sent", "cost_usd": sum(r["cost_usd"] for r in recs),
                            "statuses": sorted({r["status"] for r in recs})}
            else:
                self._fenced[cid] = None
                while len(self._fenced) > MAX_FENCED:
                    self._fenced.popitem(last=False)
                out[cid] = {"status": "not_sent"}
        return out

    def totals(self, by: str = "model") -> dict[str, dict[str, float]]:
        """Billed totals per model (the model that answered), tenant or run_id, from the ledger."""
        return self.ledger.totals.get(by)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per model: calls, errors, retries, cache hits, p50/p99 latency (s), spend (USD)."""
        out: dict[str, dict[str, Any]] = {}
        for name, st in self._states.items():
            out[name] = {**st.stats.summary(), "circuit": st.circuit.state}
        if self._unknown_calls:
            out[UNKNOWN] = {"calls": self._unknown_calls, "errors": self._unknown_calls}
        return out

    def warm_backends(self) -> dict[str, str]:
        """Build every backend the pool uses now (e.g. the simulated world) rather than inside the
        first call. Failures are returned, not raised: those calls will end in a typed error."""
        failed = {}
        for kind in sorted(self.pool.kinds()):
            try:
                self._backend(kind)
            except Exception as e:
                failed[kind] = f"{type(e).__name__}: {e}"
        return failed

    def flush(self) -> None:
        self.ledger.flush()

    async def close(self) -> None:
        if self.journal is not None:
            await self.journal.aclose()
        for b in self._backends.values():
            try:
                await b.close()
            except Exception:  # closing must not stop the ledger from being flushed
                pass
        self.ledger.close()

    def _resolve(self, name: str) -> ModelDescriptor | None:
        """PoolSpec.resolve, memoised for names that resolve (a policy's junk names are not kept)."""
        desc = self._resolved.get(name)
        if desc is None:
            desc = self.pool.resolve(name)
            if desc is not None:
                self._resolved[name] = desc
        return desc

    # -- pipeline ------------------------------------------------------------------------------
    async def _cached(self, req: Request) -> CallResult:
        assert req.desc is not None
        key = None if self.cache is None else cache_key(req.desc.name, req.messages_for(req.desc), req.params)
        if key is None or self.cache is None:
            return await self._with_fallback(req)
        hit = self.cache.get(key)
        if hit is not None:
            return _as_hit(hit)
        fut = self.cache.inflight(key)
        if fut is not None:
            leader = await asyncio.shield(fut)
            if leader is not None and leader.ok and leader.served_by is None:
                return _as_hit(leader)
            return await self._with_fallback(req)  # the leader failed: try for ourselves
        self.cache.begin(key)
        res = None
        try:
            res = await self._with_fallback(req)
            if res.served_by is None:  # a fallback's answer is not this model's answer
                self.cache.put(key, res)
            return res
        finally:
            self.cache.end(key, res)

    async def _with_fallback(self, req: Request) -> CallResult:
        assert req.desc is not None
        desc, res = req.desc, await self._call_model(req.desc, req)
        tried, billed, errors = {desc.name}, res.cost_usd, []
        while not res.ok and res.status not in _NO_FALLBACK and desc.fallback:
            nxt = self.pool.resolve(desc.fallback)
            if nxt is None or nxt.name in tried or not req.ctx.allows(nxt.name):
                break
            errors.append(f"{desc.name}: {res.status.value}: {res.error}")
            tried.add(nxt.name)
            desc, res = nxt, await self._call_model(nxt, req)
            billed += res.cost_usd
        res.model = req.desc.name
        if desc is not req.desc:
            res.served_by = desc.name if res.ok else None  # who answered; nobody, if all failed
            res.cost_usd = billed
            res.meta["fallback_from"] = errors
        return res

    def _state(self, desc: ModelDescriptor) -> _ModelState:
        st = self._states.get(desc.name)
        if st is None:
            lim = desc.limits
            st = self._states[desc.name] = _ModelState(
                ModelLimiter(lim, self._clock, self._sleep),
                CircuitBreaker(lim.circuit_failures, lim.circuit_cooldown_s, self._clock))
        return st

    def _backend(self, kind: str) -> ModelBackend:
        if kind not in self._backends:
            self._backends[kind] = make_backend(kind, self.pool)
        return self._backends[kind]

    async def _call_model(self, desc: ModelDescriptor, req: Request) -> CallResult:
        """One model, all its attempts, under one budget reservation: the estimate, and the
        worst case the billing caps allow (see budget.py)."""
        if desc.backend.key_missing():
            return CallResult.failure(desc.name, CallStatus.NOT_CONFIGURED,
                                      f"{desc.name} has no API key: the variable its api_key_env names "
                                      f"is not set (reported when the pool started)")
        messages = req.messages_for(desc)
        params = {"max_tokens": desc.backend.max_tokens, **req.params}
        est_prompt, bound = estimate_prompt_tokens(messages), max_prompt_tokens(messages)
        # Expected: the model's observed completion lengths (budget.py); worst: the call's max_tokens,
        # also what each attempt's intent says it can cost at most.
        expected = self._state(desc).stats.expected_completion_tokens(params["max_tokens"])
        worst = call_cost(desc, bound, params["max_tokens"])
        reservation = await self.budget.reserve(call_cost(desc, est_prompt, expected),
                                                req.ctx.run_id, req.ctx.tenant, worst=worst)
        if reservation is None:
            return CallResult.failure(desc.name, CallStatus.BUDGET_EXCEEDED,
                                      f"budget cap reached (run {req.ctx.run_id!r}, tenant {req.ctx.tenant!r})")
        # One per call to one model, sent with every attempt: "<call id>.<n-th model tried>".
        key = IDEMPOTENCY_KEY.set(f"{req.call_id}.{req.tried}")
        req.tried += 1
        try:
            return await self._attempts(desc, messages, params, est_prompt, bound, worst, req, reservation)
        finally:
            IDEMPOTENCY_KEY.reset(key)
            reservation.release()

    async def _attempts(self, desc: ModelDescriptor, messages: list[Message], params: dict[str, Any],
                        est_prompt: int, bound: int, worst: float, req: Request,
                        reservation: Reservation) -> CallResult:
        st, lim = self._state(desc), desc.limits
        try:
            backend = self._backend(desc.backend.kind)
        except Exception as e:  # e.g. vllm not installed: a typed failure, not a crash
            return CallResult.failure(desc.name, CallStatus.CONNECTION_ERROR,
                                      f"backend {desc.backend.kind!r} unavailable: {e}")
        est_total = est_prompt + params["max_tokens"]
        last: BackendError | None = None
        billed_tokens = [0, 0]
        attempt = 0
        idem = {"idempotency_key": IDEMPOTENCY_KEY.get()}
        ikey = idem["idempotency_key"]
        journal = self.journal if getattr(backend, "billed_remotely", False) else None
        intent = None if journal is None else {  # what the attempt can cost at most, and who pays
            "run_id": req.ctx.run_id, "episode_id": req.ctx.episode_id, "tenant": req.ctx.tenant,
            "model": desc.name, "requested_model": req.asked, "prompt_tokens": bound,
            "completion_tokens": params["max_tokens"], "price_in": desc.price_in,
            "price_out": desc.price_out, "cost_usd": worst}
        while attempt < lim.max_attempts:
            outcome: BackendReply | BackendError | None = None
            if st.circuit.state != "open":  # open: fail fast, without queueing for a slot
                intended = False
                try:
                    async with st.limiter.slot(est_total):
                        # Checked again once through the queue: the circuit may have opened meanwhile.
                        if st.circuit.allow():
                            attempt += 1
                            if journal is not None:  # on disk before it leaves
                                intended = True
                                try:
                                    await journal.intend(ikey, attempt, intent)
                                except OSError as e:
                                    outcome = BackendError(CallStatus.NOT_SENT, f"{desc.name}: not sent: the pool "
                                                           f"could not record it ({type(e).__name__})", retryable=False)
                            if outcome is None:
                                outcome = await self._attempt(backend, desc, messages, params, lim.timeout_s)
                except BaseException:  # cancelled mid-attempt: a probe we held must not stay taken
                    st.circuit.release_probe()
                    if intended:  # abandoned (deadline, caller gone): unbilled, like a timeout
                        journal.resolve(ikey, attempt, "cancelled")
                    raise
            if outcome is None:
                st.limiter.settle_tokens(est_total, 0)
                if last is None:
                    return CallResult.failure(desc.name, CallStatus.CIRCUIT_OPEN,
                                              f"{desc.name} is cooling down after repeated failures; "
                                              f"retry in {st.circuit.retry_in():.1f}s")
                break  # opened during our retries: report the real error
            if isinstance(outcome, BackendReply):
                pt, ct, anomaly = outcome.prompt_tokens, outcome.completion_tokens, None
                if not backend.recorded_usage:
                    pt, ct, anomaly = cap_usage(pt, ct, bound, params["max_tokens"])
                st.circuit.record_success()
                st.limiter.settle_tokens(est_total, pt + ct)
                cost = outcome.cost_usd if outcome.cost_usd is not None else call_cost(desc, pt, ct)
                reservation.charge(cost)
                req.success = (desc, pt, ct, cost)
                meta = {**outcome.meta, **idem, **({"anomaly": anomaly} if anomaly else {})}
                return CallResult(model=desc.name, text=outcome.text, prompt_tokens=pt + billed_tokens[0],
                                  completion_tokens=ct + billed_tokens[1],
                                  cost_usd=reservation.charged, attempts=attempt, meta=meta)
            last = outcome
            if last.status in _CIRCUIT_FAILURES and (last.retryable or last.status is CallStatus.BAD_RESPONSE):
                st.circuit.record_failure()
            else:
                st.circuit.release_probe()  # a 429 or a 4xx says nothing about the model's health
            st.limiter.settle_tokens(est_total, 0)
            if _billed(last):
                self._bill_attempt(desc, req, last, attempt, reservation, billed_tokens, bound,
                                   params["max_tokens"], idem["idempotency_key"])
            if journal is not None:  # after its record, if billed; else a line in the journal
                journal.resolve(ikey, attempt, None if _billed(last) else last.status.value)
            if not last.retryable or attempt >= lim.max_attempts:
                break
            delay = self._rng.uniform(0.0, min(lim.backoff_max_s, lim.backoff_base_s * 2 ** (attempt - 1)))
            if last.retry_after is not None:
                if last.retry_after > lim.backoff_max_s:
                    break  # the provider asks for a longer pause than we are allowed to wait
                delay = max(delay, last.retry_after)
            st.stats.retries += 1
            await self._sleep(delay)
        assert last is not None
        meta: dict[str, Any] = dict(idem)
        if last.http_status:
            meta["http_status"] = last.http_status
        if last.detail:  # the provider's own words: for the ledger, never for the router's context
            meta["provider_detail"] = last.detail
        return CallResult.failure(desc.name, last.status, str(last), attempts=attempt,
                                  cost_usd=reservation.charged, prompt_tokens=billed_tokens[0],
                                  completion_tokens=billed_tokens[1], meta=meta)

    @staticmethod
    async def _attempt(backend: ModelBackend, desc: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any], timeout_s: float) -> BackendReply | BackendError:
        """One backend attempt, every failure turned into a BackendError value."""
        try:
            async with asyncio.timeout(timeout_s):  # unlike wait_for, no extra task per attempt
                reply = await backend.complete(desc, messages, params)
        except TimeoutError:
            return BackendError(CallStatus.TIMEOUT, f"no answer within {timeout_s:g}s", retryable=True)
        except BackendError as e:
            return e
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # our caller (or its deadline) cancelled this call
            # The backend's own (vLLM's engine re-raises an aborted request's): this call's
            # failure alone, never its batch's or its tick's.
            return BackendError(CallStatus.BAD_RESPONSE, "the backend cancelled the attempt", retryable=False)
        except Exception as e:
            return BackendError(CallStatus.BAD_RESPONSE, f"backend raised {type(e).__name__}: {e}",
                                retryable=False)
        ok = (isinstance(reply, BackendReply) and isinstance(reply.text, str)
              and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                      for n in (reply.prompt_tokens, reply.completion_tokens))
              and (reply.cost_usd is None or (isinstance(reply.cost_usd, (int, float))
                                              and 0 <= reply.cost_usd < float("inf"))))
        if not ok:
            return BackendError(CallStatus.BAD_RESPONSE, f"backend returned an invalid reply: {reply!r:.200}",
                                retryable=False)
        return reply

    # -- billing -------------------------------------------------------------------------------
    def _bill_attempt(self, desc: ModelDescriptor, req: Request, err: BackendError, attempt: int,
                      reservation: Reservation, tally: list[int], bound: int, max_tokens: int,
                      idem_key: str | None) -> None:
        if err.bill_at_cap:  # answered, usage unknown: the most the call can cost
            pt, ct, anomaly = bound, max_tokens, "usage unknown: billed at the capped cost"
        else:
            pt, ct, anomaly = cap_usage(*(err.billed_tokens or (0, 0)), bound, max_tokens)
        cost = call_cost(desc, pt, ct)
        reservation.charge(cost)
        tally[0] += pt
        tally[1] += ct
        self._emit(kind="attempt", run_id=req.ctx.run_id, episode_id=req.ctx.episode_id,
                   tenant=req.ctx.tenant, model=desc.name, requested_model=req.asked,
                   prompt_tokens=pt, completion_tokens=ct, price_in=desc.price_in,
                   price_out=desc.price_out, cost_usd=cost, status=err.status.value,
                   attempts=attempt, error=self._redact(_with_detail(str(err), err.detail))[:500],
                   idempotency_key=idem_key, anomaly=anomaly, end_user=req.ctx.end_user)

    def _finish(self, req: Request, res: CallResult, t0: float) -> CallResult:
        """Write the call's ledger record and update metrics. No await: nothing can interleave."""
        res.latency_s = time.perf_counter() - t0
        keys = self._keys()
        if keys:  # a key a provider echoed, in a reply or an error, stops here
            _redact_result(res, keys)
        detail = res.meta.pop("provider_detail", None)
        if req.success is not None:
            desc, pt, ct, cost = req.success
        else:
            desc, pt, ct, cost = req.desc, 0, 0, 0.0
        rec = self._emit(kind="call", run_id=req.ctx.run_id, episode_id=req.ctx.episode_id,
                         tenant=req.ctx.tenant, model=desc.name if desc else req.asked,
                         requested_model=req.asked, prompt_tokens=pt, completion_tokens=ct,
                         price_in=desc.price_in if desc else 0.0, price_out=desc.price_out if desc else 0.0,
                         cost_usd=cost, latency_s=res.latency_s, status=res.status.value,
                         attempts=res.attempts, cache_hit=res.cache_hit,
                         # both parts already redacted by _redact_result
                         error=None if res.error is None else _with_detail(res.error, detail)[:500],
                         idempotency_key=None if res.cache_hit else res.meta.get("idempotency_key"),
                         anomaly=res.meta.get("anomaly"), end_user=req.ctx.end_user)
        res.meta["record_id"] = rec["record_id"]
        if self.journal is not None and rec["idempotency_key"]:
            self.journal.resolve_key(rec["idempotency_key"])  # the call's record is every attempt's outcome
        try:
            if req.desc is None:
                self._unknown_calls += 1
            else:
                self._state(req.desc).stats.add(res)
        except Exception:  # metrics are not worth failing a recorded call for
            log.exception("model pool: metrics update failed")
        return res

    def _keys(self) -> list[str]:
        """The pool's API keys (the values of its api_key_env variables), read now."""
        return [v for v in (os.environ.get(e) for e in self._key_envs) if v] if self._key_envs else []

    def _redact(self, text: str) -> str:
        """`text` without any part of the pool's API keys."""
        keys = self._keys()
        return redact(text, keys) if keys else text

    def _emit(self, **fields: Any) -> dict[str, Any]:
        rec = self.ledger.record(**fields)
        if self._on_record is not None:
            try:
                self._on_record(rec)
            except Exception:  # an exporter's failure must not fail a billed call
                pass
        return rec


def cap_usage(pt: int, ct: int, prompt_bound: int, max_tokens: int) -> tuple[int, int, str | None]:
    """Provider-reported usage, believed only up to what the call allows: prompt tokens up to the
    sent text's byte bound, completion tokens up to `max_tokens`. Returns (pt, ct, anomaly)."""
    notes = []
    if pt > prompt_bound:
        notes.append(f"prompt_tokens {pt} > bound {prompt_bound}")
        pt = prompt_bound
    if ct > max_tokens:
        notes.append(f"completion_tokens {ct} > max_tokens {max_tokens}")
        ct = max_tokens
    return pt, ct, ("usage capped: " + "; ".join(notes)) if notes else None


def _redact_result(res: CallResult, keys: list[str]) -> None:
    """Every text of a result, redacted in place: reply, error, and meta (provider detail,
    fallback errors, finish reason ...)."""
    res.text = redact(res.text, keys) if isinstance(res.text, str) else res.text
    if res.error is not None:
        res.error = redact(res.error, keys)
    for k, v in list(res.meta.items()):
        if isinstance(v, str):
            res.meta[k] = redact(v, keys)
        elif isinstance(v, list):
            res.meta[k] = [redact(x, keys) if isinstance(x, str) else x for x in v]


def _escaped(request: Any, e: BaseException) -> CallResult:
    """A call of a batch that raised (its own CancelledError, past every guard): its failure
    alone, typed. `call` has written its record already where it could."""
    model = request.get("model") if isinstance(request, dict) else None
    model = model[:MAX_NAME] if isinstance(model, str) else "?"
    if isinstance(e, asyncio.CancelledError):
        return CallResult.failure(model, CallStatus.CANCELLED, "the call was cancelled")
    return CallResult.failure(model, CallStatus.BAD_RESPONSE, f"internal pool error: {type(e).__name__}")


def _task_result(t: asyncio.Task, request: Any) -> CallResult:
    if t.cancelled():
        return _escaped(request, asyncio.CancelledError())
    e = t.exception()
    return t.result() if e is None else _escaped(request, e)


def _billed(err: BackendError) -> bool:
    return bool(err.billed_tokens or err.bill_at_cap)


def _with_detail(error: str, detail: str | None) -> str:
    return f"{error} | provider said: {detail}" if detail else error


def _as_hit(r: CallResult) -> CallResult:
    """A cached answer: same text, billed nothing."""
    meta = {k: v for k, v in r.meta.items() if k not in ("record_id", "idempotency_key", "anomaly")}
    return CallResult(model=r.model, text=r.text, served_by=r.served_by, cache_hit=True, meta=meta)
