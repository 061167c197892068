"""Per-model call statistics kept by the pool, and their flat form for MLflow.

Counts are since the pool (re)started; billed totals that must survive restarts come from the
ledger instead. Latency quantiles are over the last `window` calls.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from router_r1.pool.types import CallResult

MIN_COMPLETIONS = 8  # answers seen before a model's observed completion lengths are trusted
COMPLETION_QUANTILE = 0.9  # reservations expect this quantile of the observed lengths
COMPLETION_WINDOW = 1000  # the last answers kept per model


def quantile(xs: list[float], q: float) -> float:
    """The `q` quantile of the sorted, non-empty `xs` (nearest rank, no interpolation)."""
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@dataclass
class ModelStats:
    window: int = 10_000
    calls: int = 0
    errors: int = 0
    retries: int = 0
    cache_hits: int = 0
    spend_usd: float = 0.0
    latencies: deque = field(default_factory=deque)
    completions: deque = field(default_factory=deque)  # completion tokens of answered calls
    _expected: int | None = field(default=None, init=False, repr=False)  # cached quantile of `completions`

    def __post_init__(self) -> None:
        self.latencies = deque(self.latencies, maxlen=self.window)  # the last `window` calls
        self.completions = deque(self.completions, maxlen=COMPLETION_WINDOW)

    def add(self, r: CallResult) -> None:
        self.calls += 1
        self.errors += 0 if r.ok else 1
        self.cache_hits += int(r.cache_hit)
        self.spend_usd += r.cost_usd
        self.latencies.append(r.latency_s)
        if r.ok and not r.cache_hit and r.served_by is None and r.attempts <= 1:
            self.completions.append(r.completion_tokens)  # this model's own, single-attempt answer
            self._expected = None

    def expected_completion_tokens(self, max_tokens: int) -> int:
        """The completion length a budget reservation expects of this model's next call: the
        `COMPLETION_QUANTILE` of its last answers, at most `max_tokens`; `max_tokens` itself until
        `MIN_COMPLETIONS` answers were seen. The worst case (max_tokens) is reserved beside it."""
        if len(self.completions) < MIN_COMPLETIONS:
            return max_tokens
        if self._expected is None:  # sorted once per new answer, not once per call
            self._expected = quantile(sorted(self.completions), COMPLETION_QUANTILE)
        return min(max_tokens, self._expected)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)

        def q(p: float) -> float:
            return quantile(lat, p) if lat else 0.0

        return {"calls": self.calls, "errors": self.errors, "retries": self.retries,
                "cache_hits": self.cache_hits, "p50_latency_s": q(0.5), "p99_latency_s": q(0.99),
                "spend_usd": self.spend_usd}


def flat_metrics(metrics: dict[str, dict[str, object]], prefix: str = "pool") -> dict[str, float]:
    """`{model: {name: value}}` -> `{"pool/<model>/<name>": value}`, numbers only: what the run
    that owns the pool passes to `mlflow.log_metrics`."""
    return {f"{prefix}/{model}/{k}": float(v) for model, m in metrics.items() for k, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
