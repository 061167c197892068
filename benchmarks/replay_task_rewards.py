"""Which model per task the replay world's reward prefers at each alpha, from the TRAIN split:
`python -m benchmarks.replay_task_rewards [--alphas 0.1,0.15,0.2] [--mix per_task=0.7,task=0.3]`.

For every task and pool model: the expected episode reward of a one-call route to it over the
task's training questions, `label * ((1 - alpha) + alpha * cost_reward(cost))` (the paper's reward,
router_r1.env.reward), where the cost reward comes from the window normaliser filled with the
costs of 2,000 calls drawn from the warm-start trace mix (as the first GRPO batches see them).
It shows at which alpha the per-task routes of the warm start (router_r1.worlds.replay.routing)
are also what the reward prefers, i.e. the alpha at which GRPO should keep them. Train labels
only; a few seconds on CPU. Data: ROUTER_R1_DATA_DIR or <repo>/../shared/data.
"""
from __future__ import annotations

import argparse

from router_r1.env.reward import WindowCostNormalizer
from router_r1.pool.descriptors import load_pool
from router_r1.worlds.replay.routing import sample_cost
from router_r1.worlds.replay.tables import model_ids
from router_r1.worlds.replay.world import ReplayWorld, make_traces

FILES = ["routerbench/arc_challenge_train.csv", "routerbench/mbpp_train.csv", "routerbench/winograde_train.csv"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", default="configs/pool_routerbench.yaml")
    p.add_argument("--alphas", default="0.05,0.1,0.15,0.2,0.3")
    p.add_argument("--mix", default="per_task=0.7,task=0.3")
    p.add_argument("--margin", type=float, default=0.1)
    p.add_argument("--top", type=int, default=3)
    args = p.parse_args(argv)
    pool = load_pool(args.pool)
    world = ReplayWorld.load(FILES, pool, val_fraction=0.2, seed=0)
    mix = {k: float(v) for k, v in (x.split("=") for x in args.mix.split(","))}
    columns = model_ids(pool, world.table.models)
    norm = WindowCostNormalizer(window=2000)
    norm.update([t.calls[0].cost_usd for t in make_traces(world, pool, 2000, seed=1, mix=mix, margin=args.margin)])
    print(f"per-task routes at margin {args.margin}: {world.task_routes(pool, args.margin)}")
    for alpha in (float(a) for a in args.alphas.split(",")):
        parts = []
        for task in sorted({s.eval_name for s in world.train}):
            qs = [s for s in world.train if s.eval_name == task]
            reward = {}
            for name, col in columns.items():
                answered = [s for s in qs if s.answers.get(col) is not None and s.answers[col].response]
                reward[name] = sum(s.label(col) * ((1 - alpha) + alpha * norm.score(
                    sample_cost(pool, pool[name], s, col))) for s in answered) / max(1, len(answered))
            best = sorted(reward.items(), key=lambda kv: -kv[1])[:args.top]
            parts.append(f"{task}: " + ", ".join(f"{m} {r:.3f}" for m, r in best))
        print(f"alpha {alpha:g} | " + " | ".join(parts))


if __name__ == "__main__":
    main()
