"""ModelPool overhead, in one run: `python -m benchmarks.bench_pool [--quick]`.

(a) calls/s and latency through the pool actor (single calls and call_batch) against
(b) the same zero-latency backend called directly in-process (and PoolCore without Ray), and
(c) through the pool against a local HTTP model answering in 20 ms at 64 concurrent calls, against
    calling that server directly with aiohttp.

Every pool call goes through the full pipeline: validation, budget reservation, rate-limit slot,
backend, ledger record written to a WAL on disk (Parquet flush every 256), Ray metrics. Caching is
off for the measurement (sampled calls), otherwise the pool would answer from memory.
Targets (issue 4): >= 2,000 calls/s through one pool actor; <= 10 % added to a 20 ms HTTP call.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import ray

from actors.model_pool import PoolClient, get_or_create_pool
from router_r1.backends.base import BackendReply, ModelBackend
from router_r1.config import PoolRuntimeConfig
from router_r1.descriptors import PoolSpec
from router_r1.pool import PoolCore

ROOT = Path(__file__).resolve().parents[1]
SAMPLED = {"temperature": 0.7}
HTTP_DELAY_S = 0.02
HTTP_CONCURRENCY = 64


class InstantBackend(ModelBackend):
    """A zero-latency model: answers at once, so only the pool's own cost is measured."""

    def __init__(self, pool: PoolSpec | None = None):
        self.pool = pool

    async def complete(self, model, messages, params):
        return BackendReply(text=f"{model.name}: ok", prompt_tokens=12, completion_tokens=3)


def instant_pool() -> PoolSpec:
    return PoolSpec.model_validate({"models": [
        {"name": "instant", "price": 0.2, "backend": {"kind": "simulated"},
         "limits": {"max_concurrency": 100_000}}]})


def http_pool(url: str) -> PoolSpec:
    return PoolSpec.model_validate({"models": [
        {"name": "local-http", "price": 0.2, "backend": {"kind": "openai", "base_url": url},
         "limits": {"max_concurrency": 256, "timeout_s": 10}}]})


