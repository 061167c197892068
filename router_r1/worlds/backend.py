"""The ModelPool's `world` backend: a world's own recorded answers (`World.recorded`), served to
the pool with no table on disk. Registered in router_r1.pool.backends.REGISTRY.

A pool model with `backend: {kind: world}` is answered from the run's world: the drivers
(`router-r1 train`, `evaluate --config`, `train-rllib` has no pool) build the world from
`data:` and hand its recorded answers to the pool (`WorldBackend(pool, recorded=...)`). Anything
else that builds a pool from the descriptor file alone (e.g. `router-r1 serve`) names the run
config whose world answers: `backends: {world: {config: run.yaml}}` (relative to the pool file).

Lookup, billing and errors are the replay backend's (router_r1.worlds.replay.backend): the key is
the question (the last user message, whitespace-collapsed), the reply is the model's recorded
response, the cost the recorded one (else priced from the descriptor with the recorded token
counts, else estimates); a question or model without a recorded answer is a non-retryable
INVALID_REQUEST. Ray-free.
"""
from __future__ import annotations

from router_r1.pool.descriptors import PoolSpec
from router_r1.worlds.base import RecordedAnswers, make_world
from router_r1.worlds.replay.backend import ReplayBackend


class WorldBackend(ReplayBackend):
    kind, source = "world", "the world's recorded answers"

    def __init__(self, pool: PoolSpec, *, recorded: RecordedAnswers | None = None, config: str | None = None):
        if recorded is None:
            if config is None:
                raise ValueError("world backend: no recorded answers; router-r1 train and evaluate --config "
                                 "hand over the run's world, elsewhere set backends.world.config to the run config")
            from router_r1.infra.config import load_config

            cfg = load_config(pool.resolve_path(config))
            world = make_world(cfg, cfg.load_pool().seen())
            recorded = world.recorded()
            if recorded is None:
                raise ValueError(f"world backend: the {type(world).__name__} world of {config} records no answers")
        super().__init__(pool, table=recorded)  # type: ignore[arg-type]  (any RecordedAnswers)
