"""Per-model traffic shaping: token buckets for requests/min and tokens/min, and a cap on calls in
flight.

Callers are never rejected, they wait; and they wait in arrival order: each bucket serves its
waiters behind one `asyncio.Lock` (FIFO), so a burst cannot starve an early caller.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from router_r1.pool.descriptors import Limits

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """`rate` units per second refill a bucket of `capacity` units.

    A request larger than the whole bucket waits for a full bucket and then drives the level
    negative (debt), so it is served eventually instead of waiting forever.
    """

    def __init__(self, rate: float, capacity: float, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep):
        if rate <= 0 or capacity <= 0:
            raise ValueError("token bucket rate and capacity must be positive")
        self.rate, self.capacity = float(rate), float(capacity)
        self._clock, self._sleep = clock, sleep
        self._level = self.capacity
        self._t = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._t) * self.rate)
        self._t = now

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    async def acquire(self, n: float = 1.0) -> None:
        need = min(float(n), self.capacity)
        async with self._lock:
            while True:
                self._refill()
                if self._level >= need - 1e-9:
                    self._level -= n
                    return
                await self._sleep((need - self._level) / self.rate)

    def adjust(self, delta: float) -> None:
        """Correct an earlier acquire once the real amount is known: `delta` > 0 takes more,
        < 0 gives back."""
        self._refill()
        self._level = min(self.capacity, self._level - delta)


class ModelLimiter:
    """Everything that gates one model: concurrency first, then the buckets.

    The slot is taken before the buckets so that a call admitted by a bucket is sent at once;
    the other order lets admitted calls pile up behind the semaphore and leave in a burst.
    """

    def __init__(self, limits: Limits, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        self._sem = asyncio.Semaphore(max(1, limits.max_concurrency))
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        self.requests = None if rpm is None else TokenBucket(
            rpm / 60.0, limits.burst_requests or max(1.0, rpm / 60.0), clock, sleep)
        self.tokens = None if tpm is None else TokenBucket(
            tpm / 60.0, limits.burst_tokens or max(1.0, tpm / 60.0), clock, sleep)

    @asynccontextmanager
    async def slot(self, est_tokens: int) -> AsyncIterator[None]:
        async with self._sem:
            if self.requests is not None:
                await self.requests.acquire(1)
            if self.tokens is not None:
                await self.tokens.acquire(est_tokens)
            yield

    def settle_tokens(self, estimated: int, actual: int) -> None:
        if self.tokens is not None:
            self.tokens.adjust(actual - estimated)
