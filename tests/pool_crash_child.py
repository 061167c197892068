"""A PoolCore process for crash tests (tests/test_pool_intents.py): it sends N calls at C in flight
to an OpenAI-compatible server on 127.0.0.1 and is meant to be SIGKILLed mid-burst. Each call's
id is "c<i>-<random>" so the parent can match the server's log to the ledger.

    python tests/pool_crash_child.py LEDGER_DIR BASE_URL N C MAX_CONCURRENCY TAG
"""
from __future__ import annotations

import asyncio
import sys


async def main(ledger: str, url: str, n: int, c: int, max_conc: int, tag: str) -> None:
    from router_r1.pool.runtime import PoolRuntimeConfig
    from router_r1.pool.core import PoolCore
    from router_r1.pool.descriptors import PoolSpec

    pool = PoolSpec.model_validate({"models": [
        {"name": "K", "price": 1.0, "backend": {"kind": "openai", "base_url": url, "max_tokens": 16},
         "limits": {"max_concurrency": max_conc, "timeout_s": 30, "max_attempts": 1}}]})
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=ledger, cache=False, flush_every=16), "crash")
    sem = asyncio.Semaphore(c)

    async def one(i: int):
        async with sem:
            return await core.call("K", f"question {i}", None, {"call_id": f"c{i:05d}-{tag}"})

    print("STARTED", flush=True)
    await asyncio.gather(*(one(i) for i in range(n)))
    print("DONE", flush=True)
    await core.close()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5]))
