"""The ModelPool actor: the thin Ray shell around `router_r1.pool.PoolCore`.

One named async actor per run (or per serving deployment) is the single place every candidate-
model call goes through, so rate limits, budgets and billing are shared by all rollout workers,
evaluators and Serve replicas. The logic lives in `PoolCore`; this module only adds Ray: the actor
options, Ray metrics export, and `PoolClient`, which callers use the same way whether they hold an
actor handle or an in-process `PoolCore` (tests, single-process evaluation).

Lifetime: the actor is *not* detached by default, so a pool cannot outlive (and keep spending for)
the run that made it; serving, whose replicas live longer than the driver that deployed them,
passes `detached=True`. `max_restarts` brings a crashed pool back: its constructor rebuilds the
ledger totals and budget spend from the Parquet/WAL files, so nothing billed is forgotten.
Calls are never retried by Ray (`max_task_retries=0`): a call that was in flight when the actor died
may already have been billed by the provider, and a silent retry would bill it twice. Instead,
`PoolClient` gives every call an id (`context["call_id"]`); when a reply is lost (the actor died,
or its stream broke) it asks the pool, restarted if need be, what its ledger says about those ids
(`settle_lost`): a call no attempt of which left the pool comes back NOT_SENT (nothing billed,
safe to retry), any other OUTCOME_UNKNOWN with what it was billed. Read-only methods are retried.
"""
from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.util.metrics import Counter, Histogram

from router_r1.pool.backends.base import ModelBackend
from router_r1.pool.core import PoolCore
from router_r1.pool.descriptors import PoolSpec, load_pool
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.stats import quantile
from router_r1.pool.types import CallResult, CallStatus

LATENCY_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]


class RayPoolMetrics:
    """Exports each ledger record as Ray (Prometheus) metrics, tagged by model and status.
    Names outside the pool are tagged "<unknown>", so a policy inventing names cannot blow up
    the metric cardinality."""

    def __init__(self, pool: PoolSpec, pool_name: str):
        self._names = set(pool.names)
        tags = ("pool", "model")
        self.calls = Counter("router_r1_pool_calls", "Routed calls that ended", tag_keys=(*tags, "status"))
        self.errors = Counter("router_r1_pool_errors", "Routed calls that ended in an error",
                              tag_keys=(*tags, "status"))
        self.retries = Counter("router_r1_pool_retries", "Retried attempts", tag_keys=tags)
        self.cache_hits = Counter("router_r1_pool_cache_hits", "Calls answered from cache", tag_keys=tags)
        self.spend = Counter("router_r1_pool_spend_usd", "USD billed", tag_keys=tags)
        self.latency = Histogram("router_r1_pool_latency_s", "Call latency, seconds",
                                 boundaries=LATENCY_BOUNDARIES, tag_keys=tags)
        self._pool = pool_name

    def __call__(self, rec: dict[str, Any]) -> None:
        model = rec["model"] if rec["model"] in self._names else "<unknown>"
        tags = {"pool": self._pool, "model": model}
        if rec["cost_usd"] > 0:
            self.spend.inc(rec["cost_usd"], tags)
        if rec["kind"] != "call":
            return
        self.calls.inc(1, {**tags, "status": rec["status"]})
        self.latency.observe(rec["latency_s"], tags)
        if rec["status"] != CallStatus.OK.value:
            self.errors.inc(1, {**tags, "status": rec["status"]})
        if rec["attempts"] > 1:
            self.retries.inc(rec["attempts"] - 1, tags)
        if rec["cache_hit"]:
            self.cache_hits.inc(1, tags)


