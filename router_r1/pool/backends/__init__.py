"""Model backends: how the ModelPool reaches one kind of model.

Every backend implements `ModelBackend`. The registry maps a descriptor's `backend.kind` to the
class, imported lazily so that e.g. vLLM is only imported where a model uses it.
"""
from __future__ import annotations

import importlib
from typing import Any

from router_r1.pool.backends.base import BackendError, BackendReply, ModelBackend
from router_r1.pool.descriptors import PoolSpec

REGISTRY: dict[str, str] = {
    "openai": "router_r1.pool.backends.openai_http:OpenAIBackend",
    "vllm": "router_r1.pool.backends.vllm_engine:VLLMBackend",
    "transformers": "router_r1.pool.backends.hf_local:TransformersBackend",
    "replay": "router_r1.worlds.replay.backend:ReplayBackend",
    "simulated": "router_r1.worlds.sim.backend:SimulatedBackend",
    "world": "router_r1.worlds.backend:WorldBackend",
}


def backend_class(kind: str) -> type[ModelBackend]:
    try:
        target = REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown backend kind {kind!r}; known: {sorted(REGISTRY)}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def make_backend(kind: str, pool: PoolSpec, **overrides: Any) -> ModelBackend:
    """Build the backend for `kind` with the pool's shared options for it (pool.backends[kind]).
    Every backend class takes `pool` as its first argument plus its own keyword options."""
    options = {**pool.backends.get(kind, {}), **overrides}
    return backend_class(kind)(pool, **options)


__all__ = ["BackendError", "BackendReply", "ModelBackend", "REGISTRY", "backend_class", "make_backend"]
