"""The router app's Prometheus metrics, through Ray's own metrics API (`ray.util.metrics`).

Each replica records into Counters, Histograms and a Gauge; Ray's per-node metrics agent exports
them (with Ray's and Serve's own metrics: `ray_serve_*` request counts and latencies, replica
health, ...) in Prometheus text on the node's metrics export port (`ray start
--metrics-export-port`, `ray.init(_metrics_export_port=...)`; random when not set, listed by
`ray.nodes()` as `MetricsExportPort`). Ray prefixes every name with `ray_`, so
`router_r1_requests_total` is scraped as `ray_router_r1_requests_total`. The app's `GET /metrics`
answers with its own node's export (`node_metrics`), so a single-node deployment is scraped at the
app's address; on a cluster, Prometheus scrapes every node's export port (Ray's service discovery
file, docs/serving.md).

Tags are bounded: tenants come from the configured keys, models from the pool (a name the
router invents is counted as `<unknown>`), statuses from fixed enums.
"""
from __future__ import annotations

import urllib.request
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

from router_r1.pool.types import CallStatus
from router_r1.serving.service import REQUEST_CAP

LATENCY_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
BATCH = [1, 2, 4, 8, 16, 32, 64, 128]
UNKNOWN = "<unknown>"


class ServeMetrics:
    """Every metric one replica records. Created in the replica (metric objects are not pickled)."""

    def __init__(self, app: str, model_names: list[str]):
        self.models = set(model_names)
        self.app = app
        self.requests = Counter("router_r1_requests_total", "chat completion requests by HTTP status",
                                tag_keys=("app", "tenant", "status", "stream"))
        self.latency = Histogram("router_r1_request_latency_s", "time to the full response, seconds",
                                 boundaries=LATENCY_S, tag_keys=("app", "tenant", "stream"))
        self.first_token = Histogram("router_r1_time_to_first_answer_token_s",
                                     "streamed requests: time to the first answer token, seconds",
                                     boundaries=LATENCY_S, tag_keys=("app", "tenant"))
        self.tokens = Counter("router_r1_tokens_total", "tokens read and written, by the router and by the "
                              "candidate models it called", tag_keys=("app", "tenant", "who", "kind"))
        self.cost = Counter("router_r1_cost_usd_total", "USD billed for candidate calls, per tenant and model",
                            tag_keys=("app", "tenant", "model"))
        self.calls = Counter("router_r1_calls_total", "candidate calls by model and status (ok or the failure)",
                             tag_keys=("app", "model", "status"))
        self.route_failures = Counter("router_r1_route_failures_total", "candidate calls that failed",
                                      tag_keys=("app", "model", "status"))
        self.fallbacks = Counter("router_r1_fallbacks_total", "requests answered by serve.fallback_model",
                                 tag_keys=("app", "tenant"))
        self.forced = Counter("router_r1_forced_answers_total", "answers forced on the final turn",
                              tag_keys=("app", "tenant"))
        self.budget_refusals = Counter("router_r1_budget_refusals_total",
                                       "candidate calls refused by a tenant or run budget",
                                       tag_keys=("app", "tenant", "model"))
        self.in_flight = Gauge("router_r1_requests_in_flight", "requests being answered by this replica",
                               tag_keys=("app",))
        self.batch = Histogram("router_r1_generation_batch_turns", "router turns per batched generation",
                               boundaries=BATCH, tag_keys=("app",))
        self._in_flight = 0

    def _model(self, name: str) -> str:
        return name if name in self.models else UNKNOWN

    def started(self) -> None:
        self._in_flight += 1
        self.in_flight.set(self._in_flight, tags={"app": self.app})

    def ended(self) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self.in_flight.set(self._in_flight, tags={"app": self.app})

    def request(self, tenant: str, status: int, latency_s: float, stream: bool) -> None:
        tags = {"app": self.app, "tenant": tenant, "stream": str(bool(stream)).lower()}
        self.requests.inc(1, tags={**tags, "status": str(status)})
        self.latency.observe(latency_s, tags=tags)

    def first_answer_token(self, tenant: str, seconds: float) -> None:
        self.first_token.observe(seconds, tags={"app": self.app, "tenant": tenant})

    def outcome(self, outcome: Any) -> None:
        """Tokens, cost and calls of a finished request (router_r1 Outcome)."""
        tenant = outcome.plan.tenant
        base = {"app": self.app, "tenant": tenant}
        for who, kind, n in (("router", "prompt", outcome.router_prompt_tokens),
                             ("router", "completion", outcome.router_completion_tokens),
                             ("candidates", "prompt", sum(c.prompt_tokens for c in outcome.calls)),
                             ("candidates", "completion", sum(c.completion_tokens for c in outcome.calls))):
            if n > 0:
                self.tokens.inc(n, tags={**base, "who": who, "kind": kind})
        self.calls_made(tenant, outcome.calls)
        if outcome.fallback is not None:
            self.fallbacks.inc(1, tags=base)
        if outcome.forced_answer:
            self.forced.inc(1, tags=base)

    def calls_made(self, tenant: str, calls: list) -> None:
        for c in calls:
            model = self._model(c.model)
            status = c.status.value
            self.calls.inc(1, tags={"app": self.app, "model": model, "status": status})
            if c.cost_usd > 0:
                self.cost.inc(c.cost_usd, tags={"app": self.app, "tenant": tenant, "model": model})
            if not c.ok:
                self.route_failures.inc(1, tags={"app": self.app, "model": model, "status": status})
                if c.status is CallStatus.BUDGET_EXCEEDED and c.meta.get("budget_scope") != REQUEST_CAP:
                    self.budget_refusals.inc(1, tags={"app": self.app, "tenant": tenant, "model": model})

    def generation_batch(self, turns: int) -> None:
        self.batch.observe(turns, tags={"app": self.app})


def metrics_port() -> tuple[str, int] | None:
    """(address, port) of this node's Ray metrics export, or None when it is not known."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n.get("NodeID") == node and n.get("Alive", True):
            port = n.get("MetricsExportPort")
            if port:
                return n.get("NodeManagerAddress", "127.0.0.1"), int(port)
    return None


def node_metrics(timeout_s: float = 10.0) -> str:
    """This node's Prometheus text, as Ray's metrics agent exports it."""
    where = metrics_port()
    if where is None:
        raise RuntimeError("this Ray node reports no metrics export port")
    addr, port = where
    last: Exception | None = None
    for host in dict.fromkeys(("127.0.0.1", addr)):  # the agent may listen on the node address only
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as r:
                return r.read().decode("utf-8", "replace")
        except OSError as e:
            last = e
    raise RuntimeError(f"Ray's metrics export on port {port} did not answer: {last}")