class ModelPoolActor:
    """Async actor body. Plain class: `ray.remote` is applied at the edge (`ModelPool`)."""

    def __init__(self, pool: PoolSpec | str, runtime: PoolRuntimeConfig | None = None,
                 run_id: str = "run", backends: dict[str, ModelBackend] | None = None,
                 export_metrics: bool = True):
        spec = load_pool(pool) if isinstance(pool, (str, Path)) else pool
        runtime = runtime or PoolRuntimeConfig()
        on_record = RayPoolMetrics(spec, runtime.actor_name) if export_metrics and ray.is_initialized() else None
        self.core = PoolCore(spec, runtime, run_id, backends, on_record=on_record)
        self.backend_errors = self.core.warm_backends()  # ready when constructed; see info()
        ctx = ray.get_runtime_context() if ray.is_initialized() else None
        self.restarted = bool(ctx and ctx.get_actor_id() and ctx.was_current_actor_reconstructed)

    async def call(self, model: str, messages_or_query: Any, params: dict[str, Any] | None = None,
                   context: dict[str, Any] | None = None) -> CallResult:
        return await self.core.call(model, messages_or_query, params, context)

    async def call_batch(self, requests: list[dict[str, Any]]) -> list[CallResult]:
        return await self.core.call_batch(requests)

    async def call_stream(self, requests: list[dict[str, Any]]):
        """Generator task: lists of `(index, CallResult)` as the calls end (see PoolCore)."""
        async for item in self.core.call_stream(requests):
            yield item

    # Async like the calls, so they run on the actor's event loop, never beside a call in a thread.
    @ray.method(max_task_retries=3)
    async def totals(self, by: str = "model") -> dict[str, dict[str, float]]:
        return self.core.totals(by)

    @ray.method(max_task_retries=3)
    async def metrics(self) -> dict[str, dict[str, float]]:
        return self.core.metrics()

    @ray.method(max_task_retries=3)
    async def info(self) -> dict[str, Any]:
        led = self.core.ledger
        return {"run_id": self.core.run_id, "restarted": self.restarted, "ledger_dir": str(led.dir),
                "ledger_writer": led.writer, "models": self.core.pool.names, "pid": os.getpid(),
                "reconciled": len(led.reconciled),  # lost attempts billed at their capped cost
                "intents": None if led.journal is None else {  # group commits, and waits for them
                    "commits": led.journal.commits, "open": led.journal.open_intents,
                    "fsync_ms": round(1e3 * led.journal.fsync_s, 3),
                    "wait_ms_p50": _pct(led.journal.waits, 0.5), "wait_ms_p90": _pct(led.journal.waits, 0.9)},
                "backend_errors": self.backend_errors, "config_errors": self.core.config_errors}

    @ray.method(max_task_retries=3)  # asking twice gives the same answer
    async def settle_lost(self, call_ids: list[str], since: float) -> dict[str, dict[str, Any]]:
        """What became of calls whose replies were lost (see `PoolCore.settle_lost`)."""
        return self.core.settle_lost(call_ids, since)

    @ray.method(max_task_retries=3)
    async def budget_remaining(self, run_id: str, tenant: str = "default") -> float | None:
        """USD left under the tightest cap on (run_id, tenant); None when neither is capped."""
        return self.core.budget.remaining(run_id, tenant)

    @ray.method(max_task_retries=3)
    async def flush(self) -> None:
        self.core.flush()

    async def close(self) -> None:
        """Flush the ledger and close backends; call before letting the actor go."""
        await self.core.close()


def _pct(xs: Any, q: float) -> float | None:
    """The `q` quantile of seconds `xs`, in milliseconds (None when empty)."""
    return round(1e3 * quantile(sorted(xs), q), 3) if xs else None


ModelPool = ray.remote(ModelPoolActor)


def get_or_create_pool(pool: PoolSpec | str | Path, runtime: PoolRuntimeConfig | None = None,
                       run_id: str = "run", *, detached: bool = False,
                       backends: dict[str, ModelBackend] | None = None) -> "ray.actor.ActorHandle":
    """The named pool actor `runtime.actor_name` in `runtime.namespace`, created if absent.

    With `get_if_exists`, the first creator's configuration wins; later callers get that actor.
    Relative paths are made absolute here, because the actor's working directory differs.
    """
    runtime = runtime or PoolRuntimeConfig()
    if isinstance(pool, (str, Path)):
        pool = str(Path(pool).resolve())
    if runtime.ledger_dir:
        runtime = runtime.model_copy(update={"ledger_dir": str(Path(runtime.ledger_dir).resolve())})
    return ModelPool.options(
        name=runtime.actor_name, namespace=runtime.namespace, get_if_exists=True,
        lifetime="detached" if detached else None, max_restarts=runtime.max_restarts,
        max_task_retries=0, max_concurrency=runtime.max_concurrency, num_cpus=runtime.num_cpus,
        resources=runtime.resources or None,
    ).remote(pool, runtime, run_id, backends)


