"""`router-r1 unseen`: train without a model, then play the router with it added (issue #13, item 4).

    router-r1 unseen --config configs/unseen_sim.yaml --out outputs/unseen_sim

An experiment (experiments/): its results are in docs/results_simulator.md, "A model unseen in
training". The levers its later attempts added to the core (`policy.name_last`,
`policy.by_strength`, `warmstart.synthetic_heads`, `warmstart.think_need`) measured not enough and
were removed; they are at commit bd566f4.

1. Trains a router on the config's pool file, whose held-out models (`seen_in_training: false`)
   training never shows or calls (`router-r1 train`, in `--out/train`; a finished run is reused
   unless `--retrain`).
2. Plays the trained router greedily on the run's validation questions twice, in this process
   through an in-process ModelPool: over the training pool (the descriptor file without the
   held-out models, as training saw it) and over the whole pool (the held-out models added to
   the descriptor file only; the weights are the same). Same prompt renderer and options as
   training, same reward (stateless reference cost normaliser, as the trainer's evaluation).
3. Reports reward, EM, format-ok, cost and calls per episode for both, each held-out model's
   share of calls per domain of the sub-question asked (experiments/unseen_measures.py), and the
   descriptor-only expert and the oracle over both pools on the same questions.
   And whether the router reads descriptors at all (`route_choice`): its first call over fresh
   synthetic pools (invented names, random profiles), against the expert's and a uniform pick.

4. With `--rllib-iterations N`: the RLlib router (slot swap) on the same questions beside it
   (`rllib_slot_swap`: the simulator's one-call outcomes as replay tables), trained to read
   descriptors (slot-scoring module, hashed description terms, random pools from a catalog of
   synthetic models), with the same descriptor-reading figure. `--rllib-only` skips the LLM router.

Writes `--out/unseen.json` and `--out/table.md`. Simulated worlds only (`data.kind: simulated`):
every figure is the simulator's and is labelled so.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from experiments.unseen_measures import choice_cases, choice_rates, domain_shares, expert_routes
from pipelines.cli import add_overrides_argument, error_line, parse_overrides
from router_r1.infra.config import RunConfig, load_config
from router_r1.pool.descriptors import PoolSpec

log = logging.getLogger("router_r1.unseen")
WORLD = "simulator"
RLLIB_TRAIN_QUESTIONS = 4000  # one-call outcomes of this many training questions for the RLlib router
# The RLlib router reads descriptors (pipelines/train_rllib.py --arch slots --desc-dim --catalog): a
# catalog of this many synthetic models (random profiles described in the pool file's words,
# invented names, none of the pool file's), answering the same training questions, gives
# RLLIB_CATALOG_SHARE of its training episodes a random pool of 2-5 of them.
RLLIB_CATALOG_SIZE = 48
RLLIB_CATALOG_SHARE = 0.75
RLLIB_DESC_DIM = 64
RLLIB_CATALOG_PARAMS_B = (1, 3, 7, 14, 34, 70)  # sizes drawn for catalog models (billions)
FIGURES = (("reward/mean", "reward"), ("outcome/em", "EM"), ("format/ok_rate", "format-ok"),
           ("cost/mean_usd", "cost/episode (USD)"), ("calls/per_episode", "calls/episode"))


def run_config(config: str, out: Path, overrides: dict[str, Any]) -> RunConfig:
    """The config with its outputs under `out/train` (own pool actor name and ledger)."""
    run = out / "train"
    cfg = load_config(config, {**overrides, "output_dir": str(run), "pool_runtime.ledger_dir": str(run / "ledger"),
                               "pool_runtime.actor_name": f"unseen_pool_{out.resolve().name}"})
    if cfg.data.kind != "simulated":
        raise ValueError(f"router-r1 unseen measures on the simulator: data.kind must be 'simulated', "
                         f"got {cfg.data.kind!r}")
    if not unseen_models(cfg.load_pool()):
        raise ValueError(f"{cfg.pool}: no model is marked seen_in_training: false; hold one out of training")
    if cfg.policy.checkpoint is None and cfg.warmstart.steps <= 0 and cfg.train.steps <= 0:
        raise ValueError("nothing to train: a tiny policy needs warmstart.steps or train.steps")
    return cfg


def unseen_models(pool: PoolSpec) -> list[str]:
    return [m.name for m in pool.models if not m.seen_in_training]


def train(cfg: RunConfig, retrain: bool) -> dict[str, Any]:
    """The training run's report (a finished run in the same folder is reused)."""
    run = Path(cfg.output_dir)
    done = run / "report.json"
    if done.exists() and (run / "policy" / "config.json").exists() and not retrain:
        log.info("reusing the finished run in %s", run)
        return json.loads(done.read_text())
    from pipelines.train import Trainer

    return Trainer(cfg, progress=False).run()


