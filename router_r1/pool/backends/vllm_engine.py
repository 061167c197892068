"""A vLLM engine inside the cluster (the `gpu` extra; vLLM is imported only when a model uses it).

Each checkpoint gets one `VLLMEngine`: an `AsyncLLMEngine` built from `AsyncEngineArgs`, which
batches concurrent requests itself (continuous batching), so the backend just submits each call.
With Ray running, the engine lives in its own actor holding a GPU (`num_gpus`), named per
checkpoint so every pool process shares it; without Ray (or with `in_process=True`) it runs in
the pool's process. Chat templates come from the engine's tokenizer. The vLLM calls made here
are checked against the pinned vLLM by `benchmarks/vllm_api_check.py`.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import uuid
from typing import Any

from router_r1.pool.backends.base import BackendError, BackendReply, Message, ModelBackend, render_chat
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.pool.types import CallStatus

_SAMPLING_KEYS = {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty",
                  "frequency_penalty"}


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError("the 'vllm' backend needs vLLM: pip install 'router-r1[gpu]' on a GPU machine "
                          f"({e})") from None
    return vllm


class VLLMEngine:
    """One checkpoint served by vLLM's AsyncLLMEngine. Usable in-process or as a Ray actor."""

    def __init__(self, checkpoint: str, engine_args: dict[str, Any] | None = None):
        vllm = _require_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs

        args = AsyncEngineArgs(model=checkpoint, **(engine_args or {}))
        self.engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self._sampling_cls = vllm.SamplingParams
        self._tokenizer = None

    async def _render(self, messages: list[Message]) -> str:
        if self._tokenizer is None:
            # A plain method in the pinned vLLM (AsyncLLM); a coroutine in older releases.
            tok = self.engine.get_tokenizer()
            self._tokenizer = await tok if inspect.isawaitable(tok) else tok
        return render_chat(self._tokenizer, messages)

    async def generate(self, messages: list[Message], params: dict[str, Any]) -> tuple[str, int, int, str | None]:
        """(text, prompt tokens, completion tokens, finish reason) of one call."""
        prompt = await self._render(messages)
        sampling = self._sampling_cls(**{k: v for k, v in params.items() if k in _SAMPLING_KEYS})
        request_id = uuid.uuid4().hex
        final = None
        try:
            async for out in self.engine.generate(prompt, sampling, request_id):
                final = out
        except asyncio.CancelledError:  # the pool timed out: free the engine's slot
            await self.engine.abort(request_id)
            raise
        if final is None or not final.outputs:
            raise RuntimeError("vLLM returned no output")
        o = final.outputs[0]
        return o.text, len(final.prompt_token_ids or []), len(o.token_ids), o.finish_reason


class VLLMBackend(ModelBackend):
    def __init__(self, pool: PoolSpec, *, engine_args: dict[str, Any] | None = None,
                 num_gpus: float = 1.0, in_process: bool = False, namespace: str | None = None):
        self.pool, self.engine_args, self.num_gpus = pool, dict(engine_args or {}), num_gpus
        self.in_process, self.namespace = in_process, namespace
        self._engines: dict[str, Any] = {}  # checkpoint -> VLLMEngine or actor handle

    def _engine(self, model: ModelDescriptor) -> Any:
        ckpt = model.backend.checkpoint or model.backend.api_model
        if not ckpt:
            raise BackendError(CallStatus.CONNECTION_ERROR, f"{model.name}: no checkpoint for vLLM",
                               retryable=False)
        ckpt = self.pool.resolve_path(ckpt) if model.backend.checkpoint else ckpt
        if ckpt not in self._engines:
            args = {**self.engine_args, **model.backend.options.get("engine_args", {})}
            import ray

            if self.in_process or not ray.is_initialized():
                self._engines[ckpt] = VLLMEngine(ckpt, args)
            else:
                _require_vllm()  # fail here, clearly, not inside a GPU actor
                name = "vllm-" + hashlib.sha1(ckpt.encode()).hexdigest()[:12]
                self._engines[ckpt] = ray.remote(VLLMEngine).options(
                    name=name, namespace=self.namespace, get_if_exists=True, num_gpus=self.num_gpus,
                    max_concurrency=1000, max_restarts=1).remote(ckpt, args)
        return self._engines[ckpt]

    async def complete(self, model: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any]) -> BackendReply:
        try:
            engine = self._engine(model)
        except ImportError as e:
            raise BackendError(CallStatus.CONNECTION_ERROR, str(e), retryable=False) from None
        try:
            if isinstance(engine, VLLMEngine):
                text, pt, ct, finish = await engine.generate(messages, params)
            else:
                text, pt, ct, finish = await engine.generate.remote(messages, params)
        except BackendError:
            raise
        except Exception as e:  # engine died or rejected the request
            raise BackendError(CallStatus.CONNECTION_ERROR, f"{model.name}: vLLM engine error: "
                               f"{type(e).__name__}: {e}", retryable=True) from None
        return BackendReply(text=text, prompt_tokens=pt, completion_tokens=ct,
                            meta={"finish_reason": finish} if finish else {})
