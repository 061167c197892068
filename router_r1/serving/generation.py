"""Router turns, generated in batches: the engine call shared by Serve's `@serve.batch` method
and the in-process `TurnBatcher` of `router_r1.serving.Router` (turn batching), and the turn
function over an engine that batches continuously itself (`ContinuousTurns`). Ray-free.

A turn is (context ids, `GenParams`). Turns with the same sampling parameters share one
`generate` call; a seeded sampled turn is generated alone (its draws then depend on its seed
only); a batch that fails is retried turn by turn, so one poisoned request cannot fail the
others batched with it.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from router_r1.env.generation import Generation, TurnFailed
from router_r1.serving.openai_api import APIError

# temperature, top_p, max_new_tokens, seed (None: unseeded): one batch group.
GenParams = tuple[float, float, int, "int | None"]


TokenSink = Callable[[int], None]  # told of each sampled token id of one turn (from the generating thread)


def _takes_on_token(generate: Callable[..., Any]) -> bool:
    import inspect

    try:
        return "on_token" in inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return False


async def generate_isolated(generate: Callable[..., list[Generation]],
                            items: list[tuple]) -> list[Generation | Exception]:
    """One turn for each item (context ids, GenParams[, TokenSink]), batched per sampling
    parameters, in a worker thread; an item's sink hears its tokens as they are sampled (engines
    whose `generate` takes `on_token`; others return the turn whole). A seeded turn
    (its seed is not None) is generated alone, so its draws depend on its seed only. A batch that
    fails is retried item by item, so a poisoned request gets its own exception back (its
    caller answers 400) and the requests batched with it still get their turns."""
    groups: dict[Any, list[int]] = {}
    for i, item in enumerate(items):
        g = item[1]
        groups.setdefault(g if g[3] is None else (g, i), []).append(i)
    sinks = [item[2] if len(item) > 2 else None for item in items]
    streams = any(sinks) and _takes_on_token(generate)
    out: list[Generation | Exception] = [Generation() for _ in items]
    for idx in groups.values():
        temperature, top_p, max_new, seed = items[idx[0]][1]

        def run(ids: list[int]) -> Any:
            kw: dict[str, Any] = {} if seed is None else {"seed": seed}
            if streams and any(sinks[i] for i in ids):
                def on_token(row: int, token: int, ids: list[int] = ids) -> None:
                    sink = sinks[ids[row]]
                    if sink is not None:
                        sink(token)
                kw["on_token"] = on_token
            return asyncio.to_thread(generate, [items[i][0] for i in ids], max_new_tokens=max_new,
                                     temperature=temperature, top_p=top_p, **kw)
        try:
            gens: list[Generation | Exception] = list(await run(idx))
        except Exception:
            gens = []
            for i in idx:
                try:
                    gens.extend(await run([i]))
                except Exception as e:
                    gens.append(e)
        for i, g in zip(idx, gens):
            out[i] = g
    return out


def turn_result(res: Generation | Exception) -> Generation:
    """A batched turn's result for its request: a turn that failed alone (`generate_isolated`) is
    this request's problem, a 400, whichever batcher ran it."""
    if isinstance(res, Exception):
        raise APIError(400, f"the router cannot process this request: {type(res).__name__}: "
                       f"{str(res)[:200]}", param="messages", code="invalid_value")
    return res


class TurnBatcher:
    """`await batcher(context, gen)`: one router turn, generated with every turn submitted in the
    same event-loop tick (the in-process counterpart of Serve's `@serve.batch`), in a worker
    thread. Turns that arrive while a batch runs form the next one."""

    def __init__(self, generate: Callable[..., list[Generation]], max_batch_size: int = 32):
        self._generate, self.max_batch_size = generate, max_batch_size
        self._pending: list[tuple[list[int], GenParams, TokenSink | None, asyncio.Future]] = []
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None  # the loop `_lock` belongs to
        self._flushes: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks
        self.batches = self.turns = 0

    async def __call__(self, context: list[int], gen: GenParams, on_token: TokenSink | None = None) -> Generation:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((list(context), gen, on_token, fut))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._start_flush)
        return turn_result(await fut)

    def _start_flush(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        if self._lock_loop is not loop:  # first use, or the owner moved to a new loop (Router.close)
            self._lock, self._lock_loop = asyncio.Lock(), loop
        async with self._lock:
            while self._pending:
                batch, self._pending = self._pending[:self.max_batch_size], self._pending[self.max_batch_size:]
                try:
                    outs: list[Any] = await generate_isolated(self._generate, [(c, g, k) for c, g, k, _ in batch])
                except Exception as e:  # the engine itself broke: every waiting turn hears of it, as is
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                finally:
                    self.batches += 1
                    self.turns += len(batch)
                for (_, _, _, fut), out in zip(batch, outs):
                    if not fut.done():
                        fut.set_result(out)


class ContinuousTurns:
    """`await turns(context, gen, on_token)`: one router turn on an engine that batches
    continuously itself (`router_r1.engines.continuous.ContinuousHFEngine` on transformers,
    `router_r1.engines.vllm_async.AsyncVLLMEngine`): each turn is submitted as it comes and joins
    the running batch at the engine's next step, so nothing waits for a batch to form or end.
    A turn that failed alone (`TurnFailed`) is its request's 400, as in `generate_isolated`."""

    def __init__(self, engine: Any):
        self.engine = engine

    async def __call__(self, context: list[int], gen: GenParams, on_token: TokenSink | None = None) -> Generation:
        temperature, top_p, max_new, seed = gen
        try:
            return await self.engine.generate_turn(context, max_new, temperature, top_p, seed=seed,
                                                   on_token=on_token)
        except TurnFailed as e:
            return turn_result(e.cause if isinstance(e.cause, Exception) else e)
