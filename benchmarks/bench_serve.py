"""Load test of the Router-R1 Serve app on the simulated pool: latency and throughput with the
policy's generation unbatched, batched per turn (`serve.batching: turn`) and batched
continuously (`serve.batching: continuous`), and streamed time to first answer token against
the whole request.

    python -m benchmarks.bench_serve --checkpoint outputs/demo/checkpoints/latest [--config configs/demo.yaml]
    python -m benchmarks.bench_serve            # builds a scripted tiny router first (see tiny_router)
    python -m benchmarks.bench_serve --phases turn,continuous

Each phase deploys the app on a local Ray (a streamed phase reuses the deployment of the phase
before it), warms it up, then sends `--requests` chat completions with `--concurrency` in flight
over real HTTP, and reports p50/p90/p99 latency, requests/s, the mean generation batch (from
/healthz: router turns per batched generation with turn batching, rows per forward step with
continuous batching), the machine's load average before and after, and every failed request (a
phase with failures exits 1). Phases (`--phases`, in this order):

- `unbatched`: `max_batch_size` 1, every turn generated alone;
- `turn`, `turn-stream`: `@serve.batch`, one batch is one turn of every request ready;
- `continuous`, `continuous-stream`: each turn joins the engine's running batch at its next step.

A streamed phase (`stream: true`) also gives each request's time to the first answer token (the
first content delta) next to its total time. Simulated candidates wait
`latency_s x --latency-scale` per call, so routed calls overlap the way real ones do. Results go
to `--out` as JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIM_POOL = ROOT / "configs" / "pool_simulated.yaml"
APP = "router_r1_bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p * (len(xs) - 1))))] if xs else float("nan")


def simulated_pool_file(dest: Path, sleep: bool, latency_scale: float) -> Path:
    """The simulated pool with the backend told to wait each model's (scaled) latency."""
    raw = yaml.safe_load(SIM_POOL.read_text())
    raw.setdefault("backends", {}).setdefault("simulated", {}).update(sleep=sleep, latency_scale=latency_scale)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def questions(pool_file: Path, n: int) -> list[str]:
    from router_r1.pool.descriptors import load_pool
    from router_r1.worlds.sim import Simulation

    sim = Simulation.from_pool(load_pool(pool_file))
    qs = sim.world.questions("val", None)
    return [qs[i % len(qs)].text for i in range(n)]


async def _load(url: str, prompts: list[str], concurrency: int, model: str,
                timeout_s: float, stream: bool = False) -> dict[str, Any]:
    """Send `prompts` with `concurrency` in flight. Streamed (`stream`): also the time to the first
    answer token (the first content delta) of each request."""
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    ttft: list[float] = []
    share: list[float] = []  # first answer token / total time, per streamed request
    failures: list[str] = []
    calls = cost = 0.0

    async def one(session: aiohttp.ClientSession, q: str) -> None:
        nonlocal calls, cost
        body = {"model": model, "messages": [{"role": "user", "content": q}], "stream": stream}
        async with sem:
            t0, first = time.perf_counter(), None
            try:
                async with session.post(url + "/v1/chat/completions", json=body) as r:
                    if r.status != 200:
                        failures.append(f"{r.status}: {await r.text()}")
                        return
                    if not stream:
                        data = await r.json(content_type=None)
                        extra = data["router_r1"]
                    else:
                        extra = None
                        async for raw in r.content:
                            line = raw.decode().strip()
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                failures.append(f"stream error: {chunk['error']}")
                                return
                            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
                            if first is None and delta.get("content"):
                                first = time.perf_counter() - t0
                            if chunk.get("choices") and chunk["choices"][0].get("finish_reason"):
                                extra = chunk["router_r1"]
                        if first is not None:
                            ttft.append(first)
            except Exception as e:  # a dropped connection or timeout is a failed request
                failures.append(f"{type(e).__name__}: {e}")
                return
            lat.append(time.perf_counter() - t0)
            if first is not None:
                share.append(first / lat[-1])
            calls += len(extra.get("trace", []))
            cost += extra["cost_usd"]

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s, q) for q in prompts))
        wall = time.perf_counter() - t0
    ok = len(lat)
    out = {"requests": len(prompts), "ok": ok, "failed": len(failures), "failures": failures[:10],
           "wall_s": wall, "requests_per_s": ok / wall if wall else 0.0,
           "p50_s": _percentile(lat, 0.5), "p90_s": _percentile(lat, 0.9),
           "p99_s": _percentile(lat, 0.99), "mean_s": statistics.fmean(lat) if lat else float("nan"),
           "calls_per_request": calls / ok if ok else 0.0, "cost_usd": cost, "stream": stream}
    if stream:
        out.update(ttft_p50_s=_percentile(ttft, 0.5), ttft_p90_s=_percentile(ttft, 0.9),
                   ttft_mean_s=statistics.fmean(ttft) if ttft else float("nan"),
                   ttft_share_mean=statistics.fmean(share) if share else float("nan"))
    return out


