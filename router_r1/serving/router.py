"""The served router from Python, without Ray: `Router.load(policy_dir, pool=...)`.

    router = router_r1.Router.load("outputs/demo/policy", pool="configs/pool_simulated.yaml")
    router.route("Who discovered Orvium?")           # {"answer", "models", "cost_usd", ...}
    router.chat([{"role": "user", "content": "Who discovered Orvium?"}], max_tokens=16)
                                                     # the OpenAI chat.completion Serve would send

It runs the very request logic of the Serve app (`router_r1.serving.service.RouterService`: the
same checks, prompt rendering, episode, forced answer, fallback and OpenAI field rules) over an
in-process generator whose turns are batched per event-loop tick (`TurnBatcher`) and an
in-process pool core (`router_r1.pool.core.PoolCore`: budgets, retries, cache, an in-memory
ledger unless `pool_runtime.ledger_dir` is set). Refusals raise `APIError` (status and OpenAI
error body), as Serve would answer them.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

from router_r1.infra.config import RunConfig, apply_overrides, load_config
from router_r1.pool.core import PoolCore
from router_r1.pool.descriptors import PoolSpec, load_pool
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.serving.generation import TurnBatcher
from router_r1.serving.openai_api import completion_body, completion_id, parse_request
from router_r1.serving.service import Outcome, RouterService


class Router:
    """A trained router, ready to answer (see the module docstring)."""

    def __init__(self, service: RouterService, core: PoolCore, batcher: TurnBatcher, cfg: RunConfig):
        self.service, self.core, self.batcher, self.cfg = service, core, batcher, cfg
        self.tenant = "default"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()  # first calls from many threads start one loop, not one each

    @classmethod
    def load(cls, checkpoint: str | Path, pool: str | Path | PoolSpec | None = None, *,
             config: str | Path | dict[str, Any] | RunConfig | None = None,
             pool_runtime: PoolRuntimeConfig | dict[str, Any] | None = None, engine: str = "transformers",
             device: str = "cpu", **overrides: Any) -> Router:
        """The policy folder `checkpoint` (written by router_r1.engines.model.save_policy) over the
        candidates of `pool` (a descriptor file or a PoolSpec; default: the config's `pool`).
        `config`: a run config (YAML path, dict or RunConfig) for its `serve`, `episode` and
        `policy` sections; dotted `overrides` apply on top (e.g. `**{"serve.fallback_model": "X"}`).
        `pool_runtime`: the in-process pool's settings (default: no ledger folder, cache on)."""
        from router_r1.env.prompt import load_prompt_options
        from router_r1.serving.engines import make_generator

        if isinstance(config, (RunConfig, dict)):
            raw = config.model_dump() if isinstance(config, RunConfig) else dict(config)
            cfg = RunConfig.model_validate(apply_overrides(raw, overrides))
        else:
            cfg = load_config(config, overrides=overrides or None)
        spec = pool if isinstance(pool, PoolSpec) else load_pool(pool if pool is not None else cfg.pool)
        if cfg.serve.fallback_model is not None and spec.resolve(cfg.serve.fallback_model) is None:
            raise ValueError(f"serve.fallback_model {cfg.serve.fallback_model!r} is not in the pool")
        runtime = pool_runtime if isinstance(pool_runtime, PoolRuntimeConfig) else PoolRuntimeConfig.model_validate(
            {"ledger_dir": None, **(pool_runtime or {})})
        generator, tokenizer = make_generator(engine, checkpoint, device, dtype=cfg.policy.dtype)
        core = PoolCore(spec, runtime, run_id=f"router:{cfg.name}")
        batcher = TurnBatcher(generator.generate, cfg.serve.max_batch_size)

        async def call(model: str, query: Any, params: dict[str, Any] | None = None, **context: Any):
            return await core.call(model, query, params, context or None)

        service = RouterService(spec, cfg.serve, cfg.episode, tokenizer, batcher, call, run_id=f"router:{cfg.name}",
                                prompt_options=load_prompt_options(checkpoint, default=cfg.policy.prompt_options()),
                                max_context=getattr(generator, "max_context", None))
        router = cls(service, core, batcher, cfg)
        router.generator, router.tokenizer = generator, tokenizer
        return router

    # -- answering -----------------------------------------------------------------------------
    async def achat(self, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """`chat`, awaitable: concurrent calls share batched generation."""
        outcome = await self._play(messages, fields)
        return completion_body(completion_id(), self.cfg.serve.model_name, outcome.answer,
                               outcome.finish_reason, outcome.usage(), outcome.extra())

    async def aroute(self, question: str, **fields: Any) -> dict[str, Any]:
        """`route`, awaitable."""
        return route_result(await self._play([{"role": "user", "content": question}], fields))

    def chat(self, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """The OpenAI `chat.completion` (a dict, exactly as Serve sends it) for `messages`;
        `fields` are request fields: `max_tokens`, `stop`, `seed`, `temperature`, `max_turns`,
        `models`, `max_cost_usd`, ... (refused ones raise APIError 400)."""
        return self._run(self.achat(messages, **fields))

    def route(self, question: str, **fields: Any) -> dict[str, Any]:
        """One question: the answer, the models called, the cost, and the router's own text."""
        return self._run(self.aroute(question, **fields))

    def route_many(self, questions: Iterable[str], **fields: Any) -> list[dict[str, Any]]:
        """Many questions at once, their router turns generated in shared batches."""
        async def main() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(self.aroute(q, **fields) for q in questions)))
        return self._run(main())

    def prompt_ids(self, question: str) -> tuple[str, list[int]]:
        """(text, ids) of the router's prompt for `question`, as Serve renders it."""
        plan = self.service.plan(parse_request(json.dumps(
            {"model": self.cfg.serve.model_name, "messages": [{"role": "user", "content": question}]}).encode()),
            self.tenant)
        return plan.prompt, plan.prompt_ids

    async def _play(self, messages: list[dict[str, Any]], fields: dict[str, Any]) -> Outcome:
        body = {"model": self.cfg.serve.model_name, "messages": messages, **fields}
        req = parse_request(json.dumps(body).encode(), drop_params=self.cfg.serve.drop_params)
        return await self.service.run(self.service.plan(req, self.tenant))

    def _run(self, coro: Coroutine) -> Any:
        """Run on the router's own event loop (a daemon thread), so the pool core's state stays on
        one loop and this works inside a running loop too (a notebook), from any number of threads."""
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="router-r1", daemon=True).start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def close(self) -> None:
        """Flush the pool's ledger and stop the router's event loop (a later call starts another)."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self.core.close(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
        else:
            self.core.ledger.close()

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def route_result(outcome: Outcome) -> dict[str, Any]:
    """One routed question as a flat record (what `Router.route` and the MLflow model return)."""
    extra = outcome.extra()
    return {"question": outcome.plan.question, "answer": outcome.answer, "finish_reason": outcome.finish_reason,
            "format_ok": outcome.format_ok, "forced_answer": outcome.forced_answer,
            "fallback": outcome.fallback is not None, "models": [c.model for c in outcome.calls],
            "cost_usd": outcome.cost_usd, "turns": outcome.episode.turns,
            "total_tokens": outcome.usage()["total_tokens"], "response": outcome.episode.response,
            "trace": extra.get("trace", [])}
