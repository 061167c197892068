"""Unit tests of the pool's parts: token bucket, limiter, budget, ledger, circuit, cache."""
from __future__ import annotations

import asyncio
import json
import os

import pyarrow.parquet as pq
import pytest

from router_r1.pool.budget import Budget
from router_r1.pool.cache import ResponseCache, cache_key
from router_r1.pool.circuit import CircuitBreaker
from router_r1.pool.descriptors import Limits
from router_r1.pool.ledger import Ledger, read_records
from router_r1.pool.ratelimit import ModelLimiter, TokenBucket
from router_r1.pool.types import CallResult, CallStatus


class FakeClock:
    """Time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.t += max(0.0, d)
        await asyncio.sleep(0)


# -- token bucket ------------------------------------------------------------------------------
def test_bucket_burst_then_rate():
    clock = FakeClock()
    b = TokenBucket(rate=1.0, capacity=2, clock=clock, sleep=clock.sleep)
    times = []

    async def take():
        await b.acquire()
        times.append(clock.t)

    async def main():
        await asyncio.gather(*(take() for _ in range(6)))

    asyncio.run(main())
    assert times == pytest.approx([0, 0, 1, 2, 3, 4])


def test_bucket_is_fifo():
    clock = FakeClock()
    b = TokenBucket(rate=10.0, capacity=1, clock=clock, sleep=clock.sleep)
    order = []

    async def take(i):
        await b.acquire()
        order.append(i)

    async def main():
        await asyncio.gather(*(take(i) for i in range(20)))

    asyncio.run(main())
    assert order == list(range(20))


def test_bucket_oversized_request_goes_into_debt_and_adjust_refunds():
    clock = FakeClock()
    b = TokenBucket(rate=10.0, capacity=5, clock=clock, sleep=clock.sleep)

    async def main():
        await b.acquire(50)  # bigger than the bucket: served once the bucket is full
        assert clock.t == 0 and b.level == pytest.approx(-45)
        b.adjust(-40)  # the call used 40 fewer than acquired
        assert b.level == pytest.approx(-5)
        await b.acquire(5)
        assert clock.t == pytest.approx(1.0)

    asyncio.run(main())


def test_limiter_concurrency_cap():
    lim = ModelLimiter(Limits(max_concurrency=3))
    live, peak = 0, 0

    async def one():
        nonlocal live, peak
        async with lim.slot(10):
            live += 1
            peak = max(peak, live)
            await asyncio.sleep(0.01)
            live -= 1

    async def main():
        await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(main())
    assert peak == 3


def test_limiter_tokens_per_minute_with_refund():
    clock = FakeClock()
    lim = ModelLimiter(Limits(tokens_per_minute=600, burst_tokens=20), clock, clock.sleep)
    times = []

    async def call(est, actual):
        async with lim.slot(est):
            times.append(clock.t)
        lim.settle_tokens(est, actual)

    async def main():
        await call(20, 5)  # t=0; 15 of the 20 estimated tokens are given back
        await call(20, 20)  # level 15 -> waits 0.5 s for 5 tokens at 10/s
        await call(10, 10)  # bucket empty -> waits 1 s

    asyncio.run(main())
    assert times == pytest.approx([0.0, 0.5, 1.5])


# -- budget ------------------------------------------------------------------------------------
def test_budget_reserve_charge_release():
    async def main():
        b = Budget(run_cap=1.0)
        r1 = await b.reserve(0.6, "run", "t")
        assert r1 is not None
        # 0.6 held: a second 0.6 cannot fit even if r1 ends up free -> waits, then fits once r1
        # settles at 0.3.
        waiter = asyncio.create_task(b.reserve(0.6, "run", "t"))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        r1.charge(0.3)
        r1.release()
        r2 = await asyncio.wait_for(waiter, 1)
        assert r2 is not None
        r2.charge(0.6)
        r2.release()
        assert b.remaining("run", "t") == pytest.approx(0.1)
        assert await b.reserve(0.2, "run", "t") is None  # can never fit: refused at once

    asyncio.run(main())


def test_budget_concurrent_never_overruns():
    async def main():
        b = Budget(run_cap=10.0, tenant_caps={"acme": 4.0})
        spent = []

        async def call():
            r = await b.reserve(1.0, "run", "acme")
            if r is None:
                return
            await asyncio.sleep(0.001)
            r.charge(1.0)
            spent.append(1.0)
            r.release()

        await asyncio.gather(*(call() for _ in range(100)))
        assert sum(spent) == 4.0  # the tenant cap binds first
        other = await b.reserve(6.0, "run", "other")
        assert other is not None  # the run cap still has 6 left for other tenants

    asyncio.run(main())


def test_budget_starts_from_ledger_spend():
    async def main():
        b = Budget(run_cap=1.0, spent_by_run={"run": 0.95})
        assert await b.reserve(0.1, "run", "t") is None
        assert await b.reserve(0.1, "other-run", "t") is not None

    asyncio.run(main())


# -- ledger ------------------------------------------------------------------------------------
def _rec(i, **kw):
    return dict(run_id="r", tenant="t", model=f"m{i % 2}", prompt_tokens=10, completion_tokens=5,
                cost_usd=0.01 * (i + 1), status="ok", attempts=1, **kw)


def test_ledger_flushes_parts_and_rebuilds_totals(tmp_path):
    led = Ledger(tmp_path, flush_every=4)
    for i in range(10):
        led.record(**_rec(i))
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert len(parts) == 2 and sum(pq.read_metadata(p).num_rows for p in parts) == 8
    assert len(list(tmp_path.glob("wal-*.jsonl"))) == 1  # the 2 unflushed records
    before = led.totals.get("model")
    # A second ledger while the first is alive reads its WAL but must not steal it.
    again = Ledger.rebuild(tmp_path)
    assert again.totals.get("model") == before
    assert len(list(tmp_path.glob("wal-*.jsonl"))) == 2
    again.close()
    led.close()
    assert not list(tmp_path.glob("wal-*.jsonl")) and not list(tmp_path.glob(".*tmp"))
    rebuilt = Ledger.rebuild(tmp_path)
    assert rebuilt.totals.get("model") == before
    assert sum(r["cost_usd"] for r in read_records(tmp_path)) == pytest.approx(sum(0.01 * (i + 1) for i in range(10)))


def test_ledger_recovers_wal_of_dead_writer(tmp_path):
    led = Ledger(tmp_path, flush_every=100)
    ids = [led.record(**_rec(i))["record_id"] for i in range(5)]
    os.close(led._wal_fd)  # the process "dies": its lock goes away, its buffer is lost
    wal = next(tmp_path.glob("wal-*.jsonl"))
    with open(wal, "a") as f:
        f.write('{"record_id": "torn", "ti')  # a crash mid-write leaves a torn last line
    rebuilt = Ledger.rebuild(tmp_path)
    assert [r["record_id"] for r in read_records(tmp_path)] == ids
    assert not wal.exists() and len(list(tmp_path.glob("part-*.parquet"))) == 1
    assert rebuilt.totals.get("run_id")["r"]["calls"] == 5


def test_ledger_dedups_part_and_wal_from_crash_between(tmp_path):
    led = Ledger(tmp_path, flush_every=100)
    for i in range(3):
        led.record(**_rec(i))
    wal = next(tmp_path.glob("wal-*.jsonl"))
    content = wal.read_text()
    led.flush()  # part written, WAL deleted ...
    wal.write_text(content)  # ... pretend the deletion never happened
    os.close(led._wal_fd)
    assert len(read_records(tmp_path)) == 3
    assert Ledger.rebuild(tmp_path).totals.get("run_id")["r"]["calls"] == 3


def test_ledger_rejects_unknown_fields(tmp_path):
    with pytest.raises(ValueError):
        Ledger(None).record(api_key="nope")


def test_ledger_wal_lines_are_json(tmp_path):
    led = Ledger(tmp_path)
    led.record(**_rec(0))
    line = next(tmp_path.glob("wal-*.jsonl")).read_text().strip()
    assert json.loads(line)["cost_usd"] == 0.01


# -- circuit breaker ---------------------------------------------------------------------------
def test_circuit_opens_cools_down_and_probes():
    clock = FakeClock()
    c = CircuitBreaker(failures=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        assert c.allow()
        c.record_failure()
    c.record_success()  # a success resets the count
    for _ in range(3):
        assert c.allow()
        c.record_failure()
    assert c.state == "open" and not c.allow()
    clock.t = 10.0
    assert c.allow() and not c.allow()  # one probe at a time
    c.record_failure()  # the probe failed: open again for a full cooldown
    assert c.state == "open"
    clock.t = 20.0
    assert c.allow()
    c.record_success()
    assert c.state == "closed" and c.allow()


# -- cache -------------------------------------------------------------------------------------
def test_cache_key_only_for_temperature_zero():
    msgs = [{"role": "user", "content": "q"}]
    assert cache_key("m", msgs, {"temperature": 0}) == cache_key("m", msgs, {"temperature": 0.0})
    assert cache_key("m", msgs, {"temperature": 0.7}) is None
    assert cache_key("m", msgs, {}) is None
    assert cache_key("m", msgs, {"temperature": 0}) != cache_key("m2", msgs, {"temperature": 0})
    assert cache_key("m", msgs, {"temperature": 0}) != cache_key("m", msgs, {"temperature": 0, "max_tokens": 5})


def test_cache_lru_keeps_only_successes():
    c = ResponseCache(max_entries=2)
    for k in "abc":
        c.put(k, CallResult(model="m", text=k))
    assert c.get("a") is None and c.get("c").text == "c"
    c.put("d", CallResult.failure("m", "timeout", "x"))
    assert c.get("d") is None


# -- stats -------------------------------------------------------------------------------------
def test_stats_window_quantiles_and_flat_metrics():
    from router_r1.pool.stats import ModelStats, flat_metrics

    st = ModelStats(window=100)
    for i in range(200):
        st.add(CallResult(model="m", latency_s=i / 1000, cost_usd=0.5,
                          status=CallStatus.OK if i % 4 else CallStatus.TIMEOUT))
    s = st.summary()
    assert (s["calls"], s["errors"], s["spend_usd"]) == (200, 50, 100.0)
    assert s["p50_latency_s"] == pytest.approx(0.150) and s["p99_latency_s"] == pytest.approx(0.199)
    flat = flat_metrics({"m": {**s, "circuit": "closed"}})
    assert flat["pool/m/calls"] == 200.0 and "pool/m/circuit" not in flat
