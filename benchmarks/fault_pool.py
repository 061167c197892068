"""Bounded fault campaign against PoolCore (in-process, loopback only): N calls at 64 in flight to
4 models on the fake OpenAI server (tests/fake_openai_server.py), whose per-model behaviour is
flipped at random every 20 ms among 12 fault kinds (429, 500, slow, malformed, incomplete, drop,
no usage, key echo in an error or in a 200 reply, 10^12-token usage, overlong completions, ...).
Checks every call returned, one ledger call record each, the budget cap, idempotency keys, anomaly
flags, every attempt's intent resolved (no journal left after close), and that no part of the
planted key is anywhere.

    python -m benchmarks.fault_pool [N=2000] [RUN_BUDGET_USD=0.02]
"""
import asyncio
import collections
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai_server import FakeOpenAIServer

from router_r1.pool.core import PoolCore
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.ledger import read_records
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.util.redact import leaks

N, C = int(sys.argv[1]) if len(sys.argv) > 1 else 2000, 64
CAP = float(sys.argv[2]) if len(sys.argv) > 2 else 0.02
KEY = "sk-FAULT-Zq8xK2vN7Lm3Pd9Qr5"
os.environ["RR1_FAULT_KEY"] = KEY
MODES = ["ok"] * 8 + ["no_usage", "429", "500", "slow", "malformed", "incomplete", "drop",
         "echo_key", "echo_key_ok", "huge_usage", "overlong"]
rng = random.Random(0)


async def main():
    with FakeOpenAIServer() as srv:
        lim = {"max_attempts": 3, "backoff_base_s": 0.005, "backoff_max_s": 0.05, "timeout_s": 0.3,
               "circuit_failures": 20, "circuit_cooldown_s": 0.05}
        pool = PoolSpec.model_validate({"models": [
            {"name": f"M{i}", "price_in": 1.0 + i, "price_out": 2.0 + i, "limits": lim,
             "backend": {"kind": "openai", "base_url": srv.url, "api_key_env": "RR1_FAULT_KEY", "max_tokens": 32},
             **({"fallback": f"M{(i + 1) % 4}"} if i % 2 == 0 else {})} for i in range(4)]})
        d = tempfile.mkdtemp()
        core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=d, cache=False, run_budget_usd=CAP), "fault")
        stop = False
        async def flipper():
            while not stop:
                for i in range(4):
                    srv.set(f"M{i}", rng.choice(MODES), retry_after=0.01, delay_s=None)
                await asyncio.sleep(0.02)
        sem = asyncio.Semaphore(C)
        async def one(i):
            async with sem:
                q = rng.choice(["What is 2+2?", "北京大学的创始人是谁" * 5, "x " * 50, "who \ud800 is"])
                return await core.call(f"M{i % 4}", f"{q} #{i}", None,
                                       {"deadline_s": time.time() + 2.0} if i % 5 == 0 else None)
        fl = asyncio.create_task(flipper())
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(one(i) for i in range(N)))
        wall = time.perf_counter() - t0
        stop = True
        await fl
        await core.close()
        recs = read_records(d)
        calls = [r for r in recs if r["kind"] == "call"]
        ids = collections.Counter(r["record_id"] for r in calls)
        by_status = collections.Counter(r.status.value for r in rs)
        spent = sum(r["cost_usd"] for r in recs)
        worst = max((r.cost_usd for r in rs), default=0)
        leak_hits = sum(bool(leaks(repr(r), KEY)) for r in rs) + sum(bool(leaks(repr(x), KEY)) for x in recs)
        for f in os.listdir(d):
            leak_hits += bool(leaks(open(os.path.join(d, f), "rb").read().decode("latin-1"), KEY))
        keys = collections.Counter(e["idempotency_key"] for e in srv.log)
        sent_attempts = sum(keys.values())
        print(f"calls {N} at {C} in flight, {wall:.1f} s; returned {len(rs)}; statuses {dict(by_status)}")
        print(f"ledger: {len(calls)} call records for {N} calls, duplicates {sum(v > 1 for v in ids.values())}, "
              f"{len(recs) - len(calls)} billed-attempt records; record ids on results match: "
              f"{sorted(r.meta['record_id'] for r in rs) == sorted(ids)}")
        print(f"budget: cap ${CAP}, billed ${spent:.6f} (<= cap + largest call ${worst:.6f}: {spent <= CAP + worst})")
        print(f"anomalies flagged: {sum(1 for r in recs if r['anomaly'])}; max call cost ${worst:.6f}")
        print(f"provider saw {sent_attempts} attempts under {len(keys)} idempotency keys "
              f"(none missing: {None not in keys})")
        print(f"intent journal segments left after close: {len(list(Path(d).glob('intent-*')))}")
        print(f"key leaks (results, records, files): {leak_hits}")


if __name__ == "__main__":
    asyncio.run(main())
