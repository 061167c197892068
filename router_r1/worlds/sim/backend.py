"""The ModelPool's `simulated` backend: simulated candidate models behind the real backend
contract, so training, evaluation and serving run the same code path as with real models.

Options come from the pool file's `backends: {simulated: {...}}` section: the world's
`SimConfig` fields (seed, sizes, ...) plus `sleep` and `latency_scale`. By default nothing
sleeps (the descriptor's latency is only reported in `meta`), which keeps tests and training
fast; serving load tests set `sleep: true` to see real waiting.
"""
from __future__ import annotations

import asyncio
from typing import Any

from router_r1.pool.backends.base import BackendError, BackendReply, Message, ModelBackend
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.pool.types import CallStatus
from router_r1.worlds.sim.knowledge import SimConfig, KnowledgeBase
from router_r1.worlds.sim.language import count_tokens
from router_r1.worlds.sim.models import Simulation


class SimulatedBackend(ModelBackend):
    def __init__(self, pool: PoolSpec, *, sleep: bool = False, latency_scale: float = 1.0,
                 **world_options: Any):
        unknown = sorted(set(world_options) - set(SimConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown simulated backend options {unknown}; world options are "
                             f"{sorted(SimConfig.model_fields)}, plus sleep and latency_scale")
        self.sim = Simulation(pool, KnowledgeBase.build(SimConfig.model_validate(world_options)))
        self.sleep, self.latency_scale = sleep, latency_scale

    async def complete(self, model: ModelDescriptor, messages: list[Message],
                       params: dict[str, Any]) -> BackendReply:
        users = [m["content"] for m in messages if m.get("role") == "user"]
        if not users:
            raise BackendError(CallStatus.BAD_RESPONSE, "no user message to answer", retryable=False)
        if model.name not in self.sim.models:
            raise BackendError(CallStatus.BAD_RESPONSE,
                               f"{model.name!r} is not a simulated model", retryable=False)
        reply = self.sim.models[model.name].reply(users[-1])
        text = _truncate(reply.text, params.get("max_tokens") or model.backend.max_tokens)
        latency = model.latency_s * self.latency_scale
        if self.sleep and latency > 0:
            await asyncio.sleep(latency)
        it = reply.interpretation
        meta = {"simulated": True, "latency_s": latency, "correct": reply.correct,
                "hedged": reply.hedged,
                "understood": list(it.relations) if it is not None else None}
        return BackendReply(text, sum(count_tokens(m.get("content", "")) for m in messages),
                            count_tokens(text), meta=meta)


def _truncate(text: str, max_tokens: int) -> str:
    """Cut a reply to at most `max_tokens` simulated tokens, at a word boundary, as a real
    model stops at its completion cap."""
    if count_tokens(text) <= max_tokens:
        return text
    kept: list[str] = []
    for word in text.split():
        if count_tokens(" ".join(kept + [word])) > max_tokens:
            break
        kept.append(word)
    return " ".join(kept)

