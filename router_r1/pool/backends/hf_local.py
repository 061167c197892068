"""A local checkpoint directory run with transformers (CPU or GPU), batched.

Each checkpoint is loaded once (local files only: no hub downloads) and served by a small asyncio
micro-batcher: calls that arrive within `batch_wait_s` of each other and share sampling settings
are generated together in one `model.generate`, which runs in a worker thread so the pool's event
loop keeps serving other models meanwhile. The chat template is used when the tokenizer has one.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_r1.pool.backends.base import BackendError, BackendReply, Message, ModelBackend, render_chat
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.pool.types import CallStatus


@dataclass
class _Item:
    prompt: str
    stop: list[str]
    future: asyncio.Future


class _Engine:
    """One checkpoint: tokenizer, model, and the batcher feeding them."""

    def __init__(self, path: str, device: str, max_batch_size: int, batch_wait_s: float):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch, self.device = torch, device
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tok.padding_side = "left"  # decoder-only batches pad on the left
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device).eval()
        self.max_batch_size, self.batch_wait_s = max_batch_size, batch_wait_s
        self.batches_run = 0  # generate() invocations, for tests and metrics
        self._queues: dict[tuple, asyncio.Queue[_Item]] = {}
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gen_lock = threading.Lock()  # one generate at a time per model

    def render(self, messages: list[Message]) -> str:
        return render_chat(self.tok, messages)

    async def submit(self, messages: list[Message], params: dict[str, Any], max_tokens: int) -> BackendReply:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # queues and batcher tasks belong to one event loop
            self._loop, self._queues, self._tasks = loop, {}, []
        temperature = float(params.get("temperature", 1.0) or 0.0)
        key = (int(params.get("max_tokens", max_tokens)), temperature,
               float(params.get("top_p", 1.0)), params.get("seed"))
        stop = params.get("stop") or []
        item = _Item(self.render(messages), [stop] if isinstance(stop, str) else list(stop),
                     loop.create_future())
        if key not in self._queues:
            self._queues[key] = asyncio.Queue()
            self._tasks.append(loop.create_task(self._batcher(key, self._queues[key])))
        await self._queues[key].put(item)
        return await item.future

    async def _batcher(self, key: tuple, queue: asyncio.Queue[_Item]) -> None:
        while True:
            batch = [await queue.get()]
            deadline = asyncio.get_running_loop().time() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), timeout))
                except TimeoutError:
                    break
            live = [it for it in batch if not it.future.done()]  # callers that gave up are skipped
            if not live:
                continue
            try:
                replies = await asyncio.to_thread(self._generate, [it.prompt for it in live], key)
            except Exception as e:
                err = BackendError(CallStatus.BAD_RESPONSE, f"generation failed: {type(e).__name__}: {e}",
                                   retryable=False)
                for it in live:
                    if not it.future.done():
                        it.future.set_exception(err)
                continue
            for it, (text, pt, ct) in zip(live, replies):
                if not it.future.done():
                    it.future.set_result(BackendReply(_cut(text, it.stop), pt, ct))

    def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks, self._queues = [], {}

    def _generate(self, prompts: list[str], key: tuple) -> list[tuple[str, int, int]]:
        max_new, temperature, top_p, seed = key
        torch = self.torch
        enc = self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": sample,
                                  "pad_token_id": self.tok.pad_token_id}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        with self._gen_lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(int(seed))
            out = self.model.generate(**enc, **kwargs)
            self.batches_run += 1
        new = out[:, enc["input_ids"].shape[1]:]
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        eos = self.tok.eos_token_id
        replies = []
        for row, pt in zip(new.tolist(), prompt_lens):
            if eos is not None and eos in row:
                row = row[:row.index(eos)]
            replies.append((self.tok.decode(row, skip_special_tokens=True), int(pt), len(row)))
        return replies


def _cut(text: str, stops: list[str]) -> str:
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


class TransformersBackend(ModelBackend):
    def __init__(self, pool: PoolSpec, *, device: str | None = None, max_batch_size: int = 8,
                 batch_wait_s: float = 0.005):
        self.pool, self.max_batch_size, self.batch_wait_s = pool, max_batch_size, batch_wait_s
        self.device = device
        self._engines: dict[str, _Engine] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    def _path(self, model: ModelDescriptor) -> str:
        if not model.backend.checkpoint:
            raise BackendError(CallStatus.CONNECTION_ERROR, f"{model.name}: no checkpoint directory",
                               retryable=False)
        path = self.pool.resolve_path(model.backend.checkpoint)
        if not Path(path).is_dir():
            raise BackendError(CallStatus.CONNECTION_ERROR, f"{model.name}: checkpoint {path} not found",
                               retryable=False)
        return path

    async def engine(self, model: ModelDescriptor) -> _Engine:
        """The loaded checkpoint, loaded once, in a thread (loading takes seconds)."""
        path = self._path(model)
        if path not in self._engines:
            lock = self._loading.setdefault(path, asyncio.Lock())
            async with lock:
                if path not in self._engines:
                    device = self.device or _default_device()
                    try:
                        self._engines[path] = await asyncio.to_thread(
                            _Engine, path, device, self.max_batch_size, self.batch_wait_s)
                    except Exception as e:
                        raise BackendError(CallStatus.CONNECTION_ERROR,
                                           f"{model.name}: cannot load {path}: {type(e).__name__}: {e}",
                                           retryable=False) from None
        return self._engines[path]

    async def complete(self, model: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any]) -> BackendReply:
        engine = await self.engine(model)
        return await engine.submit(messages, params, model.backend.max_tokens)

    async def close(self) -> None:
        for e in self._engines.values():
            e.stop()
        self._engines.clear()


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"