class _TickBatcher:
    """Coalesces the calls made in one event-loop tick into one actor call.

    One Ray actor call costs ~1 ms of fixed overhead (on the 2-core dev machine the floor is
    ~2,000 trivial calls/s at 64 in flight), far more than the pool's own work per call (~0.1 ms).
    The episode machine `gather`s all routed calls of a turn at once, and concurrent serving
    requests land in the same tick, so they share one actor call; a call made alone is sent alone,
    one tick later.

    `stream=True` (the default) sends the tick as one generator task (`call_stream`): each result
    comes back the moment its call ends, so a fast model's reply never waits for a slow one's and
    independent callers see no head-of-line blocking. `stream=False` sends `call_batch`, whose
    results all arrive when the slowest call ends: one reply message instead of one per call,
    for callers that wait for the whole tick anyway (a rollout turn).
    """

    def __init__(self, handle: Any, max_batch: int, stream: bool, settle_wait_s: float):
        self.handle, self.max_batch, self.stream = handle, max_batch, stream
        self.settle_wait_s = settle_wait_s
        self._pending: list[tuple[dict[str, Any], asyncio.Future[CallResult]]] = []
        self._scheduled = False
        self._sending: set[asyncio.Task] = set()  # held so the loop cannot drop a batch in flight

    def submit(self, request: dict[str, Any]) -> "asyncio.Future[CallResult]":
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[CallResult] = loop.create_future()
        self._pending.append((request, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        task = asyncio.ensure_future(self._send_stream(batch) if self.stream else self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[dict[str, Any], asyncio.Future[CallResult]]]) -> None:
        since = time.time()
        try:
            results = await self.handle.call_batch.remote([r for r, _ in batch])
        except Exception as e:
            results = await settle_lost(self.handle, [r for r, _ in batch], e, since, self.settle_wait_s)
        for (_, fut), res in zip(batch, results):
            if not fut.done():  # the caller may have given up (cancelled) meanwhile
                fut.set_result(res)

    async def _send_stream(self, batch: list[tuple[dict[str, Any], asyncio.Future[CallResult]]]) -> None:
        error: Exception | None = None
        since = time.time()
        try:
            async for ref in self.handle.call_stream.remote([r for r, _ in batch]):
                for i, res in await ref:
                    if not batch[i][1].done():
                        batch[i][1].set_result(res)
        except Exception as e:
            error = e
        lost = [(r, fut) for r, fut in batch if not fut.done()]
        if lost:  # whatever the stream did not deliver (the actor died mid-stream): ask the pool
            results = await settle_lost(self.handle, [r for r, _ in lost], error or RuntimeError("stream ended early"),
                                        since, self.settle_wait_s)
            for (_, fut), res in zip(lost, results):
                if not fut.done():
                    fut.set_result(res)


class PoolClient:
    """`await client.call(model, query)`: the call function the episode machine expects.

    Works over an actor handle or an in-process `PoolCore`; context given at construction
    (`PoolClient(h, run_id=..., tenant=...)`) or per call is merged, per call winning. Over an
    actor, calls made in the same event-loop tick travel in one actor call (`batch=True`, see
    `_TickBatcher`), their results streamed back one by one as they end (`stream=True`) or all
    together; `batch=False` sends one actor call per routed call.
    """

    def __init__(self, target: Any, *, batch: bool = True, max_batch: int = 256,
                 stream: bool = True, settle_wait_s: float = 60.0, **context: Any):
        """`settle_wait_s`: how long to wait for a dead pool actor to come back and say what
        became of the calls whose replies it lost (then they end OUTCOME_UNKNOWN)."""
        if isinstance(target, ModelPoolActor):
            target = target.core
        context.pop("call_id", None)  # one per call, never shared
        self.target, self.context = target, context
        self._local = isinstance(target, PoolCore)
        self.settle_wait_s = settle_wait_s
        self._opts = {"batch": batch, "max_batch": max_batch, "stream": stream, "settle_wait_s": settle_wait_s}
        self._batcher = None if self._local or not batch else _TickBatcher(target, max_batch, stream,
                                                                          settle_wait_s)

    def with_context(self, **context: Any) -> "PoolClient":
        return PoolClient(self.target, **self._opts, **{**self.context, **context})

    async def call(self, model: str, query: Any, params: dict[str, Any] | None = None,
                   **context: Any) -> CallResult:
        if self._local:
            return await self.target.call(model, query, params, {**self.context, **context} or None)
        ctx = {**self.context, **context, "call_id": context.get("call_id") or uuid.uuid4().hex}
        request = {"model": model, "query": query, "params": params, "context": ctx}
        if self._batcher is not None:
            return await self._batcher.submit(request)
        since = time.time()
        try:
            return await self.target.call.remote(model, query, params, ctx)
        except Exception as e:
            return (await settle_lost(self.target, [request], e, since, self.settle_wait_s))[0]

    async def call_batch(self, requests: list[dict[str, Any]]) -> list[CallResult]:
        if self._local:
            return await self.target.call_batch([
                {**r, "context": {**self.context, **(r.get("context") or {})} or None}
                if isinstance(r, dict) else r for r in requests])
        reqs = [{**r, "context": {**self.context, **(r.get("context") or {}),
                                  "call_id": (r.get("context") or {}).get("call_id") or uuid.uuid4().hex}}
                if isinstance(r, dict) else r for r in requests]
        since = time.time()
        try:
            return await self.target.call_batch.remote(reqs)
        except Exception as e:
            return await settle_lost(self.target, reqs, e, since, self.settle_wait_s)

    async def totals(self, by: str = "model") -> dict[str, dict[str, float]]:
        return self.target.totals(by) if self._local else await self.target.totals.remote(by)

    async def metrics(self) -> dict[str, dict[str, float]]:
        return self.target.metrics() if self._local else await self.target.metrics.remote()

    async def flush(self) -> None:
        if self._local:
            self.target.flush()
        else:
            await self.target.flush.remote()


async def settle_lost(handle: Any, requests: list[Any], error: BaseException, since: float,
                      wait_s: float) -> list[CallResult]:
    """Results for calls whose replies were lost: the pool (restarted, if it died: Ray queues the
    question until it is back) says per call id whether any attempt left it. Never retried here:
    the caller decides what to do with a NOT_SENT call."""
    ids = [_call_id(r) for r in requests]
    answer: dict[str, dict[str, Any]] = {}
    asked = [i for i in ids if i]
    if asked:
        try:
            answer = await asyncio.wait_for(_ask_until_back(handle, asked, since), wait_s)
        except Exception:  # not back in time (or gone for good): nobody can say
            answer = {}
    return [_lost_result(r, answer.get(i) if i else {"status": "not_sent"}, error) for r, i in zip(requests, ids)]


async def _ask_until_back(handle: Any, ids: list[str], since: float) -> dict[str, dict[str, Any]]:
    delay, died = 0.1, 0
    while True:
        try:
            return await handle.settle_lost.remote(ids, since)
        except ray.exceptions.ActorDiedError:  # after Ray's own retries: probably gone for good
            died += 1
            if died >= 3:
                raise
        except ray.exceptions.RayActorError:  # dead, not yet restarted
            pass
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)