def play(cfg: RunConfig, policy_dir: Path, pool: PoolSpec, items: list[dict]) -> list:
    """Greedy episodes of the saved router over `pool` on `items`, in process: `router-r1
    evaluate`'s `llm:` policy (prompts rendered with the policy's saved options) at temperature
    0, its calls through an in-process ModelPool (no cache)."""

    from actors.model_pool import PoolClient
    from pipelines.evaluate import make_policy, pool_target
    from router_r1.evaluation.baselines import EvalItem

    greedy = cfg.model_copy(update={"episode": cfg.episode.model_copy(update={"temperature": 0.0})})
    policy = make_policy(f"llm:{policy_dir}", pool, greedy, [], concurrency=max(1, len(items)))
    evals = [EvalItem(f"{it['id']}#0", it["question"], list(it["golden_answers"])) for it in items]

    async def go():
        target = pool_target(pool, None, use_ray=False, run_id="unseen")
        try:
            return await policy.play(evals, PoolClient(target).call)
        finally:
            await target.close()

    return [e for e, _ in asyncio.run(go())]


def measure(cfg: RunConfig, policy_dir: Path) -> dict[str, Any]:
    """Both pools' greedy figures, per-domain shares and reference policies (see the docstring)."""
    import torch

    from router_r1.env.episode_metrics import score_episodes, summarize
    from router_r1.env.reward import ReferenceCostNormalizer
    from router_r1.worlds.base import make_world
    from router_r1.worlds.sim.models import Simulation
    from router_r1.worlds.sim.oracle import reference_policies

    if cfg.learner.torch_threads:
        torch.set_num_threads(cfg.learner.torch_threads)
    whole = cfg.load_pool()
    held = unseen_models(whole)
    world = make_world(cfg, whole.seen())  # the run's world and validation questions, as training built them
    items = world.questions("val")[:cfg.data.val_size]
    questions = [world.sim.world.question(it["id"]) for it in items]
    out: dict[str, Any] = {"world": WORLD, "seed": cfg.seed, "n_questions": len(items), "held_out": held,
                           "pools": {}}
    for label, pool in (("training pool", whole.seen()), ("whole pool", whole)):
        t0 = time.perf_counter()
        eps = play(cfg, policy_dir, pool, items)
        scores = score_episodes(eps, pool, cfg.reward, ReferenceCostNormalizer(cfg.reward.reference_cost_usd),
                                world.outcomes(eps, pool))
        sim = Simulation(pool, world.sim.world)
        refs = reference_policies(sim, questions, cfg.reward)
        routes = [r for e in eps for r in e.routes]
        out["pools"][label] = {
            "models": pool.names, "play_s": time.perf_counter() - t0,
            "router": summarize(eps, scores, pool),
            "shares": {m: domain_shares(routes, m, whole, world.sim.world) for m in held},
            "expert": refs["expert"], "oracle": refs["oracle"],
            "expert_shares": ({m: domain_shares(expert_routes(sim, questions), m, whole, world.sim.world)
                               for m in held} if label == "whole pool" else {}),
            "samples": [{"question": e.question, "routes": e.routes, "response": e.response[:600]} for e in eps[:6]]}
    out["route_choice"] = route_choice(cfg, policy_dir, world, questions)
    return out


