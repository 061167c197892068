"""SIGKILL of the ModelPool actor mid-burst, three times, against the fake OpenAI server on
127.0.0.1 (issue 24). After each restart: every call the server answered is billed in the ledger
(0 missing), every call that never reached the server comes back NOT_SENT (but for the few whose
intent was on disk when the kill came: billed at their capped cost, OUTCOME_UNKNOWN), no NOT_SENT
call reached the server, and the budget equals what the ledger bills."""
from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest
from fake_openai_server import fake_openai, fake_openai_session  # noqa: F401  (fixtures)

from actors.model_pool import PoolClient, get_or_create_pool
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.ledger import read_records
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(180)]
CONCURRENCY = 16  # the model's concurrency cap: the rest of a burst waits in the pool, unsent
CAP_USD = 1000.0


def test_sigkill_mid_burst_three_times(ray_local, fake_openai, tmp_path):
    ray = ray_local
    fake_openai.set("K", "ok", delay_s=0.2)
    pool = PoolSpec.model_validate({"models": [
        {"name": "K", "price": 1.0, "backend": {"kind": "openai", "base_url": fake_openai.url, "max_tokens": 16},
         "limits": {"max_concurrency": CONCURRENCY, "timeout_s": 30, "max_attempts": 1}}]})
    rt = PoolRuntimeConfig(actor_name=f"pool-sigkill-{uuid.uuid4().hex[:6]}", namespace="router_r1_tests",
                           ledger_dir=str(tmp_path), num_cpus=0, max_restarts=5, cache=False,
                           run_budget_usd=CAP_USD)
    handle = get_or_create_pool(pool, rt, "run-kill")
    client = PoolClient(handle, settle_wait_s=60)
    assert asyncio.run(client.call("K", "warm up")).ok
    summary = []
    gray_total = 0
    # Killed as a wave of requests finishes, and twice while one is being sent.
    for rnd, kill_after in enumerate((2 * CONCURRENCY, 3 * CONCURRENCY + 5, CONCURRENCY + 9)):
        pid = ray.get(handle.info.remote())["pid"]
        ids = [f"r{rnd}q{i:04d}-{uuid.uuid4().hex[:8]}" for i in range(300)]
        seen = fake_openai.count()

        async def burst():
            calls = [asyncio.ensure_future(client.call("K", f"round {rnd} question {i}", call_id=c))
                     for i, c in enumerate(ids)]
            deadline = time.time() + 30
            while fake_openai.count() < seen + kill_after:  # mid-burst: some answered, some in flight
                assert time.time() < deadline, "the burst never reached the server"
                await asyncio.sleep(0.005)
            os.kill(pid, signal.SIGKILL)
            return await asyncio.gather(*calls)

        t0 = time.time()
        results = asyncio.run(burst())
        took = time.time() - t0
        time.sleep(0.5)  # the server finishes what it received: what a provider would bill
        info = ray.get(handle.info.remote())
        assert info["pid"] != pid and info["restarted"]
        by_id = dict(zip(ids, results))
        log = [e for e in fake_openai.log if e["idempotency_key"] and e["idempotency_key"].split(".")[0] in by_id]
        reached = {e["idempotency_key"].rsplit(".", 1)[0] for e in log}
        answered = {e["idempotency_key"] for e in log if e["done"] and e["http"] == 200}
        recs = read_records(tmp_path)
        billed = {r["idempotency_key"] for r in recs if r["cost_usd"] > 0}
        statuses = {s: sum(r.status is s for r in results) for s in CallStatus if any(r.status is s for r in results)}
        assert set(statuses) <= {CallStatus.OK, CallStatus.NOT_SENT, CallStatus.OUTCOME_UNKNOWN}, statuses
        assert answered - billed == set()  # 0 missing: the provider's every answer is billed
        not_sent = {c for c, r in by_id.items() if r.status is CallStatus.NOT_SENT}
        assert not_sent and not (not_sent & reached)  # NOT_SENT is true: safe to retry
        gray = set(ids) - reached - not_sent  # intent on disk, killed before the request left
        assert len(gray) <= CONCURRENCY and all(f"{c}.0" in billed for c in gray)
        assert all(r.cost_usd > 0 for r in results if r.status is CallStatus.OUTCOME_UNKNOWN)
        assert all(f"{c}.0" in answered for c, r in by_id.items() if r.ok)
        gray_total += len(gray)
        summary.append(f"round {rnd}: {took:.1f}s, answered by the server {len(answered)}, "
                       f"results {dict((s.value, n) for s, n in statuses.items())}, intent-only {len(gray)}, "
                       f"reconciled {info['reconciled']}")

    async def after():
        return await client.totals("run_id"), await handle.budget_remaining.remote("run-kill")

    totals, remaining = asyncio.run(after())
    recs = read_records(tmp_path)
    ledger_usd = sum(r["cost_usd"] for r in recs)
    assert totals["run-kill"]["cost_usd"] == pytest.approx(ledger_usd)
    assert CAP_USD - remaining == pytest.approx(ledger_usd)  # the restarted budget counts every bill
    provider = {e["idempotency_key"] for e in fake_openai.log if e["done"] and e["http"] == 200}
    billed_calls = {r["idempotency_key"] for r in recs if r["cost_usd"] > 0}
    assert provider - billed_calls == set()
    assert len(billed_calls) == len(provider) + gray_total  # billed = answered, plus the intent-only ones
    print("\n" + "\n".join(summary) + f"\nprovider answered {len(provider)}, ledger billed {len(billed_calls)} "
          f"(intent-only {gray_total}), ledger ${ledger_usd:.6f}, budget spent ${CAP_USD - remaining:.6f}")
    retried = asyncio.run(client.call("K", "a NOT_SENT call, retried: a new call id"))
    assert retried.ok
    ray.kill(handle)
