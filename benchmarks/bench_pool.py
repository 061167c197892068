"""ModelPool overhead, in one run: `python -m benchmarks.bench_pool [--quick] [--http64]`.

(a) calls/s and latency through the pool actor (one actor call per call; PoolClient's tick
    batching with results streamed back as each call ends, its default, or whole; call_batch) against
(b) the same zero-latency backend called directly in-process (and PoolCore without Ray): the
    simulated backend (configs/pool_simulated.yaml, no sleeping), asked the world's
    sub-questions, and
(c) through the pool against a local HTTP model answering in 20 ms at 64 concurrent calls, against
    calling that server directly with aiohttp, and
(d) the floor of any actor hop on this machine: a bare async actor that sleeps 20 ms per call.

Every pool call goes through the full pipeline: validation, budget reservation, rate-limit slot,
the attempt's intent written to the journal (`--intent-fsync`: fsync'd too, one fsync per
event-loop tick for all its intents),
backend, ledger record written to a WAL on disk (Parquet flush every 256), Ray metrics. Caching is
off for the measurement (sampled calls), otherwise the pool would answer from memory. The ledger
folder is a fresh temporary folder (`$TMPDIR`, on this machine the same ext4 disk as the code).
`--http64` runs only the (c) rows at 64 in flight (for paired before/after runs); the load average
is printed before and after, since other processes share the cores.
Targets (issue 4): >= 2,000 calls/s through one pool actor; <= 10 % added to a 20 ms HTTP call.
The (c) rows also give the whole machine's CPU per call and busy share (/proc/stat): every
process of the measurement (client, pool actor, HTTP server, Ray) shares this machine's cores,
so once they are saturated, added CPU per call shows up as added latency.
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
from router_r1.pool.backends import make_backend
from router_r1.pool.core import PoolCore
from router_r1.pool.descriptors import PoolSpec, load_pool
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.stats import quantile

ROOT = Path(__file__).resolve().parents[1]
SAMPLED = {"temperature": 0.7}
HTTP_DELAY_S = 0.02
HTTP_CONCURRENCY = 64


def simulated_pool() -> PoolSpec:
    """The simulated pool, with concurrency caps lifted: the pool's own cost is what is measured."""
    pool = load_pool(ROOT / "configs" / "pool_simulated.yaml")
    return pool.model_copy(update={"models": [
        m.model_copy(update={"limits": m.limits.model_copy(update={"max_concurrency": 100_000})})
        for m in pool.models]})


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


def busy_cpu_s() -> float | None:
    """Seconds of CPU the whole machine has spent busy (all processes: this one, the pool actor,
    the HTTP server, Ray's daemons), from /proc/stat; None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


async def measured(fn, total: int, concurrency: int) -> tuple[float, list[float], dict]:
    """`closed_loop`, plus the machine's CPU use during it: ms of CPU per call and busy share."""
    c0 = busy_cpu_s()
    wall, lat = await closed_loop(fn, total, concurrency)
    c1 = busy_cpu_s()
    if c0 is None or c1 is None:
        return wall, lat, {}
    return wall, lat, {"cpu_ms_per_call": 1e3 * (c1 - c0) / total,
                       "busy": (c1 - c0) / (wall * (os.cpu_count() or 1))}


def pct(xs: list[float], p: float) -> float:
    return quantile(sorted(xs), p)


def row(name: str, calls: int, wall: float, lat: list[float], note: str = "", cpu: dict | None = None) -> dict:
    """One line of the table. The pool's own rows note how long intents waited to be durable."""
    return {"name": name, "calls": calls, "calls_s": calls / wall, "p50_ms": 1e3 * pct(lat, 0.5),
            "p99_ms": 1e3 * pct(lat, 0.99), "mean_ms": 1e3 * statistics.fmean(lat), "note": note,
            **(cpu or {})}