def route_choice(cfg: RunConfig, policy_dir: Path, world, questions: list) -> dict[str, Any]:
    """The router's greedy first call on `questions` (of the run's simulated `world`), each over its own fresh
    synthetic pool (`unseen_measures.choice_cases`, names drawn as in the warm-start traces),
    scored by `unseen_measures.choice_rates`: whether it names a pool model, one strong on the
    question's domain, the expert's. Only the first turn is generated (no model is called)."""
    from router_r1.engines.hf import HFGenerator
    from router_r1.engines.model import load_policy
    from router_r1.env.prompt import load_prompt_options, render_prompt_ids
    from router_r1.env.protocol import parse

    cases = choice_cases(world.sim, questions, seed=cfg.seed, reserved=world.reserved_names())
    model, tok = load_policy(policy_dir)
    options = load_prompt_options(policy_dir, cfg.policy.prompt_options())
    gen = HFGenerator(model, tok)
    prompts = [render_prompt_ids(tok, c.pool, c.question.text, options)[1] for c in cases]
    chosen = []
    for i in range(0, len(prompts), 32):
        for g in gen.generate(prompts[i:i + 32], max_new_tokens=cfg.episode.max_new_tokens, temperature=0.0):
            routes = parse(g.text).routes
            chosen.append(routes[0].model if routes else None)
    return {**choice_rates(cases, chosen),
            "samples": [{"pool": c.pool.names, "expert": c.expert, "strong": list(c.strong), "chosen": w}
                        for c, w in zip(cases[:6], chosen)]}