def load_average() -> list[float]:
    """The machine's 1/5/15-minute load (what `uptime` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def _health(url: str) -> dict[str, Any]:
    return json.loads(urllib.request.urlopen(url + "/healthz", timeout=30).read())


PHASES = {  # name -> (serve.batching, batched?, streamed?)
    "unbatched": ("turn", False, False), "turn": ("turn", True, False), "turn-stream": ("turn", True, True),
    "continuous": ("continuous", True, False), "continuous-stream": ("continuous", True, True)}


def mean_batch(before: dict[str, Any], after: dict[str, Any]) -> tuple[float, str]:
    """(mean generation batch, its unit) between two /healthz reads."""
    if "sampled_tokens" in after:  # continuous: rows per forward step = tokens sampled / steps
        steps = after["forward_steps"] - before["forward_steps"]
        return ((after["sampled_tokens"] - before["sampled_tokens"]) / steps if steps else 0.0), "rows/step"
    batches = after["generation_batches"] - before["generation_batches"]
    turns = after["batched_turns"] - before["batched_turns"]
    return (turns / batches if batches else 0.0), "turns/batch"


def run_phase(url: str, checkpoint: str, config: Path, batch: int, prompts: list[str],
              concurrency: int, warmup: int, model: str, timeout_s: float, stream: bool = False,
              deploy: bool = True, batching: str = "turn") -> dict[str, Any]:
    from ray import serve

    from deployments.router import build_app

    if deploy:
        serve.run(build_app({"checkpoint": checkpoint, "config": str(config),
                             "serve.max_batch_size": batch, "serve.batching": batching}), name=APP, route_prefix="/")
        asyncio.run(_load(url, prompts[:warmup], concurrency, model, timeout_s))
    before, load_before = _health(url), load_average()
    res = asyncio.run(_load(url, prompts, concurrency, model, timeout_s, stream))
    after = _health(url)
    res.update(load_before=load_before, load_after=load_average())
    mean, unit = mean_batch(before, after)
    res.update(batching=after.get("batching", batching), max_batch_size=batch,
               router_turns=after["batched_turns"] - before["batched_turns"], mean_batch=mean, batch_unit=unit)
    if "kept_tokens" in after:  # continuous: tokens sampled past a stop before its cancel landed
        sampled = after["sampled_tokens"] - before["sampled_tokens"]
        res["past_stop_share"] = 1 - (after["kept_tokens"] - before["kept_tokens"]) / sampled if sampled else 0.0
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="router checkpoint (default: build a scripted tiny router)")
    ap.add_argument("--config", help="run config YAML; its pool is replaced by the simulated one")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32, help="max_batch_size of the batched phases")
    ap.add_argument("--phases", default=",".join(PHASES),
                    help=f"comma-separated, run in this order: {', '.join(PHASES)}")
    ap.add_argument("--latency-scale", type=float, default=0.1,
                    help="simulated call latency = descriptor latency_s x this (0: no waiting)")
    ap.add_argument("--timeout", type=float, default=120.0, help="client and request timeout, s")
    ap.add_argument("--out", default="outputs/bench/serve.json")
    args = ap.parse_args(argv)
    phase_names = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phase_names if p not in PHASES]
    if unknown or not phase_names:
        print(f"bench_serve: unknown phase(s) {unknown}; choose from {', '.join(PHASES)}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from router_r1.infra.config import load_config
    from router_r1.pool.descriptors import load_pool

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    pool_file = simulated_pool_file(work / "pool.yaml", args.latency_scale > 0, args.latency_scale)
    cfg = load_config(args.config)
    raw = cfg.model_dump()
    raw["pool"] = str(pool_file)
    # No response cache: every routed call really reaches the (simulated) model and is billed.
    raw["pool_runtime"].update(actor_name=f"bench_pool_{_free_port()}", ledger_dir=str(work / "ledger"),
                               cache=False, num_cpus=0, run_budget_usd=None, tenant_budgets_usd={})
    raw["serve"].update(num_cpus=0, min_replicas=1, max_replicas=1, api_keys={},
                        request_timeout_s=args.timeout, max_ongoing_requests=max(64, 2 * args.concurrency))
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))

    checkpoint = args.checkpoint
    if checkpoint is None:
        from benchmarks.tiny_router import build_scripted_router
        pool = load_pool(pool_file)
        checkpoint = str(build_scripted_router(work / "router", pool, pool.names[0],
                                               prompt_options={"layout": "compact"}))
        print(f"built a scripted tiny router at {checkpoint} (routes every question to {pool.names[0]})")

    ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace="router_r1_bench",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    prompts = questions(pool_file, args.requests + args.warmup)
    phases = []
    try:
        deployed = None  # (batching, max_batch_size) of the running deployment
        for name in phase_names:
            batching, batched, stream = PHASES[name]
            batch = args.batch if batched else 1
            res = run_phase(url, checkpoint, config, batch, prompts[args.warmup:], args.concurrency,
                            args.warmup, cfg.serve.model_name, args.timeout, stream,
                            deploy=deployed != (batching, batch), batching=batching)
            deployed = (batching, batch)
            res["phase"] = name
            phases.append(res)
            ttft = (f", first answer token p50 {res['ttft_p50_s'] * 1000:.0f} ms (p90 {res['ttft_p90_s'] * 1000:.0f})"
                    f" of total p50 {res['p50_s'] * 1000:.0f} ms" if stream else "")
            print(f"{name:>17}: {res['ok']}/{res['requests']} ok, p50 {res['p50_s'] * 1000:.0f} ms, "
                  f"p99 {res['p99_s'] * 1000:.0f} ms{ttft}, {res['requests_per_s']:.1f} req/s, "
                  f"mean generation batch {res['mean_batch']:.1f} {res['batch_unit']}"
                  + (f" ({res['past_stop_share']:.0%} of tokens past a stop)" if "past_stop_share" in res else "")
                  + ", "
                  f"{res['calls_per_request']:.2f} calls/request, load {res['load_before']} -> {res['load_after']}",
                  flush=True)
            for f in res["failures"]:
                print(f"  failed: {f}", file=sys.stderr)
    finally:
        serve.shutdown()
        ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"checkpoint": checkpoint, "concurrency": args.concurrency,
                               "latency_scale": args.latency_scale, "phases": phases}, indent=2))
    print(f"wrote {out}")
    return 1 if any(p["failed"] for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