def start_server() -> tuple[subprocess.Popen, str]:
    """The fake OpenAI server in its own process, so it does not share our GIL."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai_server.py"),
                             "--delay", str(HTTP_DELAY_S)], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError("fake OpenAI server did not start")
    return proc, url


@ray.remote(num_cpus=0)
class SleepActor:
    """The floor for any design that hops through an actor: a bare async actor method that only
    sleeps as long as the HTTP model takes to answer."""

    async def sleep(self) -> None:
        await asyncio.sleep(HTTP_DELAY_S)


async def ray_floor(n: int) -> list[dict]:
    actor = SleepActor.remote()
    await actor.sleep.remote()
    rows = []
    for conc in (16, HTTP_CONCURRENCY):
        wall, lat, cpu = await measured(lambda i: actor.sleep.remote(), n, conc)
        rows.append(row(f"(d) Ray floor: 20 ms sleep in a bare actor, one call each, {conc} in flight",
                        n, wall, lat, cpu=cpu))
    ray.kill(actor)
    return rows


async def bench(quick: bool, http64: bool = False, intent_fsync: bool = False) -> list[dict]:
    n_inst = 4_000 if quick else 20_000
    n_http = 1_000 if quick else 4_000
    rows = []
    rt = PoolRuntimeConfig(ledger_dir=tempfile.mkdtemp(prefix="bench-ledger-"), num_cpus=0,
                           actor_name="bench-pool", namespace="router_r1_bench", default_params=SAMPLED)
    if intent_fsync:  # (a field the tree before the intent journal does not know)
        rt = rt.model_copy(update={"intent_fsync": True})
    if http64:
        return await http_rows(rt, "What is the capital of Vorland?", n_http, (HTTP_CONCURRENCY,))
    pool = simulated_pool()
    be = make_backend("simulated", pool)  # builds the simulated world (a second or two)
    subqs = [sq for q in be.sim.world.all_questions("train")[:200] for sq in q.subquestions]
    names = pool.names
    calls = [(names[i % len(names)], subqs[i % len(subqs)]) for i in range(n_inst)]
    q = subqs[0]

    # (b) the backend directly, and the pool pipeline without Ray
    wall, lat = await closed_loop(lambda i: be.complete(pool[calls[i][0]], [
        {"role": "user", "content": calls[i][1]}], SAMPLED), n_inst, 64)
    rows.append(row("(b) simulated backend direct, in-process, 64 in flight", n_inst, wall, lat))
    core = PoolCore(pool, rt.model_copy(update={"ledger_dir": tempfile.mkdtemp()}), "bench", {"simulated": be})
    wall, lat = await closed_loop(lambda i: core.call(*calls[i]), n_inst, 64)
    rows.append(row("    PoolCore in-process (no Ray), 64 in flight", n_inst, wall, lat))
    await core.close()

    # (a) the pool actor, with the same simulated backend built inside it
    handle = get_or_create_pool(pool, rt, "bench")
    unbatched, client = PoolClient(handle, batch=False), PoolClient(handle)
    await unbatched.call(*calls[0])  # warm up: actor started, world built
    n_single = n_inst // 4
    wall, lat = await closed_loop(lambda i: unbatched.call(*calls[i]), n_single, 64)
    rows.append(row("(a) pool actor, one actor call per call, 64 in flight", n_single, wall, lat))
    for how, c in (("streamed", client), ("whole", PoolClient(handle, stream=False))):
        wall, lat = await closed_loop(lambda i: c.call(*calls[i]), n_inst, 64)
        rows.append(row(f"(a) pool actor, tick batching ({how}), 64 in flight", n_inst, wall, lat))
    batch = 256
    reqs = [{"model": m, "query": sq} for m, sq in calls[:batch]]
    n_batches = max(4, n_inst // batch)
    wall, lat = await closed_loop(lambda i: client.call_batch(reqs), n_batches, 4)
    rows.append(row(f"(a) pool actor, call_batch({batch}), 4 batches in flight", n_batches * batch,
                    wall, lat, "latency per batch"))
    ray.kill(handle)
    return rows + await http_rows(rt, q, n_http, (16, HTTP_CONCURRENCY)) + await ray_floor(n_http)


async def http_rows(rt: PoolRuntimeConfig, q: str, n_http: int, concurrencies: tuple[int, ...]) -> list[dict]:
    """(c) a local HTTP model answering in 20 ms, at a light load and at the target load."""
    rows = []
    proc, url = start_server()
    try:
        body = {"model": "local-http", "messages": [{"role": "user", "content": q}], **SAMPLED}
        h2 = get_or_create_pool(http_pool(url), rt.model_copy(update={"actor_name": "bench-pool-http"}), "bench")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
            async def direct(i):
                async with s.post(url + "/chat/completions", json=body) as r:
                    await r.json()
            for conc in concurrencies:
                await closed_loop(direct, 200, conc)  # warm connections
                wall, lat, cpu = await measured(direct, n_http, conc)
                rows.append(row(f"(c) HTTP 20 ms model, aiohttp direct, {conc} in flight", n_http, wall, lat,
                                cpu=cpu))
                local = PoolCore(http_pool(url), rt.model_copy(update={"ledger_dir": tempfile.mkdtemp()}), "bench")
                await closed_loop(lambda i: local.call("local-http", q), 200, conc)  # warm up
                wall, lat, cpu = await measured(lambda i: local.call("local-http", q), n_http, conc)
                rows.append(row(f"(c) HTTP 20 ms model, PoolCore in-process (no Ray), {conc} in flight",
                                n_http, wall, lat, cpu=cpu))
                await local.close()
                modes = {"one actor call each": {"batch": False},
                         "tick batching, whole": {"stream": False},
                         "tick batching, streamed": {}}  # PoolClient's default
                for how, opts in modes.items():
                    c2 = PoolClient(h2, **opts)
                    await closed_loop(lambda i: c2.call("local-http", q), 200, conc)  # warm up
                    wall, lat, cpu = await measured(lambda i: c2.call("local-http", q), n_http, conc)
                    info = await h2.info.remote()
                    waits = (info.get("intents") or {})
                    rows.append(row(f"(c) HTTP 20 ms model, pool actor ({how}), {conc} in flight",
                                    n_http, wall, lat, cpu=cpu, note=(
                                        f"intent wait p50 {waits['wait_ms_p50']} ms" if waits.get("wait_ms_p50")
                                        is not None else "")))
        ray.kill(h2)
    finally:
        proc.kill()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="ModelPool overhead benchmark")
    ap.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    ap.add_argument("--http64", action="store_true", help="only the 20 ms HTTP rows at 64 in flight")
    ap.add_argument("--intent-fsync", action="store_true",
                    help="intents fsync'd before each send (pool_runtime.intent_fsync: true)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="router_r1_bench",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}})
    try:
        rows = asyncio.run(bench(args.quick, args.http64, args.intent_fsync))
    finally:
        ray.shutdown()
    load1 = os.getloadavg()
    print(f"\n{'measurement':82s} {'calls':>7s} {'calls/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'CPU ms/call':>11s} {'busy':>5s}")
    for r in rows:
        cpu = (f" {r['cpu_ms_per_call']:11.2f} {100 * r['busy']:4.0f}%" if "busy" in r else "")
        print(f"{r['name']:82s} {r['calls']:7d} {r['calls_s']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
              + cpu + (f"  ({r['note']})" if r["note"] else ""))
    print(f"\nload average (1/5/15 min) before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
          f"after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}, on {os.cpu_count()} cores")
    if not args.http64:
        best = max(r["calls_s"] for r in rows if r["name"].startswith("(a)"))
        print(f"throughput through one pool actor: {best:,.0f} calls/s (target >= 2,000)")
    for conc in ((HTTP_CONCURRENCY,) if args.http64 else (16, HTTP_CONCURRENCY)):
        d = next(r for r in rows if r["name"].endswith(f"aiohttp direct, {conc} in flight"))
        p = next(r for r in rows if r["name"].endswith(f"(tick batching, streamed), {conc} in flight"))
        print(f"added latency on a 20 ms HTTP call at {conc} in flight: "
              f"p50 {100 * (p['p50_ms'] / d['p50_ms'] - 1):+.1f}%, "
              f"mean {100 * (p['mean_ms'] / d['mean_ms'] - 1):+.1f}% (target <= +10% at 64)")


if __name__ == "__main__":
    main()