def _call_id(r: Any) -> str | None:
    ctx = r.get("context") if isinstance(r, dict) else None
    cid = ctx.get("call_id") if isinstance(ctx, dict) else None
    return cid if isinstance(cid, str) else None


def _lost_result(request: Any, answer: dict[str, Any] | None, error: BaseException) -> CallResult:
    model = request.get("model") if isinstance(request, dict) else None
    model = model if isinstance(model, str) else "?"
    what = ("model pool actor died" if isinstance(error, ray.exceptions.RayActorError)
            else f"model pool call failed ({type(error).__name__})")
    status = (answer or {}).get("status")
    meta = {"lost_with": type(error).__name__}
    if status == "not_sent":
        return CallResult.failure(model, CallStatus.NOT_SENT, f"{what} before this call was sent; "
                                  "nothing was billed; safe to retry", meta=meta)
    if status == "sent":
        cost = float(answer.get("cost_usd") or 0.0)  # type: ignore[union-attr]
        return CallResult.failure(model, CallStatus.OUTCOME_UNKNOWN,
                                  f"{what} after this call was sent; its reply is lost; billed ${cost:.6f}",
                                  cost_usd=cost, meta={**meta, "ledger_statuses": answer.get("statuses", [])})  # type: ignore[union-attr]
    if status == "in_flight":
        return CallResult.failure(model, CallStatus.OUTCOME_UNKNOWN, f"{what}; the call is still running "
                                  "in the pool and is billed as it ends; its reply is lost", meta=meta)
    return CallResult.failure(model, CallStatus.OUTCOME_UNKNOWN, f"{what}; it may have been sent and "
                              "billed (the pool could not say); do not retry blindly", meta=meta)
