"""Test doubles for the pool: a scripted in-process backend and a small pool that uses it."""
from __future__ import annotations

import asyncio

from router_r1.pool.backends.base import BackendReply, ModelBackend
from router_r1.pool.descriptors import PoolSpec


class ScriptedBackend(ModelBackend):
    """Answers per model from a script of outcomes (then 'ok'); logs every attempt.
    An outcome is "ok", a float (seconds to hang, then ok), a BackendError, or any exception."""

    def __init__(self, scripts=None, delay_s=0.0):
        self.scripts = {k: list(v) for k, v in (scripts or {}).items()}
        self.delay_s = delay_s
        self.log: list[tuple[str, list]] = []

    async def complete(self, model, messages, params):
        self.log.append((model.name, messages))
        script = self.scripts.get(model.name) or []
        outcome = script.pop(0) if script else "ok"
        if isinstance(outcome, (int, float)):
            await asyncio.sleep(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        elif outcome == "bad":
            return "not a BackendReply"
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return BackendReply(text=f"{model.name}: {messages[-1]['content']}", prompt_tokens=10,
                            completion_tokens=5)


def make_pool(**limits):
    lim = {"backoff_base_s": 0.001, "backoff_max_s": 1.0, **limits}
    return PoolSpec.model_validate({"models": [
        {"name": "A", "aliases": ["a-alias"], "price_in": 1.0, "price_out": 2.0, "limits": lim,
         "fallback": "B", "backend": {"kind": "simulated", "system_prompt": "Be brief."}},
        {"name": "B", "price": 0.5, "limits": lim, "backend": {"kind": "simulated"}},
        {"name": "C", "price": 0.5, "limits": lim, "backend": {"kind": "simulated"}},
    ]})
