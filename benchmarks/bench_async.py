"""Rollouts ahead of the learner: `python -m benchmarks.bench_async [--steps 10] [--warm-steps 800] [--episodes 64]`.

On the simulator with candidate latencies on (the simulated backend sleeps each model's
descriptor latency times a scale), trains the same warm-started router for the same number of
GRPO steps at `rollout.max_staleness` 0, 1 and 2, and reports episodes per second of the training
loop and the greedy validation reward at the end, with the machine's load.

What it stands for: a GPU learner with API-bound candidates (the paper's candidates take 0.5-5 s
a call). On this 2-core machine that is played as one core each: the learner updates with one
torch thread (`--learner-threads 1`), as a GPU learner does not get faster when the rollout
actor's core is idle, and the rollout actor generates with one (its `num_cpus`). The rollouts
wait on sleeping candidate calls, which take no CPU. The synchronous run gets exactly the same
settings, so the learner's speed is the same in every run and only the overlap differs. (The
demo's `learner.torch_threads: 2` would let the synchronous update use the idle core and make
the overlapped one contend with generation: a CPU-only setting, not the one the issue asks about.)

On a GPU, generating a turn is a small part of an API-bound rollout; on one CPU core it is not:
the demo's policy generates a step's 32 episodes in ~3.1 s with no candidate latency at all,
while the learner (one thread, shared-prefix update) takes ~2.2 s, so the synchronous share is
already 59% at scale 0 and any latency raises it (measured 2026-12-07, load ~1.5). The learner
therefore runs every row whole (`learner.share_prefix: false`, `--share-prefix` restores it):
the same loss and gradients (tests/test_shared_prefix.py), about twice the compute, which makes
its step longer than the rollouts' generation and leaves room for candidate latency to fill.
A step is 64 episodes (`--episodes`; 8 questions x group 8, the demo plays 32): batched
generation grows slower than the update with the batch, and per-step fixed costs weigh less.
Measured once each (docs/cluster.md): at 64 the overlapped update kept its speed and staleness 1
ran 1.94x; at 32 it slowed by up to 27% beside generation and staleness 1 ran 1.49x.

The latency scale is calibrated so that the synchronous step spends about half its time waiting
for rollouts: two short synchronous probes (scale 0, then a guess) give the rollout time as a line
in the scale, and the scale that puts it level with the learner's time is used for every run. If
the measured share of the synchronous run falls outside 45-55%, the scale is corrected once from
that run (the secant through the two nearest points) and the synchronous run is repeated.

Generation batches are continuous over episodes (`rollout.batch_wait_s`, `--batch-wait 0.05`):
an episode whose call returned generates its next turn while slower calls are still out, as the
API-bound setting wants; a turn-synchronous probe at the chosen scale (`--batch-wait` None) shows
what that buys. Episodes per second count the steps after the first (the first fills the
pipeline) over the wall time between the end of step 1 and the end of the last step. World: the
simulator; nothing calls a real model. The shared warm start is saved under
`outputs/bench_async_warm/` (`--policy` reuses one). Writes `outputs/bench_async.json`:
`{"runs": [{"max_staleness", "episodes_per_s", "final_reward", "steps", ...}], "load": ..., ...}`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.demo_config import ROOT, demo_raw
from pipelines.train import Hooks, Trainer

SHARE = (0.45, 0.55)  # the synchronous step's share of time in rollouts the issue asks for


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pool_file(folder: Path, scale: float) -> Path:
    """configs/pool_simulated.yaml with sleeping candidates at `scale` x their latency."""
    spec = yaml.safe_load((ROOT / "configs" / "pool_simulated.yaml").read_text())
    spec["backends"]["simulated"].update(sleep=scale > 0, latency_scale=scale)
    path = folder / f"pool_scale_{scale:.4f}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def base_config(out: Path, val_size: int, **over):
    from router_r1.infra.config import load_config

    raw = demo_raw("bench-async", out, "bench_async", val_size=val_size)
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


def warm_start(folder: Path, steps: int, val_size: int) -> tuple[Path, dict]:
    """The demo's warm start (its settings, two learner threads) for `steps` steps, saved as the
    policy every run starts from; returns it and its greedy validation (no sleep)."""
    cfg = base_config(folder / "warm", val_size, **{"warmstart.steps": steps, "train.steps": 0})
    report, _, _ = train(cfg)
    return folder / "warm" / "policy", report["eval"]["end"]


def run(folder: Path, policy: Path, a, scale: float, staleness: int, steps: int, tag: str,
        batch_wait: float | None) -> dict:
    cfg = base_config(folder / tag, a.val_size, **{
        "pool": str(pool_file(folder, scale)), "policy.checkpoint": str(policy), "warmstart.steps": 0,
        "learner.torch_threads": a.learner_threads, "rollout.torch_threads": a.rollout_threads,
        "learner.share_prefix": a.share_prefix, "rollout.episodes_per_actor": a.episodes,
        "rollout.max_staleness": staleness, "rollout.batch_wait_s": batch_wait, "train.steps": steps,
        "train.checkpoint_every": steps, "train.sample_every": 0})
    report, history, clock = train(cfg)
    eps = cfg.rollout.num_actors * cfg.rollout.episodes_per_actor
    n = len(clock.ends) - 1
    loop_s = clock.ends[-1] - clock.ends[0] if n > 0 else float("nan")
    rollout_s = sum(h["time/rollout_s"] for h in history[1:])
    learner_s = sum(h["time/learner_s"] for h in history[1:])
    return {"max_staleness": staleness, "latency_scale": scale, "batch_wait_s": batch_wait, "steps": steps,
            "episodes_per_s": eps * n / loop_s, "loop_s": loop_s, "step_s": loop_s / max(n, 1),
            "rollout_wait_s_per_step": rollout_s / max(n, 1), "learner_s_per_step": learner_s / max(n, 1),
            "rollout_wait_share": rollout_s / max(rollout_s + learner_s, 1e-9),
            "final_reward": report["eval"]["end"]["reward/mean"], "final_em": report["eval"]["end"]["outcome/em"],
            "start_reward": report["eval"]["start"]["reward/mean"],
            "calls_per_episode": [h["calls/per_episode"] for h in history],
            "staleness_mean": sum(h["rollout/staleness_mean"] for h in history) / len(history),
            "importance_weight_mean": [h.get("actor/behaviour_is_mean") for h in history]}


def rollout_line(r: dict) -> tuple[float, float]:
    """(rollout seconds per step, learner seconds per step) of a synchronous run."""
    return r["rollout_wait_s_per_step"], r["learner_s_per_step"]


def level_scale(p: tuple[float, float], q: tuple[float, float], learner_s: float) -> float:
    """The scale at which the line through (scale, rollout s) points p and q meets `learner_s`."""
    if q[0] == p[0]:
        return p[0]
    slope = max((q[1] - p[1]) / (q[0] - p[0]), 1e-6)
    return max(0.0, p[0] + (learner_s - p[1]) / slope)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="GRPO steps per run")
    p.add_argument("--warm-steps", type=int, default=800, help="warm-start steps of the shared start")
    p.add_argument("--policy", default=None, help="a saved warm start to reuse (skips --warm-steps)")
    p.add_argument("--scale", type=float, default=None, help="latency scale (default: calibrated)")
    p.add_argument("--staleness", default="0,1,2")
    p.add_argument("--episodes", type=int, default=64, help="episodes per step (rollout.episodes_per_actor)")
    p.add_argument("--val-size", type=int, default=64, help="validation questions played greedily")
    p.add_argument("--learner-threads", type=int, default=1)
    p.add_argument("--rollout-threads", type=int, default=1)
    p.add_argument("--share-prefix", action="store_true", help="learner.share_prefix (default: off, see above)")
    p.add_argument("--batch-wait", type=float, default=0.05, help="rollout.batch_wait_s (negative: None)")
    p.add_argument("--no-batching-probe", action="store_true", help="skip the turn-synchronous probe")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_async.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_ADDRESS", "local")
    batch_wait = a.batch_wait if a.batch_wait >= 0 else None
    folder = Path(tempfile.mkdtemp(prefix="bench_async_"))
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if a.policy:
        policy, warm_eval, warm_steps = Path(a.policy), None, None
        meta = Path(a.policy).parent / "warm_start.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            warm_eval, warm_steps = saved["eval"], saved["steps"]
    else:
        log(f"warm start ({a.warm_steps} steps) in {folder}")
        policy, warm_eval = warm_start(folder, a.warm_steps, a.val_size)
        warm_steps = a.warm_steps
        keep = ROOT / "outputs" / "bench_async_warm"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(policy, keep / "policy")
        (keep / "warm_start.json").write_text(json.dumps({"steps": warm_steps, "eval": warm_eval}, indent=2))
        policy = keep / "policy"
        log(f"warm start: greedy val reward {warm_eval['reward/mean']:.3f}, EM {warm_eval['outcome/em']:.3f}")

    def sync(scale: float, steps: int, tag: str, wait=batch_wait) -> dict:
        r = run(folder, policy, a, scale, 0, steps, tag, wait)
        log(f"{tag}: scale {scale:.3f}, rollout {r['rollout_wait_s_per_step']:.2f} s + learner "
            f"{r['learner_s_per_step']:.2f} s per step, rollout share {r['rollout_wait_share']:.2f}")
        return r

    scale, probes = a.scale, []
    if scale is None:  # rollout(s) = rollout(0) + s * slope; the learner's time does not depend on s
        guess = 1.0
        probes = [sync(0.0, 3, "probe_0"), sync(guess, 3, f"probe_{guess}")]
        learner = sum(r["learner_s_per_step"] for r in probes) / 2
        scale = level_scale((0.0, probes[0]["rollout_wait_s_per_step"]), (guess, probes[1]["rollout_wait_s_per_step"]),
                            learner)
        log(f"calibrated latency scale {scale:.3f} (learner {learner:.2f} s per step)")
    stale = [int(x) for x in a.staleness.split(",")]
    runs = []
    for k in stale:
        r = run(folder, policy, a, scale, k, a.steps, f"staleness_{k}", batch_wait)
        if k == 0 and not SHARE[0] <= r["rollout_wait_share"] <= SHARE[1] and a.scale is None:
            points = sorted([(0.0, probes[0]), (guess, probes[1]), (scale, r)],
                            key=lambda x: abs(x[1]["rollout_wait_share"] - 0.5))[:2]
            old, scale = scale, level_scale(*[(s, x["rollout_wait_s_per_step"]) for s, x in points],
                                            r["learner_s_per_step"])
            log(f"rollout share {r['rollout_wait_share']:.2f} at scale {old:.3f}: scale corrected to {scale:.3f}")
            probes.append(r)
            r = run(folder, policy, a, scale, k, a.steps, f"staleness_{k}_corrected", batch_wait)
        runs.append(r)
        log(f"max_staleness {k}: {r['episodes_per_s']:.2f} episodes/s, final reward {r['final_reward']:.3f}, "
            f"rollout share {r['rollout_wait_share']:.2f}")
    turn_sync = None
    if batch_wait is not None and not a.no_batching_probe:  # what continuous batching buys
        turn_sync = sync(scale, 3, "probe_turn_synchronous", wait=None)
    base = runs[0]
    result = {"world": "simulator (sleeping candidates: descriptor latency x latency_scale)",
              "runs": runs, "latency_scale": scale,
              "settings": {"learner_torch_threads": a.learner_threads, "rollout_torch_threads": a.rollout_threads,
                           "learner_share_prefix": a.share_prefix,
                           "rollout_num_actors": 1, "episodes_per_step": a.episodes, "batch_wait_s": batch_wait,
                           "val_size": a.val_size, "warm_start_steps": warm_steps, "policy": str(policy)},
              "warm_start_eval": warm_eval, "probes": probes, "turn_synchronous_probe": turn_sync,
              "load": {"before": load_before, "after": os.getloadavg()}, "wall_s": time.perf_counter() - t0,
              "speedup_vs_0": {r["max_staleness"]: r["episodes_per_s"] / base["episodes_per_s"] for r in runs},
              "reward_delta_vs_0": {r["max_staleness"]: r["final_reward"] - base["final_reward"] for r in runs}}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    log(f"wrote {out}: speedup {result['speedup_vs_0']}, reward delta {result['reward_delta_vs_0']}, "
        f"load {result['load']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
