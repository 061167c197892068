"""The Router-R1 Ray Serve application: an OpenAI-compatible chat endpoint over a trained router.

    serve run deployments.router:build_app checkpoint=outputs/demo/policy config=configs/demo.yaml
    ROUTER_R1_CHECKPOINT=... ROUTER_R1_CONFIG=... serve run deployments.router:app
    router-r1 serve --checkpoint DIR [--config YAML]

Each replica holds the policy (transformers on CPU, vLLM on GPU) and answers
`POST /v1/chat/completions` by playing the multi-round episode, calling candidate models through
the shared named ModelPool actor (budgets, rate limits and the ledger are shared by every replica).
Concurrent requests share generation. With `serve.batching: continuous` (the default) each router
turn is submitted to the engine as it comes and joins the running batch at its next forward
step (transformers' continuous batching, router_r1.engines.continuous; vLLM's async engine);
with `turn`, every router turn goes through `_generate_batch` (`@serve.batch`): one batch is
one turn of every request ready, and it ends before the next starts.
The request logic itself is `router_r1.serving.service.RouterService` (Ray-free).
"""
# No `from __future__ import annotations`: FastAPI must see real classes (Request) in the
# route signatures of a class that Serve ships to replicas by value.
import asyncio
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException as StarletteHTTPException

from router_r1.serving.openai_api import (COMPLETION_RESPONSE, ERROR_STATUSES, APIError, chunk_body,
                                    completion_body, completion_id, error_responses, parse_request,
                                    request_schema, sse)
from router_r1.serving.generation import (ContinuousTurns, GenParams, TokenSink, generate_isolated,
                                          turn_result)
from router_r1.serving.service import Plan, RouterService
from router_r1.env.generation import Generation
from router_r1.infra.config import RunConfig, ServeConfig, load_config

# /openapi.json is the deployment's own route (RouterDeployment.openapi_json): it publishes this
# server's limits and auth, which a module-level document cannot know.
api = FastAPI(title="Router-R1", docs_url=None, redoc_url=None, openapi_url=None)
DROPPED_HEADER = "x-router-r1-dropped-params"  # fields left out under serve.drop_params


@api.exception_handler(APIError)
async def _api_error(_: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    # Unknown paths and wrong methods answer in the same error shape as everything else.
    err = APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None)
    return JSONResponse(err.body(), status_code=e.status_code, headers=getattr(e, "headers", None))


@api.exception_handler(Exception)
async def _internal_error(_: Request, e: Exception) -> JSONResponse:
    # A bug or a dead engine: still the OpenAI error shape, with the cause named.
    err = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error")
    return JSONResponse(err.body(), status_code=500)


def parse_api_keys(spec: str | None) -> dict[str, str]:
    """ROUTER_R1_API_KEYS="key1:tenantA,key2:tenantB" -> {key: tenant}. A malformed item is
    named by its position and shown masked: the text is a key, or holds one."""
    from router_r1.util.redact import mask

    keys: dict[str, str] = {}
    for i, item in enumerate((spec or "").split(","), 1):
        if not item.strip():
            continue
        key, sep, tenant = item.strip().partition(":")
        if not sep or not key or not tenant:
            raise ValueError(f"ROUTER_R1_API_KEYS: item {i} ({mask(item.strip())}) is not 'key:tenant'; "
                             f"expected ROUTER_R1_API_KEYS=\"key1:tenantA,key2:tenantB\"")
        keys[key] = tenant
    return keys


def tenant_for(authorization: str | None, keys: dict[str, str]) -> str:
    """The tenant a request bills to; 401 when keys are configured and this one is not among them."""
    if not keys:
        return "default"
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")
    tenant = keys.get(token.strip())
    if tenant is None:
        raise APIError(401, "incorrect API key provided", code="invalid_api_key")
    return tenant


def route_headers(outcome: Any) -> dict[str, str]:
    """What a request cost and which models it called, for proxies and logs that read headers."""
    return {"x-router-r1-cost-usd": f"{outcome.cost_usd:.10f}".rstrip("0").rstrip(".") or "0",
            "x-router-r1-models": ",".join(c.model for c in outcome.calls),
            "x-router-r1-fallback": "true" if outcome.fallback is not None else "false"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is known to pass `limit` bytes (from
    Content-Length, else while reading), so an oversized body is never held whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {int(declared)} bytes; the limit is {limit} "
                       "(serve.max_body_bytes)", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body is larger than {limit} bytes (serve.max_body_bytes)",
                           code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def openapi_document(app: FastAPI, serve_cfg: ServeConfig, keys: bool) -> dict[str, Any]:
    """This server's OpenAPI document: the request schema with its own limits, and the bearer
    scheme (required when keys are configured, optional otherwise)."""
    import copy

    doc = copy.deepcopy(app.openapi())
    doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"]["schema"] = request_schema(serve_cfg)
    doc.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "an API key of serve.api_keys / "
                   "ROUTER_R1_API_KEYS (any or none when no keys are configured)"}}
    for path in ("/v1/chat/completions", "/v1/models", "/v1/models/{model_id}"):
        for op in doc["paths"].get(path, {}).values():
            op["security"] = [{"bearer": []}] if keys else [{"bearer": []}, {}]
    return doc


