"""PoolClient: the `call(model, query)` the episode machine expects, in-process and over Ray."""
from __future__ import annotations

import asyncio

import pytest
from pool_doubles import ScriptedBackend, make_pool

from actors.model_pool import ModelPoolActor, PoolClient, RayPoolMetrics, get_or_create_pool
from router_r1.env.episode import Episode, EpisodeConfig, run_episodes
from router_r1.pool.core import PoolCore
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus


def test_episode_machine_runs_on_an_in_process_pool(tmp_path):
    core = PoolCore(make_pool(), PoolRuntimeConfig(ledger_dir=str(tmp_path)), "run-ep",
                    {"simulated": ScriptedBackend()})
    client = PoolClient(core, tenant="acme")
    turns = iter([["<think>ask</think><search>B: capital of France?</search>",
                   "<think>ask</think><search>Nobody: hi</search>"],
                  ["<think>ok</think><answer>Paris</answer>", "<think>ok</think><answer>?</answer>"]])

    episodes = [Episode(uid=str(i), question="q", golden_answers=["Paris"], prompt="P:") for i in range(2)]
    asyncio.run(run_episodes(episodes, lambda prompts: next(turns), client.call,
                             EpisodeConfig(max_turns=2), pool=core.pool))
    assert episodes[0].calls[0].ok and "B: capital of France?" in episodes[0].response
    assert episodes[1].calls[0].status is CallStatus.UNKNOWN_MODEL
    assert core.totals("tenant")["acme"]["calls"] == 1  # the unknown name never reached the pool


def test_context_merging_and_with_context():
    core = PoolCore(make_pool(), PoolRuntimeConfig(ledger_dir=None), "run-x", {"simulated": ScriptedBackend()})
    client = PoolClient(ModelPoolActor(make_pool(), PoolRuntimeConfig(ledger_dir=None)), tenant="a")
    assert isinstance(client.target, PoolCore)
    client = PoolClient(core, tenant="a").with_context(episode_id="e7")

    async def main():
        await client.call("B", "q1")
        await client.call("B", "q2", tenant="b")
        return await client.call_batch([{"model": "C", "query": "q3"},
                                        {"model": "C", "query": "q4", "context": {"run_id": "other"}}])

    batch = asyncio.run(main())
    assert all(r.ok for r in batch)
    assert set(core.totals("tenant")) == {"a", "b"}
    assert core.totals("run_id")["other"]["calls"] == 1


@pytest.mark.ray
def test_ray_metrics_exporter_tolerates_unknown_names(ray_local):
    m = RayPoolMetrics(make_pool(), "p")
    m({"model": "garbage-name", "kind": "call", "cost_usd": 0.0, "status": "unknown_model",
       "latency_s": 0.0, "attempts": 0, "cache_hit": False})


@pytest.mark.ray
def test_unbatched_client_and_shared_named_actor(ray_local, tmp_path):
    rt = PoolRuntimeConfig(actor_name="pool-named", namespace="router_r1_tests", ledger_dir=str(tmp_path),
                           num_cpus=0)
    import sys

    # The test double lives in a test module the actor's process cannot import: ship it by value.
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[ScriptedBackend.__module__])
    pool = make_pool()
    first = get_or_create_pool(pool, rt, "run-a", backends={"simulated": ScriptedBackend()})
    second = get_or_create_pool(pool, rt, "run-b")  # the same actor: the first creator's config wins
    assert first._actor_id == second._actor_id
    client = PoolClient(second, batch=False)
    r = asyncio.run(client.call("B", "hello"))
    assert r.ok and ray_local.get(first.info.remote())["run_id"] == "run-a"
    ray_local.kill(first)


@pytest.mark.ray
@pytest.mark.parametrize("stream", [True, False])
def test_tick_batches_streamed_or_whole(ray_local, tmp_path, stream):
    """Two calls of one tick share an actor call. Streamed, the fast reply comes back at once;
    whole (call_batch), it waits for the slow one."""
    import sys
    import time

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[ScriptedBackend.__module__])
    rt = PoolRuntimeConfig(actor_name=f"pool-tick-{stream}", namespace="router_r1_tests", ledger_dir=str(tmp_path),
                           num_cpus=0, default_params={"temperature": 0.7})
    handle = get_or_create_pool(make_pool(), rt, "run-t", backends={"simulated": ScriptedBackend({"C": [1.5]})})
    client = PoolClient(handle, stream=stream)

    async def timed(model):
        t = time.perf_counter()
        r = await client.call(model, "q")
        return r, time.perf_counter() - t

    async def main():
        await client.call("B", "warm up")
        return await asyncio.gather(timed("B"), timed("C"))

    (fast, t_fast), (slow, t_slow) = asyncio.run(main())
    assert fast.ok and slow.ok
    assert t_slow >= 1.5
    assert (t_fast < 1.0) if stream else (t_fast >= 1.5)
    ray_local.kill(handle)


@pytest.mark.ray
def test_pool_actor_from_a_descriptor_file(ray_local, tmp_path):
    """How training starts it: the descriptor file's path, backends from the registry."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "pool_simulated.yaml"
    rt = PoolRuntimeConfig(actor_name="pool-file", namespace="router_r1_tests", ledger_dir=str(tmp_path),
                           num_cpus=0)
    handle = get_or_create_pool(str(path), rt, "run-file")
    client = PoolClient(handle, episode_id="e1")

    async def main():
        r = await client.call("Sim-Geo-Small", "What is the capital of Vorland?")
        return r, await client.totals("run_id")

    r, totals = asyncio.run(main())
    assert r.ok and r.meta.get("simulated") and totals["run-file"]["cost_usd"] == pytest.approx(r.cost_usd)
    ray_local.kill(handle)


@pytest.mark.ray
@pytest.mark.parametrize("stream", [True, False])
def test_a_cancelled_error_backend_fails_only_its_call_in_a_tick(ray_local, tmp_path, stream):
    """One backend raising CancelledError (vLLM's engine does) among 20 healthy calls of one tick:
    20 ok, each billed once; the other call ends typed (issue 24)."""
    import sys

    from router_r1.pool.ledger import read_records

    from test_pool_core import CancellingBackend

    ray_local.cloudpickle.register_pickle_by_value(sys.modules[ScriptedBackend.__module__])
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[CancellingBackend.__module__])
    rt = PoolRuntimeConfig(actor_name=f"pool-cancel-{stream}", namespace="router_r1_tests", ledger_dir=str(tmp_path),
                           num_cpus=0, default_params={"temperature": 0.7})
    handle = get_or_create_pool(make_pool(max_concurrency=64), rt, "run-c",
                                backends={"simulated": CancellingBackend(delay_s=0.05)})
    client = PoolClient(handle, stream=stream)

    async def main():
        return await asyncio.gather(*(client.call("B", f"q{i}") for i in range(10)), client.call("C", "q"),
                                    *(client.call("B", f"r{i}") for i in range(10)))

    rs = asyncio.run(main())
    bad = rs.pop(10)
    assert [r.status for r in rs] == [CallStatus.OK] * 20
    assert bad.status is CallStatus.BAD_RESPONSE and "cancelled" in bad.error
    asyncio.run(client.flush())
    recs = read_records(tmp_path)
    assert len(recs) == 21 and sorted(r["record_id"] for r in recs) == sorted(r.meta["record_id"] for r in rs + [bad])
    assert sum(r["cost_usd"] for r in recs) == pytest.approx(sum(r.cost_usd for r in rs))
    ray_local.kill(handle)
