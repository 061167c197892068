"""Does the served router read the conversation? `python -m benchmarks.bench_conversation
[--policy DIR | --warm-steps 900 --steps 2 --traces 1000] [--split val] [--n 64]`.

Trains (unless `--policy` names a trained one) the demo router (configs/demo.yaml) with simulator
follow-ups mixed in (`data.sim.conversation_share`, default 0.3 here: a two-hop chain's first hop
as an earlier turn, the question referring back to it, router_r1.worlds.sim.knowledge.follow_up),
with the warm start shortened to `--warm-steps` and `--steps` GRPO steps. Then serves it in
process (`router_r1.Router.load(...).chat(messages)`: Serve's own request logic, prompt rendering
and episode, over the simulated pool) and plays `--n` follow-ups of `--split` (held out: none is
a training item) twice, greedily:

  with history:    messages = [user: the earlier question, assistant: its answer, user: follow-up]
  without history: messages = [user: follow-up]   (the question alone names no entity)

and, for what the follow-ups cost elsewhere, as many held-out single questions (the world's
single-hop / two-hop mix).

Per arm: EM against the gold answer and the reward of the training formula (format, EM, cost
scored by reward.reference_cost_usd, the stateless normaliser of the oracle's report; a request
answered 502, no valid answer and no fallback model, scores as a malformed episode), with cost
and calls; beside them the descriptor-only expert and the oracle on the same questions, which
read the history. The control, `--share 0 --conversation on`: a router trained on single
questions only, shown the same history. World: the simulator; nothing calls a real model. Writes
outputs/bench_conversation.json with the machine's load before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.demo_config import MEASURED_TRACES, ROOT, demo_raw


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def config(out: Path, share: float, warm_steps: int, steps: int, seed: int, traces: int):
    """configs/demo.yaml with follow-ups, a shorter warm start on `traces` traces, no MLflow and no
    ledger."""
    from router_r1.infra.config import load_config

    raw = demo_raw("bench-conversation", out, "bench_convo", val_size=32, conversation_share=share)
    raw["seed"] = seed
    raw["warmstart"].update(steps=warm_steps, num_traces=traces)
    raw["train"].update(steps=steps, checkpoint_every=max(steps, 1), sample_every=0)
    return load_config(None, raw)


def train(cfg) -> tuple[Path, dict[str, Any]]:
    from pipelines.train import Trainer

    report = Trainer(cfg, progress=False).run()
    return Path(cfg.output_dir) / "policy", report


def play(router, cfg, items: list[dict[str, Any]], with_history: bool, workers: int) -> dict[str, Any]:
    """Each follow-up through `router.chat` (concurrent requests share batched router turns)."""
    from router_r1.env.answer_metrics import exact_match
    from router_r1.env.reward import ReferenceCostNormalizer, compute_reward
    from router_r1.serving.openai_api import APIError

    norm = ReferenceCostNormalizer(cfg.reward.reference_cost_usd)

    def one(it: dict[str, Any]) -> dict[str, Any]:
        history = it.get("history", []) if with_history else []
        try:
            body = router.chat([*history, {"role": "user", "content": it["question"]}], return_trace=True)
        except APIError as e:  # no valid answer (502, no fallback model here): a malformed episode
            r = compute_reward(False, 0.0, 0.0, norm.score(0.0), cfg.reward)
            return {"id": it["id"], "answer": None, "error": e.status, "em": 0.0, "reward": r.reward,
                    "cost_usd": 0.0, "calls": 0, "history_turns": len(history)}
        extra = body["router_r1"]
        answer = body["choices"][0]["message"]["content"]
        em = exact_match(answer, it["golden_answers"])
        r = compute_reward(extra["format_ok"], em, extra["cost_usd"], norm.score(extra["cost_usd"]), cfg.reward)
        return {"id": it["id"], "answer": answer, "em": em, "reward": r.reward, "cost_usd": extra["cost_usd"],
                "calls": len(extra["models_called"]), "history_turns": extra["history_turns"],
                "routes": [(c["model"], c["query"], c["status"]) for c in extra["trace"]]}

    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(one, items))
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("em", "reward", "cost_usd", "calls", "history_turns")}
    return {**mean, "n": len(rows), "no_answer": sum(r["answer"] is None for r in rows), "rows": rows}


def measure(policy: Path, cfg, split: str, n: int, workers: int, conversation: str = "auto") -> dict[str, Any]:
    from router_r1.env.prompt import load_prompt_options
    from router_r1.serving.router import Router
    from router_r1.worlds.base import make_world
    from router_r1.worlds.sim.world import sim_item
    from router_r1.worlds.sim.oracle import reference_policies

    spec = cfg.load_pool().seen()
    world = make_world(cfg, spec)
    items = world.follow_up_items(split, n)
    qs = [world.sim.world.question(it["id"]) for it in items]
    ref = reference_policies(world.sim, qs, cfg.reward)
    # What the follow-ups cost the single questions: as many held-out ones, the world's mix.
    singles = [sim_item(q) for q in world.sim.world.questions(split, n, seed=cfg.split_seed)]
    ref_single = reference_policies(world.sim, [world.sim.world.question(it["id"]) for it in singles], cfg.reward)
    # Cache off: a repeated sub-question is billed again, as in training (demo: pool_runtime.cache false).
    router = Router.load(policy, pool=spec, config=cfg, pool_runtime={"cache": False},
                         **{"serve.conversation": conversation})
    try:
        arms = {"with_history": play(router, cfg, items, True, workers),
                "without_history": play(router, cfg, items, False, workers),
                "single_questions": play(router, cfg, singles, False, workers)}
    finally:
        router.close()
    return {"split": split, "n": len(items), "checkpoint_conversation": load_prompt_options(policy).conversation,
            "serve_conversation": conversation,
            **arms, "reference": {k: ref[k] for k in ("expert", "oracle", "random (one call)")},
            "single_questions_reference": {k: ref_single[k] for k in ("expert", "oracle")}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", default=None, help="a router trained with follow-ups (default: train one)")
    p.add_argument("--share", type=float, default=0.3, help="data.sim.conversation_share of the training run")
    p.add_argument("--warm-steps", type=int, default=900, help="warm-start steps of the training run")
    p.add_argument("--steps", type=int, default=2, help="GRPO steps of the training run")
    p.add_argument("--traces", type=int, default=MEASURED_TRACES["num_traces"],
                   help="warm-start traces of the training run (default: as the published figures)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="val", choices=["val", "test"], help="which held-out follow-ups")
    p.add_argument("--n", type=int, default=64, help="follow-ups played per arm")
    p.add_argument("--workers", type=int, default=16, help="concurrent requests")
    p.add_argument("--conversation", default="auto", choices=["auto", "on", "off"],
                   help="serve.conversation (auto: as the checkpoint was trained; on: the control, a router "
                        "trained without follow-ups (--share 0) shown the history)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_conversation.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_ADDRESS", "local")
    load_before = os.getloadavg()
    folder = Path(tempfile.mkdtemp(prefix="bench_conversation_"))
    cfg = config(folder / "run", a.share, a.warm_steps, a.steps, a.seed, a.traces)
    t0 = time.perf_counter()
    report = None
    policy = Path(a.policy) if a.policy else None
    if policy is None:
        log(f"training the demo router with conversation_share {a.share}, {a.warm_steps} warm-start steps on "
            f"{cfg.warmstart.num_traces} traces, {a.steps} GRPO steps, in {folder}")
        policy, report = train(cfg)
    train_s = time.perf_counter() - t0
    log(f"serving {policy} on {a.n} {a.split} follow-ups, with and without the history")
    t1 = time.perf_counter()
    out = measure(policy, cfg, a.split, a.n, a.workers, a.conversation)
    out.update(world="simulator (configs/pool_simulated.yaml)", seed=a.seed, policy=str(policy),
               training={"conversation_share": a.share, "warmstart_steps": a.warm_steps, "grpo_steps": a.steps,
                         "warmstart_traces": cfg.warmstart.num_traces,
                         "config": "configs/demo.yaml", "wall_s": train_s if report else None,
                         "val_by_type": (report or {}).get("by_type")},
               serve_wall_s=time.perf_counter() - t1, load_before=load_before, load_after=os.getloadavg())
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=str))
    w, wo = out["with_history"], out["without_history"]
    log(f"with history: EM {w['em']:.3f}, reward {w['reward']:.3f}; without: EM {wo['em']:.3f}, reward "
        f"{wo['reward']:.3f}; single questions: EM {out['single_questions']['em']:.3f} ({out['n']} {a.split} follow-ups; expert {out['reference']['expert']['em']:.3f}, "
        f"oracle {out['reference']['oracle']['em']:.3f} EM); load {load_before} -> {out['load_after']}; wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
