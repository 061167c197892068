"""Response cache for deterministic (temperature-0) calls, with single-flight.

RL training asks the same sub-question of the same model many times (a GRPO group samples one
question G times). Only temperature-0 calls are cached: a sampled reply is meant to vary.
Identical calls already in flight wait for the first one instead of paying again.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from dataclasses import replace
from typing import Any

from router_r1.pool.types import CallResult


def cache_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str | None:
    """A stable key, or None when the call is not deterministic and must not be cached."""
    if params.get("temperature") != 0:
        return None
    params = {**params, "temperature": 0.0}  # 0 and 0.0 are the same call
    blob = json.dumps([model, messages, params], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


class ResponseCache:
    """LRU of successful results, plus the futures of calls in flight."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._store: OrderedDict[str, CallResult] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[CallResult]] = {}

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: str) -> CallResult | None:
        hit = self._store.get(key)
        if hit is not None:
            self._store.move_to_end(key)
        return hit

    def put(self, key: str, result: CallResult) -> None:
        if not result.ok:
            return
        self._store[key] = replace(result, meta=dict(result.meta))  # the caller keeps its own
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def inflight(self, key: str) -> asyncio.Future[CallResult] | None:
        return self._inflight.get(key)

    def begin(self, key: str) -> asyncio.Future[CallResult]:
        fut: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        return fut

    def end(self, key: str, result: CallResult | None) -> None:
        """Wake followers; `None` (the leader was cancelled) tells them to call for themselves."""
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(result)  # type: ignore[arg-type]