def rllib_slot_swap(cfg: RunConfig, out: Path, iterations: int, retrain: bool, arch: str = "slots",
                    desc_dim: int = RLLIB_DESC_DIM, catalog_share: float = RLLIB_CATALOG_SHARE) -> dict[str, Any]:
    """The RLlib router (router_r1.rl_router) on the same simulated questions: the simulator's
    one-call outcomes exported as replay tables (router_r1.worlds.sim.replay_export; training
    questions to train on, the validation questions above to play), trained without the held-out
    models (`router-r1 train-rllib --holdout --shuffle-slots --arch slots --desc-dim --catalog`:
    one network scores every slot from its descriptor, description words included, and most
    episodes run over random pools of synthetic catalog models), then played over the training pool
    and the whole pool, and over fresh synthetic pools (`route_choice`'s cases: does it read
    descriptors?). It asks each question whole (no sub-questions in replay). `arch`, `desc_dim`
    and `catalog_share` are train-rllib's (mlp, 0, 0: the router before it read descriptors)."""
    import random

    import yaml

    from pipelines import train_rllib
    from pipelines.evaluate import load_dataset, make_policy, pool_target, run_policy
    from router_r1.env.reward import ReferenceCostNormalizer, compute_reward
    from router_r1.evaluation.report import aggregate, score_run
    from router_r1.rl_router.router import RLlibRouter
    from router_r1.worlds.base import make_world
    from router_r1.worlds.sim.models import Simulation
    from router_r1.worlds.sim.replay_export import one_call_rows, replay_pool, write_table
    from router_r1.worlds.sim.synthetic import HEADS, random_pool

    whole = cfg.load_pool()
    held = unseen_models(whole)
    world = make_world(cfg, whole.seen())
    reserved = world.reserved_names()
    catalog = random_pool(random.Random(f"{cfg.seed}-rllib-catalog"), reserved,
                          sizes=(RLLIB_CATALOG_SIZE, RLLIB_CATALOG_SIZE), heads=len(HEADS))
    # sizes and latencies like the pool file's (a synthetic model has neither), so that these
    # features do not tell catalog models from the pool's
    size_rng = random.Random(f"{cfg.seed}-rllib-catalog-sizes")
    catalog = catalog.model_copy(update={"name": "rllib_catalog", "models": [
        m.model_copy(update={"params_b": size_rng.choice(RLLIB_CATALOG_PARAMS_B),
                             "latency_s": round(size_rng.uniform(0.3, 2.5), 1)}) for m in catalog.models]})
    sim = Simulation(whole, world.sim.world)
    d = out / "rllib"

    def questions(items):
        return [world.sim.world.question(it["id"]) for it in items]

    train_sim = Simulation(whole.model_copy(update={"models": [*whole.models, *catalog.models]}), world.sim.world)
    train_path = write_table(one_call_rows(train_sim, questions(world.questions("train")[:RLLIB_TRAIN_QUESTIONS])),
                             d / "train.parquet")
    val_items = world.questions("val")[:cfg.data.val_size]
    val_path = write_table(one_call_rows(sim, questions(val_items)), d / "val.parquet")
    rpool = replay_pool(whole, [train_path.resolve(), val_path.resolve()])
    pool_file, catalog_file = d / "pool_replay.yaml", d / "catalog_replay.yaml"
    for path, p in ((pool_file, rpool), (catalog_file, replay_pool(catalog, [train_path.resolve()]))):
        path.write_text(yaml.safe_dump(p.model_dump(mode="json", exclude={"source_dir"}), sort_keys=False))
    router = d / "router"
    want = {"arch": arch, "desc_dim": desc_dim, "catalog_share": catalog_share if catalog_share else 0.0,
            "iterations": iterations}
    if not retrain and (router / "rllib_router.json").exists():
        old = json.loads((router / "rllib_router.json").read_text())
        have = {"arch": old.get("arch", "mlp"), "desc_dim": old["features"].get("desc_dim", 0),
                "catalog_share": old.get("catalog_share", 0.0), "iterations": old["iterations"]}
        if have != want:
            log.info("retraining the RLlib router in %s: it was trained with %s, asked for %s", router, have, want)
            retrain = True
    if retrain or not (router / "rllib_router.json").exists():
        catalog_args = ["--catalog", str(catalog_file), "--catalog-share", str(catalog_share)] if catalog_share else []
        rc = train_rllib.main(["--pool", str(pool_file), "--data", str(train_path), "--split", "all",
                               "--holdout", ",".join(held), "--shuffle-slots", "--alpha", str(cfg.reward.alpha),
                               "--arch", arch, "--desc-dim", str(desc_dim), *catalog_args,
                               "--iterations", str(iterations), "--seed", str(cfg.seed), "--num-cpus",
                               str(cfg.ray.num_cpus), "--out", str(router), "--no-mlflow"])
        if rc:
            raise ValueError(f"router-r1 train-rllib failed (exit {rc})")
    _, items, table = load_dataset([val_path], "all", 0.2, cfg.seed, None)
    norm = ReferenceCostNormalizer(cfg.reward.reference_cost_usd)
    meta = json.loads((router / "rllib_router.json").read_text())
    res: dict[str, Any] = {"n_questions": len(items), "iterations": meta["iterations"], "arch": meta.get("arch", "mlp"),
                           "desc_dim": meta["features"].get("desc_dim", 0),
                           "catalog_models": len(catalog.models), "catalog_share": meta.get("catalog_share", 0.0),
                           "pools": {}}
    def play(spec: str, pool: PoolSpec) -> tuple[dict[str, float], list[tuple[str, str]]]:
        policy = make_policy(spec, pool, cfg, table.models, 32)
        runs = asyncio.run(run_policy(policy, items, pool_target(pool, table, False, "unseen_rllib"), True))
        rows = [score_run(it, r, pool, table.models) for it, r in zip(items, runs, strict=True)]
        rewards = [compute_reward(r["format_ok"], r["accuracy"], r["cost_usd"], norm.score(r["cost_usd"]),
                                  cfg.reward).reward for r in rows]
        agg = aggregate(rows)
        return ({"reward/mean": sum(rewards) / len(rewards), "outcome/em": agg["accuracy"],
                 "format/ok_rate": agg["format_ok"], "cost/mean_usd": agg["cost_usd"],
                 "calls/per_episode": agg["calls_per_q"]},
                [(m, it.question) for it, r in zip(items, rows) for m in r["models"]])

    for label, pool in (("training pool", rpool.seen()), ("whole pool", rpool)):
        figures, routes = play(f"rllib:{router}", pool)
        singles = {m: play(f"single:{m}", pool)[0] for m in pool.names}
        best = max(singles, key=lambda m: singles[m]["reward/mean"])
        res["pools"][label] = {
            "router": figures, "shares": {m: domain_shares(routes, m, whole, world.sim.world) for m in held},
            # one call per question on the same rows: the best single model in hindsight, and the
            # oracle (reads the labels: the cheapest right model)
            "references": {f"best single model ({best})": singles[best], "one-call oracle": play("oracle", pool)[0]}}
    played = RLlibRouter.load(router)
    cases = choice_cases(world.sim, questions(val_items), seed=cfg.seed, reserved=reserved)
    chosen = []
    for c in cases:
        played.set_pool(c.pool)
        chosen.append(played.route(c.question.text))
    res["route_choice"] = choice_rates(cases, chosen)
    return res