async def closed_loop(fn, total: int, concurrency: int) -> tuple[float, list[float]]:
    """`concurrency` workers call `fn` back to back until `total` calls are done."""
    todo = iter(range(total))
    lat: list[float] = []

    async def worker():
        for i in todo:
            t = time.perf_counter()
            await fn(i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, lat


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def row(name: str, calls: int, wall: float, lat: list[float], note: str = "") -> dict:
    return {"name": name, "calls": calls, "calls_s": calls / wall, "p50_ms": 1e3 * pct(lat, 0.5),
            "p99_ms": 1e3 * pct(lat, 0.99), "mean_ms": 1e3 * statistics.fmean(lat), "note": note}


def start_server() -> tuple[subprocess.Popen, str]:
    """The fake OpenAI server in its own process, so it does not share our GIL."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"),
                             "--delay", str(HTTP_DELAY_S)], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError("fake OpenAI server did not start")
    return proc, url


async def bench(quick: bool) -> list[dict]:
    n_inst = 4_000 if quick else 20_000
    n_http = 1_000 if quick else 4_000
    rows = []
    rt = PoolRuntimeConfig(ledger_dir=tempfile.mkdtemp(prefix="bench-ledger-"), num_cpus=0,
                           actor_name="bench-pool", namespace="router_r1_bench", default_params=SAMPLED)
    pool = instant_pool()
    q = "what is the capital of france"
    msgs = [{"role": "user", "content": q}]

    # (b) the backend directly, and the pool pipeline without Ray
    be, m = InstantBackend(pool), pool["instant"]
    wall, lat = await closed_loop(lambda i: be.complete(m, msgs, SAMPLED), n_inst, 64)
    rows.append(row("(b) backend direct, in-process, 64 in flight", n_inst, wall, lat))
    core = PoolCore(pool, rt.model_copy(update={"ledger_dir": tempfile.mkdtemp()}), "bench",
                    {"simulated": InstantBackend(pool)})
    wall, lat = await closed_loop(lambda i: core.call("instant", q), n_inst, 64)
    rows.append(row("    PoolCore in-process (no Ray), 64 in flight", n_inst, wall, lat))
    await core.close()

    # (a) the pool actor
    handle = get_or_create_pool(pool, rt, "bench", backends={"simulated": InstantBackend(pool)})
    unbatched, client = PoolClient(handle, batch=False), PoolClient(handle)
    await unbatched.call("instant", q)  # warm up: actor started, backend built
    n_single = n_inst // 4
    wall, lat = await closed_loop(lambda i: unbatched.call("instant", q), n_single, 64)
    rows.append(row("(a) pool actor, one actor call per call, 64 in flight", n_single, wall, lat))
    wall, lat = await closed_loop(lambda i: client.call("instant", q), n_inst, 64)
    rows.append(row("(a) pool actor, PoolClient tick batching, 64 in flight", n_inst, wall, lat))
    batch = 256
    reqs = [{"model": "instant", "query": q}] * batch
    n_batches = max(4, n_inst // batch)
    wall, lat = await closed_loop(lambda i: client.call_batch(reqs), n_batches, 4)
    rows.append(row(f"(a) pool actor, call_batch({batch}), 4 batches in flight", n_batches * batch,
                    wall, lat, "latency per batch"))
    ray.kill(handle)

    # (c) a local HTTP model answering in 20 ms
    proc, url = start_server()
    try:
        body = {"model": "local-http", "messages": msgs, **SAMPLED}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
            async def direct(i):
                async with s.post(url + "/chat/completions", json=body) as r:
                    await r.json()
            await closed_loop(direct, 200, HTTP_CONCURRENCY)  # warm connections
            wall, lat = await closed_loop(direct, n_http, HTTP_CONCURRENCY)
        rows.append(row(f"(c) HTTP 20 ms model, aiohttp direct, {HTTP_CONCURRENCY} in flight",
                        n_http, wall, lat))
        h2 = get_or_create_pool(http_pool(url), rt.model_copy(update={"actor_name": "bench-pool-http"}), "bench")
        for batch in (False, True):
            c2 = PoolClient(h2, batch=batch)
            await closed_loop(lambda i: c2.call("local-http", q), 200, HTTP_CONCURRENCY)  # warm up
            wall, lat = await closed_loop(lambda i: c2.call("local-http", q), n_http, HTTP_CONCURRENCY)
            how = "PoolClient tick batching" if batch else "one actor call per call"
            rows.append(row(f"(c) HTTP 20 ms model, pool actor, {how}", n_http, wall, lat))
        ray.kill(h2)
    finally:
        proc.kill()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="ModelPool overhead benchmark")
    ap.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="router_r1_bench",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}})
    try:
        rows = asyncio.run(bench(args.quick))
    finally:
        ray.shutdown()
    print(f"\n{'measurement':66s} {'calls':>7s} {'calls/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for r in rows:
        print(f"{r['name']:66s} {r['calls']:7d} {r['calls_s']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
              + (f"  ({r['note']})" if r["note"] else ""))
    best = max(r["calls_s"] for r in rows if r["name"].startswith("(a)"))
    d = next(r for r in rows if "aiohttp direct" in r["name"])
    p = next(r for r in rows if r["name"].startswith("(c)") and "batching" in r["name"])
    print(f"\nthroughput through one pool actor: {best:,.0f} calls/s (target >= 2,000)")
    print(f"added latency on a 20 ms HTTP call at {HTTP_CONCURRENCY} in flight: "
          f"p50 {100 * (p['p50_ms'] / d['p50_ms'] - 1):+.1f}%, "
          f"mean {100 * (p['mean_ms'] / d['mean_ms'] - 1):+.1f}% (target <= +10%)")


if __name__ == "__main__":
    main()
