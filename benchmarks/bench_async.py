"""Rollouts ahead of the learner: `python -m benchmarks.bench_async [--steps 10] [--warm-steps 600]`.

On the simulator with candidate latencies on (the simulated backend sleeps each model's
descriptor latency times a scale), trains the same warm-started router for the same number of
GRPO steps at `rollout.max_staleness` 0, 1 and 2, and reports episodes per second of the training
loop and the greedy validation reward at the end, with the machine's load.

The latency scale is calibrated first so that the synchronous step spends about half its time in
rollouts, as a GPU learner with API-bound candidates would (the paper's candidates take 0.5-5 s a
call): two short synchronous probes (no sleep, then a guess) give the rollout time as a line in
the scale, and the scale that puts it level with the learner's time is used for every run. The
synchronous run's measured rollout share is reported beside it.

Episodes per second count the steps after the first (the first fills the pipeline) over the
wall time between the end of step 1 and the end of the last step. World: the simulator; nothing
calls a real model. Writes `outputs/bench_async.json`:
`{"runs": [{"max_staleness", "episodes_per_s", "final_reward", "steps", ...}], "load": ..., ...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from pipelines.train import Hooks, Trainer

ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pool_file(folder: Path, scale: float) -> Path:
    """configs/pool_simulated.yaml with sleeping candidates at `scale` x their latency."""
    spec = yaml.safe_load((ROOT / "configs" / "pool_simulated.yaml").read_text())
    spec["backends"]["simulated"].update(sleep=scale > 0, latency_scale=scale)
    path = folder / f"pool_scale_{scale:.4f}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def base_config(out: Path, **over):
    from router_r1.infra.config import load_config

    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw.update(name="bench-async", output_dir=str(out), pool=str(ROOT / "configs" / "pool_simulated.yaml"))
    raw["pool_runtime"] = {"actor_name": f"bench_async_{uuid.uuid4().hex[:8]}", "ledger_dir": None,
                           "cache": False, "num_cpus": 0}
    raw["mlflow"] = {"enabled": False}
    raw["data"]["sim"].update(val_size=32, heldout_size=0)
    return load_config(None, {**raw, **over})


class StepClock(Hooks):
    """The wall time at the end of every step."""

    def __init__(self):
        self.ends: list[float] = []

    def after_step(self, trainer, metrics):
        self.ends.append(time.perf_counter())


def train(cfg) -> tuple[dict, list[dict], StepClock]:
    clock = StepClock()
    t = Trainer(cfg, progress=False, hooks=[clock])
    report = t.run()
    return report, t.history, clock


def warm_start(folder: Path, steps: int) -> Path:
    """The demo's warm start for `steps` steps, saved as a policy every run starts from."""
    cfg = base_config(folder / "warm", **{"warmstart.steps": steps, "train.steps": 0})
    train(cfg)
    return folder / "warm" / "policy"


def run(folder: Path, policy: Path, scale: float, staleness: int, steps: int, tag: str):
    cfg = base_config(folder / tag, **{
        "pool": str(pool_file(folder, scale)), "policy.checkpoint": str(policy), "warmstart.steps": 0,
        "rollout.max_staleness": staleness, "rollout.batch_wait_s": 0.05, "train.steps": steps, "train.checkpoint_every": steps,
        "train.sample_every": 0})
    report, history, clock = train(cfg)
    eps = cfg.rollout.num_actors * cfg.rollout.episodes_per_actor
    loop_s = clock.ends[-1] - clock.ends[0] if len(clock.ends) > 1 else float("nan")
    rollout_s = sum(h["time/rollout_s"] for h in history[1:])
    learner_s = sum(h["time/learner_s"] for h in history[1:])
    return {"max_staleness": staleness, "latency_scale": scale, "steps": steps,
            "episodes_per_s": eps * (len(clock.ends) - 1) / loop_s, "loop_s": loop_s,
            "final_reward": report["eval"]["end"]["reward/mean"], "final_em": report["eval"]["end"]["outcome/em"],
            "start_reward": report["eval"]["start"]["reward/mean"],
            "rollout_wait_share": rollout_s / max(rollout_s + learner_s, 1e-9),
            "staleness_mean": sum(h["rollout/staleness_mean"] for h in history) / len(history),
            "importance_weight_mean": [h.get("actor/behaviour_is_mean") for h in history]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="GRPO steps per run")
    p.add_argument("--warm-steps", type=int, default=600, help="warm-start steps of the shared start")
    p.add_argument("--scale", type=float, default=None, help="latency scale (default: calibrated)")
    p.add_argument("--staleness", default="0,1,2")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_async.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_ADDRESS", "local")
    folder = Path(tempfile.mkdtemp(prefix="bench_async_"))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    log(f"warm start ({a.warm_steps} steps) in {folder}")
    policy = warm_start(folder, a.warm_steps)
    scale, probes = a.scale, []
    if scale is None:
        guess = 0.5
        for s in (0.0, guess):
            r = run(folder, policy, s, 0, 3, f"probe_{s}")
            probes.append(r)
            log(f"probe scale {s}: rollout share {r['rollout_wait_share']:.2f}")
        (c, g) = (probes[0], probes[1])
        # rollout(s) = rollout(0) + s * slope; learner time does not depend on s.
        n = g["steps"] - 1
        r0, rg = c["rollout_wait_share"], g["rollout_wait_share"]
        learner = (1 - r0) * c["loop_s"] / n
        roll0 = r0 * c["loop_s"] / n
        rollg = rg * g["loop_s"] / n
        slope = max((rollg - roll0) / guess, 1e-6)
        scale = max(0.0, (learner - roll0) / slope)
        log(f"calibrated latency scale {scale:.3f} (learner {learner:.1f} s/step, rollout {roll0:.1f} s + {slope:.1f} s x scale)")
    runs = []
    for k in [int(x) for x in a.staleness.split(",")]:
        r = run(folder, policy, scale, k, a.steps, f"staleness_{k}")
        runs.append(r)
        log(f"max_staleness {k}: {r['episodes_per_s']:.2f} episodes/s, final reward {r['final_reward']:.3f}, "
            f"rollout share {r['rollout_wait_share']:.2f}")
    base = runs[0]
    result = {"world": "simulator (sleeping candidates)", "runs": runs, "latency_scale": scale, "probes": probes,
              "load": {"before": load_before, "after": os.getloadavg()}, "wall_s": time.perf_counter() - t0,
              "speedup_vs_0": {r["max_staleness"]: r["episodes_per_s"] / base["episodes_per_s"] for r in runs},
              "reward_delta_vs_0": {r["max_staleness"]: r["final_reward"] - base["final_reward"] for r in runs}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    log(f"wrote {out}: speedup {result['speedup_vs_0']}, reward delta {result['reward_delta_vs_0']}, "
        f"load {result['load']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
