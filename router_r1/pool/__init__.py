"""The ModelPool's Ray-free logic: rate limits, budgets, ledger, cache, circuit breaker, and the
`PoolCore` (`core`) that chains them around the backends (`backends/`); the model descriptors
(`descriptors`) and the call result every caller gets back (`types`). `actors/model_pool.py` is
the thin Ray shell."""
