"""The pool's runtime settings: ledger, cache, default sampling, budgets and the actor's Ray options."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PoolRuntimeConfig(BaseModel):
    """How the ModelPool actor runs (the models themselves are in the descriptor file): the
    `pool_runtime` section of the run config (router_r1.infra.config)."""

    model_config = ConfigDict(extra="forbid")

    actor_name: str = "model_pool"
    namespace: str = "router_r1"
    ledger_dir: str | None = "outputs/ledger"  # None: records kept in memory only (tests, benchmarks)
    flush_every: int = 256  # ledger records buffered before a Parquet flush
    # Each attempt's intent is written (os.write: it survives a killed or crashed pool process)
    # before it is sent. True: also fsync'd (one fsync per event-loop tick for all its intents), so
    # it survives a power loss too, at +12-22% p50 on a 20 ms call at 64 in flight (router_r1/pool/README.md).
    intent_fsync: bool = False
    cache: bool = True  # answer identical temperature-0 calls from cache, billed at zero
    cache_size: int = 100_000  # cached replies kept (LRU)
    # Sampling params for every routed call unless the caller overrides them. Temperature 0 makes
    # candidate replies deterministic (less reward noise) and cacheable.
    default_params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.0})
    run_budget_usd: float | None = None  # USD cap for each run_id calling through the pool
    tenant_budgets_usd: dict[str, float] = Field(default_factory=dict)
    num_cpus: float = 0.5
    max_restarts: int = 4
    max_concurrency: int = 1000  # actor calls in flight at once (async actor)
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources (cluster.yaml)