def markdown(res: dict[str, Any], report: dict[str, Any], command: str) -> str:
    w, pools = res["world"], res["pools"]
    lines = [f"Greedy validation ({w}, seed {res['seed']}, {res['n_questions']} questions) of one router trained "
             f"without {', '.join(res['held_out'])}, played over the training pool and over the whole pool.", "",
             "| pool | " + " | ".join(name for _, name in FIGURES) + " |", "|---|" + "---:|" * len(FIGURES)]
    for label, p in pools.items():
        lines.append(f"| router, {label} ({w}) | " + " | ".join(_f(p["router"].get(k)) for k, _ in FIGURES) + " |")
    rl = res.get("rllib", {}).get("pools", {})
    for label, p in rl.items():
        lines.append(f"| RLlib router (slot swap), {label} ({w}, questions asked whole) | "
                     + " | ".join(_f(p["router"].get(k)) for k, _ in FIGURES) + " |")
    for label, p in rl.items():
        for ref, r in p.get("references", {}).items():
            lines.append(f"| {ref}, {label} ({w}, questions asked whole) | "
                         + " | ".join(_f(r.get(k)) for k, _ in FIGURES) + " |")
    for label, p in pools.items():
        for ref in ("expert", "oracle"):
            r = p[ref]
            lines.append(f"| {ref}, {label} ({w}) | {_f(r['reward'])} | {_f(r['em'])} | - | {_f(r['cost_usd'])} | "
                         f"{_f(r['calls'])} |")
    for m in res["held_out"]:
        policies = []
        if pools:
            whole = pools["whole pool"]
            policies = [(f"router ({w})", whole["shares"][m]), (f"expert ({w})", whole["expert_shares"][m])]
        if rl:
            policies.insert(1 if pools else 0,
                            (f"RLlib router, slot swap ({w}, questions asked whole)", rl["whole pool"]["shares"][m]))
        cols = list(dict.fromkeys(d for _, shares in policies for d in shares))  # the domains, then the rest
        lines += ["", f"Share of calls to {m} per domain of the sub-question ({w}, whole pool; calls in brackets):", "",
                  "| policy | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for name, shares in policies:
            lines.append(f"| {name} | " + " | ".join(
                f"{_f(shares.get(d, {}).get('share'))} ({shares.get(d, {}).get('calls', 0)})" for d in cols) + " |")
    for name, rc in (("the router", res.get("route_choice")), ("the RLlib router", res.get("rllib", {}).get("route_choice"))):
        if rc:
            lines += ["", f"Does {name} read descriptions? Its first call on {rc['n']} validation questions, each "
                      f"over a fresh synthetic pool of 2-5 invented models ({w}): names a pool model "
                      f"{_f(rc['in_pool'])}, a model strong on the question's domain {_f(rc['strong'])} (a uniform "
                      f"pick among the lines: {_f(rc['uniform_strong'])}), the descriptor-only expert's model "
                      f"{_f(rc['expert'])} (uniform: {_f(rc['uniform_expert'])})."]
    if report:
        lines += ["", f"Training: {report.get('steps')} GRPO steps, {report.get('wall_s', 0):.0f} s."]
    if res.get("rllib"):
        r = res["rllib"]
        lines += ["", f"RLlib router: PPO, {r['iterations']} iterations, network `{r['arch']}`, {r['desc_dim']} hashed "
                  f"description terms per slot, {r['catalog_share']:g} of the episodes over random pools from a catalog "
                  f"of {r['catalog_models']} synthetic models."]
    lines += ["", f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


def _f(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.2e}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1 unseen", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/unseen_sim.yaml", help="run config YAML (default: %(default)s)")
    p.add_argument("--out", default="outputs/unseen_sim", help="folder for the run and the table (default: %(default)s)")
    add_overrides_argument(p, "warmstart.steps=600")
    p.add_argument("--retrain", action="store_true", help="train again even where a run finished")
    p.add_argument("--rllib-iterations", type=int, default=0,
                   help="also train and play the RLlib router (slot swap) for this many PPO iterations (0: not)")
    p.add_argument("--rllib-arch", choices=["slots", "mlp"], default="slots",
                   help="the RLlib router's network (train-rllib --arch; default: %(default)s)")
    p.add_argument("--rllib-desc-dim", type=int, default=RLLIB_DESC_DIM,
                   help="hashed description terms per slot (train-rllib --desc-dim; 0: none; default: %(default)s)")
    p.add_argument("--rllib-catalog-share", type=float, default=RLLIB_CATALOG_SHARE,
                   help=f"share of its episodes over random pools of 2-5 models drawn from a catalog of "
                        f"{RLLIB_CATALOG_SIZE} synthetic ones (0: only the training pool; default: %(default)s)")
    p.add_argument("--rllib-only", action="store_true",
                   help="only the RLlib router (needs --rllib-iterations): the LLM router is neither trained nor played")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    try:
        if args.rllib_iterations < 0:
            raise ValueError(f"--rllib-iterations must be >= 0, got {args.rllib_iterations}")
        if args.rllib_only and not args.rllib_iterations:
            raise ValueError("--rllib-only needs --rllib-iterations N (N > 0)")
        if args.rllib_desc_dim < 0:
            raise ValueError(f"--rllib-desc-dim must be >= 0, got {args.rllib_desc_dim}")
        if not 0.0 <= args.rllib_catalog_share <= 1.0:
            raise ValueError(f"--rllib-catalog-share must lie in [0, 1], got {args.rllib_catalog_share}")
        cfg = run_config(args.config, out, parse_overrides(args.set))
        out.mkdir(parents=True, exist_ok=True)
        if args.rllib_only:
            report, res = None, {"world": WORLD, "seed": cfg.seed, "n_questions": cfg.data.val_size,
                                 "held_out": unseen_models(cfg.load_pool()), "pools": {}}
        else:
            report = train(cfg, args.retrain)
            res = measure(cfg, Path(cfg.output_dir) / "policy")
        if args.rllib_iterations:
            res["rllib"] = rllib_slot_swap(cfg, out, args.rllib_iterations, args.retrain, args.rllib_arch,
                                           args.rllib_desc_dim, args.rllib_catalog_share)
            if args.rllib_only:
                res["n_questions"] = res["rllib"]["n_questions"]
    except (ValueError, FileNotFoundError) as e:
        print(f"router-r1 unseen: {error_line(e)}", file=sys.stderr)
        return 2
    res["train_report"] = report
    table = markdown(res, report, "router-r1 unseen " + " ".join(argv))
    (out / "unseen.json").write_text(json.dumps(res, indent=2))
    (out / "table.md").write_text(table)
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'unseen.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