@serve.deployment(name="RouterR1")
@serve.ingress(api)
class RouterDeployment:
    """One replica: the policy, its batched generator, and a client of the shared ModelPool."""

    def __init__(self, checkpoint: str, config: dict[str, Any]):
        from actors.model_pool import PoolClient, get_or_create_pool
        from router_r1.serving.engines import make_continuous, make_generator
        from deployments.metrics import ServeMetrics
        from router_r1.env.prompt import load_prompt_options

        cfg = RunConfig.model_validate(config)
        self.cfg, self.serve_cfg, self.checkpoint = cfg, cfg.serve, checkpoint
        if cfg.serve.torch_threads:
            import torch
            torch.set_num_threads(cfg.serve.torch_threads)
        device = "cuda" if cfg.serve.num_gpus > 0 else "cpu"
        # In the policy dtype (policy.dtype, "auto": the served checkpoint's own), on GPU when given one.
        # Continuous batching: the engine batches the turns in flight itself (no @serve.batch);
        # max_batch_size 1 is unbatched, through the batch method with batches of one.
        self.continuous = cfg.serve.batching == "continuous" and cfg.serve.max_batch_size > 1
        if self.continuous:
            self.engine, tokenizer = make_continuous(
                cfg.serve.engine, checkpoint, device, dtype=cfg.policy.dtype,
                gpu_memory_utilization=cfg.serve.gpu_memory_utilization,
                max_batch_size=cfg.serve.max_batch_size, kv_cache_tokens=cfg.serve.kv_cache_tokens)
            self.turns, generate_turn, max_context = ContinuousTurns(self.engine), self._continuous_turn, self.engine.max_context
        else:
            self.engine = None
            self.generator, tokenizer = make_generator(cfg.serve.engine, checkpoint, device, dtype=cfg.policy.dtype,
                                                       gpu_memory_utilization=cfg.serve.gpu_memory_utilization)
            generate_turn, max_context = self._generate_turn, getattr(self.generator, "max_context", None)
        self.pool = cfg.load_pool()
        # Serving replicas outlive the driver that deployed them, so the pool is detached.
        handle = get_or_create_pool(cfg.pool, cfg.pool_runtime, run_id=f"serve:{cfg.name}",
                                    detached=True)
        self.pool_client = PoolClient(handle)
        self.keys = dict(cfg.serve.api_keys) or parse_api_keys(os.environ.get("ROUTER_R1_API_KEYS"))
        self._generate_batch.set_max_batch_size(cfg.serve.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(cfg.serve.batch_wait_timeout_s)
        self.batches = self.batched_turns = 0
        self.metrics = ServeMetrics(cfg.serve.model_name, self.pool.names)
        self._openapi: dict[str, Any] | None = None
        self.service = RouterService(
            self.pool, cfg.serve, cfg.episode, tokenizer, generate_turn, self.pool_client.call,
            run_id=f"serve:{cfg.name}",
            # As the router was trained; a checkpoint that records none renders as the config says.
            prompt_options=load_prompt_options(checkpoint, default=cfg.policy.prompt_options()),
            max_context=max_context, on_outcome=self.metrics.outcome)

    def __del__(self):
        # Serve calls this when the replica shuts down: stop the engine's generation threads.
        engine = getattr(self, "engine", None)
        if engine is not None and hasattr(engine, "close"):
            engine.close()

    # -- batched generation ----------------------------------------------------------------------
    async def _continuous_turn(self, context: list[int], gen: GenParams, on_token: TokenSink | None = None) -> Generation:
        """One turn in the engine's continuous batch; the metric records the mean rows per forward
        step while it ran (tokens sampled / steps), where the engine counts them (transformers)."""
        eng = self.engine
        steps, tokens = getattr(eng, "steps", None), getattr(eng, "tokens", 0)
        out = await self.turns(context, gen, on_token)
        self.batched_turns += 1
        if steps is not None and eng.steps > steps:
            self.metrics.generation_batch(round((eng.tokens - tokens) / (eng.steps - steps)))
        return out

    async def _generate_turn(self, context: list[int], gen: GenParams, on_token: TokenSink | None = None) -> Generation:
        return turn_result(await self._generate_batch((context, gen, on_token)))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, items: list[tuple]) -> list[Generation | Exception]:
        """One router turn for every episode waiting now (context ids), grouped by sampling parameters."""
        out = await generate_isolated(self.generator.generate, items)
        self.batches += 1
        self.batched_turns += len(items)
        self.metrics.generation_batch(len(items))
        return out

    # -- endpoints -------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness and counters; no key needed, and nothing secret or local (no paths) shown."""
        out = {"status": "ok", "model": self.serve_cfg.model_name, "pool": self.pool.name,
               "candidates": self.pool.names, "batching": "continuous" if self.continuous else "turn",
               "generation_batches": self.batches, "batched_turns": self.batched_turns}
        if self.continuous and hasattr(self.engine, "steps"):
            # Forward steps and tokens sampled: their ratio is the mean rows per step; kept: the
            # sampled tokens that are not past a stop string (sampled before the cancel landed).
            out.update(forward_steps=self.engine.steps, sampled_tokens=self.engine.tokens,
                       kept_tokens=self.engine.kept)
        return out

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self, request: Request) -> JSONResponse:
        if self._openapi is None:
            self._openapi = openapi_document(request.app, self.serve_cfg, bool(self.keys))
        return JSONResponse(self._openapi)

    @api.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text: this node's Ray metrics export",
                              "content": {"text/plain": {}}}, **error_responses({503: "metrics export unavailable"})})
    async def metrics_text(self) -> PlainTextResponse:
        """Ray's metrics export of this replica's node (router_r1's metrics, Serve's, Ray's)."""
        from deployments.metrics import node_metrics

        try:
            text = await asyncio.to_thread(node_metrics)
        except Exception as e:
            raise APIError(503, f"Ray's metrics export is unavailable: {e}", type="server_error",
                           code="metrics_unavailable") from None
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.serve_cfg.model_name, "object": "model", "created": 0, "owned_by": "router-r1",
                "candidates": self.pool.names}

    @api.get("/v1/models", responses=error_responses({401: ERROR_STATUSES[401]}))
    async def models(self, request: Request) -> dict[str, Any]:
        tenant_for(request.headers.get("authorization"), self.keys)
        return {"object": "list", "data": [self._model_card()]}

    @api.get("/v1/models/{model_id}", responses=error_responses({401: ERROR_STATUSES[401], 404: ERROR_STATUSES[404]}))
    async def model(self, model_id: str, request: Request) -> dict[str, Any]:
        tenant_for(request.headers.get("authorization"), self.keys)
        if model_id.strip().casefold() != self.serve_cfg.model_name.casefold():
            raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")
        return self._model_card()

    @api.post("/v1/chat/completions", responses={**COMPLETION_RESPONSE, **error_responses()}, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": request_schema()}}}})
    async def chat_completions(self, request: Request):
        t0, tenant, stream = time.perf_counter(), "unauthenticated", False
        self.metrics.started()
        try:
            tenant = tenant_for(request.headers.get("authorization"), self.keys)
            req = parse_request(await read_body(request, self.serve_cfg.max_body_bytes),
                                drop_params=self.serve_cfg.drop_params)
            plan = self.service.plan(req, tenant)
            cid = completion_id()
            headers = {"x-request-id": plan.request_id,
                       **({DROPPED_HEADER: ",".join(plan.dropped)} if plan.dropped else {})}
            if req.stream:
                stream = True
                include_usage = bool(req.stream_options and req.stream_options.include_usage)
                return StreamingResponse(self._stream(plan, cid, include_usage, t0), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", **headers})
            outcome = await self.service.run(plan)
        except APIError as e:
            self._finished(tenant, e.status, t0, False)
            raise
        except Exception:
            self._finished(tenant, 500, t0, False)
            raise
        finally:
            if not stream:
                self.metrics.ended()
        self._finished(tenant, 200, t0, False)
        headers.update(route_headers(outcome))
        return JSONResponse(completion_body(cid, self.serve_cfg.model_name, outcome.answer, outcome.finish_reason,
                                            outcome.usage(), outcome.extra()), headers=headers)

    def _finished(self, tenant: str, status: int, t0: float, stream: bool) -> None:
        """The request's status and latency (its calls and tokens: RouterService's on_outcome)."""
        try:
            self.metrics.request(tenant, status, time.perf_counter() - t0, stream)
        except Exception:  # metrics must never fail a request
            pass

    async def _stream(self, plan: Plan, cid: str, include_usage: bool, t0: float):
        """SSE in OpenAI's chunk format: the role; as they happen, one chunk per route event (field
        `router_r1.event`) and the answer's text as the router writes it (content deltas); the
        finish chunk with the trace (and the whole answer in `router_r1.answer`); usage if asked;
        [DONE]."""
        model, created = self.serve_cfg.model_name, int(time.time())
        events: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(self.service.run(plan, on_event=events.put_nowait))
        status, outcome, first_token = 200, None, None
        try:
            yield sse(chunk_body(cid, model, created, {"role": "assistant", "content": ""}))
            while not (task.done() and events.empty()):
                getter = asyncio.ensure_future(events.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                event = getter.result()
                if event["type"] == "answer_delta":  # the answer's text, as the router writes it
                    if first_token is None:
                        first_token = time.perf_counter() - t0
                        self.metrics.first_answer_token(plan.tenant, first_token)
                    yield sse(chunk_body(cid, model, created, {"content": event["text"]}))
                else:  # route steps, call results, the fallback: as they happen
                    yield sse(chunk_body(cid, model, created, {}, extra={"event": event}))
            try:
                outcome = task.result()
            except Exception as e:  # headers are gone: the error travels as an event, as OpenAI's does
                err = e if isinstance(e, APIError) else APIError(
                    500, f"internal error: {type(e).__name__}: {e}", type="server_error")
                status = err.status
                yield sse(err.body())
                yield sse("[DONE]")
                return
            yield sse(chunk_body(cid, model, created, {}, finish_reason=outcome.finish_reason,
                                 extra={**outcome.extra(), "answer": outcome.answer}))
            if include_usage:
                yield sse(chunk_body(cid, model, created, None, usage=outcome.usage()))
            yield sse("[DONE]")
        finally:
            if not task.done():  # the client went away: stop the episode and its calls
                task.cancel()
                status = 499  # nginx's "client closed request"
            self.metrics.ended()
            self._finished(plan.tenant, status, t0, True)


def deployment_options(serve_cfg: ServeConfig) -> dict[str, Any]:
    """Replica count or autoscaling, resources and concurrency, from the config's serve section."""
    opts: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": serve_cfg.num_cpus, "num_gpus": serve_cfg.num_gpus,
                              **({"resources": dict(serve_cfg.resources)} if serve_cfg.resources else {})},
        "max_ongoing_requests": max(serve_cfg.max_ongoing_requests, serve_cfg.max_batch_size),
    }
    if serve_cfg.min_replicas == serve_cfg.max_replicas:
        opts["num_replicas"] = serve_cfg.min_replicas
    else:
        opts["autoscaling_config"] = {"min_replicas": serve_cfg.min_replicas,
                                      "max_replicas": serve_cfg.max_replicas,
                                      "target_ongoing_requests": serve_cfg.target_ongoing_requests}
    return opts


def check_checkpoint(checkpoint: str | Path) -> str:
    """Fail on the driver, before any replica starts, when the checkpoint cannot be loaded
    (folder, config.json, complete weight files, manifest hashes when there is one)."""
    from router_r1.infra.preflight import check_policy_checkpoint

    return str(check_policy_checkpoint(Path(checkpoint).expanduser().resolve()))


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder: `checkpoint` (required), `config` (YAML path, optional), and
    dotted `serve.*`/`pool_runtime.*` overrides, e.g. `serve.max_batch_size=1`."""
    args = dict(args)
    checkpoint = args.pop("checkpoint", None) or os.environ.get("ROUTER_R1_CHECKPOINT")
    if not checkpoint:
        raise ValueError("build_app needs checkpoint=DIR (or ROUTER_R1_CHECKPOINT)")
    config = args.pop("config", None) or os.environ.get("ROUTER_R1_CONFIG")
    cfg = load_config(config, overrides=args or None)
    pool = cfg.load_pool()  # a bad descriptor file fails here, not in every replica
    if cfg.serve.fallback_model is not None and pool.resolve(cfg.serve.fallback_model) is None:
        raise ValueError(f"serve.fallback_model {cfg.serve.fallback_model!r} is not in the pool "
                         f"({', '.join(pool.names)})")
    if not cfg.serve.api_keys:  # likewise malformed tenant keys (the replicas read the same variable)
        parse_api_keys(os.environ.get("ROUTER_R1_API_KEYS"))
    # Replicas and the pool actor run in other working directories: anchor the ledger here.
    if cfg.pool_runtime.ledger_dir is not None:  # None: an in-memory ledger, nothing to anchor
        ledger = Path(cfg.pool_runtime.ledger_dir).expanduser().resolve()
        cfg = cfg.model_copy(update={"pool_runtime": cfg.pool_runtime.model_copy(update={"ledger_dir": str(ledger)})})
    return RouterDeployment.options(**deployment_options(cfg.serve)).bind(
        check_checkpoint(checkpoint), cfg.model_dump())


def __getattr__(name: str):
    """`deployments.router:app` for `serve run`, built from ROUTER_R1_CHECKPOINT/ROUTER_R1_CONFIG
    on first access (so importing this module never needs them)."""
    if name == "app":
        return build_app({})
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
