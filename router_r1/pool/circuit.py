"""Consecutive-failure circuit breaker: after `failures` model failures in a row the model is
skipped for `cooldown_s`, so calls fail fast instead of queueing behind a dead endpoint. After
the cooldown one probe call is let through (half-open); its outcome closes or reopens the circuit.
"""
from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooldown_s, self._clock = max(1, failures), cooldown_s, clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() >= self._opened_at + self.cooldown_s else "open"

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def retry_in(self) -> float:
        return 0.0 if self._opened_at is None else max(0.0, self._opened_at + self.cooldown_s - self._clock())

    def record_success(self) -> None:
        self._consecutive, self._opened_at, self._probing = 0, None, False

    def release_probe(self) -> None:
        """The probe ended without a verdict (cancelled, or a 429): let the next call probe."""
        self._probing = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.threshold:
            self._opened_at = self._clock()
        self._probing = False
