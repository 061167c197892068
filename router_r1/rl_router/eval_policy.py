"""The RLlib router as an evaluation policy: its decisions, executed through the ModelPool."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from router_r1.evaluation.baselines import EvalItem, PolicyRun
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.types import CallFn
from router_r1.rl_router.router import RLlibRouter


class RLlibPolicy:
    """Call the model the router picks; after each reply, it either calls again or answers with
    the last reply (the answer is that reply's text)."""

    def __init__(self, router: RLlibRouter, name: str, concurrency: int = 32):
        self.router, self.name, self.concurrency = router, name, concurrency

    @classmethod
    def load(cls, path: str | Path, pool: PoolSpec | None = None, concurrency: int = 32) -> "RLlibPolicy":
        return cls(RLlibRouter.load(path, pool), f"rllib:{Path(path).name.removeprefix('rllib_')}", concurrency)

    async def run(self, items: Sequence[EvalItem], call: CallFn) -> list[PolicyRun]:
        sem = asyncio.Semaphore(self.concurrency)
        r = self.router

        async def one(item: EvalItem) -> PolicyRun:
            async with sem:
                t0 = time.perf_counter()
                qv = r.question_features(item.question)
                called = np.zeros(r.spec.max_models, dtype=np.float32)
                reply, calls, decide_s = None, [], 0.0
                for step in range(r.max_calls + 1):
                    td = time.perf_counter()
                    d = r.decide(qv, reply, called, step)
                    decide_s += time.perf_counter() - td
                    if d.model is None:
                        break
                    called[d.action] = 1.0
                    res = await call(d.model, item.question, episode_id=item.uid)
                    calls.append(res)
                    if res.ok:
                        reply = res.text
                return PolicyRun(reply, calls, True, time.perf_counter() - t0,
                                 {"decide_s": decide_s})

        return list(await asyncio.gather(*(one(i) for i in items)))
