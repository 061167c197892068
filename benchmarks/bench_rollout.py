"""Rollout scaling, in one run: `python -m benchmarks.bench_rollout [--quick]`.

(a) batched generation vs one episode at a time, inside one rollout worker (no Ray): the same
    questions, the same policy; target >= 5x episodes/s;
(b) episodes/s and generated tokens/s with 1 and 2 rollout actors (1 CPU and 1 torch thread
    each, so 2 actors on this 2-core machine is a fair test); target >= 1.7x;
(c) the time split of a training step (weight sync, rollout, reward, learner update) with the
    real driver's step functions (pipelines.train.Trainer), at 8, 16 and 32 episodes per step.

The policy is the scripted tiny router (benchmarks.tiny_router: a briefly supervised tiny Qwen2
that routes once, then answers; compact prompt, as the demo), so episodes have the real shape: two router turns, one
candidate call through the ModelPool on the simulated pool (configs/pool_simulated.yaml).
Generated tokens are the policy's own tokens (the batch's loss mask), not inserted information.
The load average is recorded with the figures: other processes on the machine skew them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "configs" / "pool_simulated.yaml"


def make_config(checkpoint: Path, **over):
    from router_r1.infra.config import load_config

    base = {"name": "bench-rollout", "pool": str(POOL), "policy.checkpoint": str(checkpoint),
            "policy.prompt_layout": "compact",  # as the demo: short instructions for a tiny router
            "pool_runtime": {"actor_name": f"bench_pool_{uuid.uuid4().hex[:8]}", "ledger_dir": None,
                             "cache": False, "num_cpus": 0},
            "episode": {"max_turns": 3, "max_new_tokens": 48, "temperature": 1.0},
            "rollout": {"num_actors": 1, "num_cpus": 1, "max_restarts": 0},
            "learner": {"algorithm": "grpo", "group_size": 4, "num_cpus": 1, "micro_batch_size": 16},
            "data": {"kind": "simulated", "sim": {"val_size": 8}}, "mlflow": {"enabled": False},
            "output_dir": tempfile.mkdtemp(prefix="bench_rollout_")}
    return load_config(None, {**base, **over})


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def policy_tokens(episodes, tokenizer=None) -> int:
    """Tokens the policy generated (exactly as sampled), information blocks excluded."""
    return sum(len(s.ids) for e in episodes for s in e.segments if s.origin == "policy")


def questions(cfg, n: int) -> list[dict]:
    from router_r1.worlds.base import make_world

    return make_world(cfg, cfg.load_pool()).questions("train")[:n]


# -- (a) batched vs one at a time --------------------------------------------------------------------
def bench_batched(cfg, n: int, repeats: int = 1) -> dict:
    from actors.rollout import RolloutWorker
    from router_r1.pool.core import PoolCore

    torch.set_num_threads(1)
    w = RolloutWorker(cfg, None, PoolCore(cfg.load_pool(), cfg.pool_runtime, "bench"))
    items = questions(cfg, n)
    w.rollout(items[:4], seed=99)  # warm-up

    def timed(fn):  # the least disturbed of `repeats` runs, as in (b)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            eps = fn()
            runs.append((time.perf_counter() - t0, eps))
        return min(runs, key=lambda r: r[0])

    t_batched, batched = timed(lambda: w.rollout(items, seed=1))
    t_single, single = timed(lambda: [e for it in items for e in w.rollout([it], seed=1)])
    rows = {}
    for name, eps, t in (("batched", batched, t_batched), ("one_at_a_time", single, t_single)):
        rows[name] = {"episodes": len(eps), "wall_s": t, "episodes_per_s": len(eps) / t,
                      "tokens_per_s": policy_tokens(eps, w.tokenizer) / t,
                      "turns_per_episode": statistics.mean(e.turns for e in eps),
                      "calls_per_episode": statistics.mean(len(e.calls) for e in eps)}
    rows["speedup"] = rows["batched"]["episodes_per_s"] / rows["one_at_a_time"]["episodes_per_s"]
    return rows


# -- (b) 1 vs 2 rollout actors -------------------------------------------------------------------------
def one_thread(handles) -> None:
    import ray

    ray.get([h.__ray_call__.remote(lambda self: torch.set_num_threads(1)) for h in handles])


def bench_actors(cfg, n: int, repeats: int) -> dict:
    import ray

    from actors.model_pool import get_or_create_pool
    from actors.rollout import RolloutGroup, make_rollout_actor, rollout_actor_options
    from router_r1.engines.model import load_policy

    pool = get_or_create_pool(cfg.pool, cfg.pool_runtime, run_id="bench")
    _, tok = load_policy(cfg.policy.checkpoint)
    items = questions(cfg, n)
    out = {}
    for k in (1, 2):
        group = RolloutGroup(lambda i: make_rollout_actor().options(**rollout_actor_options(cfg)).remote(
            cfg, None, pool, i, "bench"), k, max_restarts=0)
        one_thread(group.workers)
        log(f"{k} actor(s) up")
        group.rollout(items[:2 * k], 1, seed=99)  # warm-up: every actor built and generating
        log(f"{k} actor(s) warm")
        runs = []
        for r in range(repeats):
            t0 = time.perf_counter()
            eps = group.rollout(items, 1, seed=r)
            runs.append((time.perf_counter() - t0, policy_tokens(eps, tok), len(eps)))
        wall, toks, neps = min(runs)  # the least disturbed run
        out[f"actors_{k}"] = {"episodes": neps, "wall_s": wall, "episodes_per_s": neps / wall,
                              "tokens_per_s": toks / wall, "all_wall_s": [r[0] for r in runs]}
        group.kill()
    out["speedup"] = out["actors_2"]["episodes_per_s"] / out["actors_1"]["episodes_per_s"]
    ray.kill(pool)
    return out


# -- (c) time split of a training step -------------------------------------------------------------------
def bench_step(cfg, sizes: list[int], repeats: int) -> dict:
    import ray

    from pipelines.train import Trainer

    t = Trainer(cfg, progress=False)
    t.create_pool()
    t.create_learner()
    t.create_rollout_workers()
    one_thread(t.workers.workers)
    # The learner and the rollouts take turns in a synchronous step: while it updates, the
    # machine's two cores are its own.
    ray.get(t.learner.rank0.__ray_call__.remote(lambda self: torch.set_num_threads(2)))
    group = cfg.learner.group_size
    out = {}
    try:
        t.sync_weights()
        t.rollouts(t.stream.next_batch(2), group, seed=0)  # warm-up
        for size in sizes:
            runs = []
            log(f"(c) {size} episodes")
            for r in range(repeats):
                t0 = time.perf_counter()
                sync = t.sync_weights()
                t1 = time.perf_counter()
                eps = t.rollouts(t.stream.next_batch(size // group), group, seed=r)
                t2 = time.perf_counter()
                scores = t.rewards(eps)
                t3 = time.perf_counter()
                m = t.update(eps, scores)
                t4 = time.perf_counter()
                runs.append({"weight_sync_s": sync, "rollout_s": t2 - t1, "reward_s": t3 - t2,
                             "learner_s": t4 - t3, "step_s": t4 - t0,
                             "policy_tokens": m["batch/policy_tokens"]})
            out[str(size)] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    finally:
        t.shutdown()
    return out


def table(res: dict) -> str:
    a, b, c = res["batched"], res["actors"], res["step"]
    lines = [f"load average before/after: {res['loadavg_before']} / {res['loadavg_after']}", "",
             "(a) one worker, batched generation vs one episode at a time",
             f"  {'mode':16s} {'episodes':>8s} {'wall s':>8s} {'ep/s':>8s} {'tok/s':>8s} {'turns/ep':>9s}"]
    for name in ("batched", "one_at_a_time"):
        r = a[name]
        lines.append(f"  {name:16s} {r['episodes']:8d} {r['wall_s']:8.2f} {r['episodes_per_s']:8.2f} "
                     f"{r['tokens_per_s']:8.0f} {r['turns_per_episode']:9.2f}")
    lines += [f"  speedup {a['speedup']:.1f}x (target >= 5x)", "",
              "(b) rollout actors (1 CPU, 1 torch thread each)",
              f"  {'actors':16s} {'episodes':>8s} {'wall s':>8s} {'ep/s':>8s} {'tok/s':>8s}"]
    for k in (1, 2):
        r = b[f"actors_{k}"]
        lines.append(f"  {k:<16d} {r['episodes']:8d} {r['wall_s']:8.2f} {r['episodes_per_s']:8.2f} "
                     f"{r['tokens_per_s']:8.0f}")
    lines += [f"  speedup {b['speedup']:.2f}x (target >= 1.7x)", "",
              "(c) one training step (2 rollout actors), median seconds",
              f"  {'episodes':>8s} {'sync':>7s} {'rollout':>8s} {'reward':>7s} {'learner':>8s} {'step':>7s} "
              f"{'rollout %':>9s}"]
    for size, r in c.items():
        lines.append(f"  {size:>8s} {r['weight_sync_s']:7.3f} {r['rollout_s']:8.2f} {r['reward_s']:7.3f} "
                     f"{r['learner_s']:8.2f} {r['step_s']:7.2f} {100 * r['rollout_s'] / r['step_s']:8.0f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--router", default=str(ROOT / "outputs" / "bench_rollout_router"),
                   help="scripted router checkpoint folder (built there when absent)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_rollout.json"))
    args = p.parse_args(argv)
    import ray

    from benchmarks.tiny_router import build_scripted_router
    from router_r1.pool.descriptors import load_pool

    torch.set_num_threads(1)  # the driver's own work (the fixture's SFT, part (a)): one core
    load_before = [round(x, 2) for x in os.getloadavg()]
    ckpt = Path(args.router)
    if not (ckpt / "config.json").is_file():  # built once (a minute or two of SFT), then reused
        build_scripted_router(ckpt, load_pool(POOL), "Sim-Geo-Small", steps=200, prompt_options={"layout": "compact"})
    cfg = make_config(ckpt)
    n_a, n_b, repeats = (8, 16, 1) if args.quick else (64, 192, 3)
    sizes = [8] if args.quick else [8, 16, 32]
    log("policy built")
    res = {"batched": bench_batched(cfg, n_a, repeats)}
    log("(a) done")
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024 * 1024, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}})
    try:
        res["actors"] = bench_actors(cfg, n_b, repeats)
        log("(b) done")
        res["step"] = bench_step(make_config(ckpt, **{"rollout.num_actors": 2, "learner.num_cpus": 0}), sizes, 1 if args.quick else 2)
    finally:
        ray.shutdown()
    res.update(loadavg_before=load_before, loadavg_after=[round(x, 2) for x in os.getloadavg()],
               cpus=os.cpu_count(), torch_threads_per_actor=1)
    print(table(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
