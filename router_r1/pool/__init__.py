"""The ModelPool's Ray-free logic: rate limits, budgets, ledger, cache, circuit breaker, and the
`PoolCore` that chains them around the backends. `actors/model_pool.py` is the thin Ray shell."""
from router_r1.pool.core import PoolCore

__all__ = ["PoolCore"]
