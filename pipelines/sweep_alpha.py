"""`router-r1 sweep-alpha`: the cost trade-off of the reward's alpha (Router-R1, Table 4 in shape).

Trains one router per alpha with the same config (by default the demo: the simulated world),
then plays each greedily on the run's validation questions and writes, in `--out`:

    table.md      alpha | EM | reward | cost/episode | calls/episode | share of calls per model
    frontier.png  cost per episode (log x) vs EM: the trained routers beside the simulator's
                  reference policies (every single model, random, descriptor-only expert, oracle)
    sweep.json    every figure above, plus each run's report

The supervised warm start does not depend on alpha, so it runs once (`warm_start/`, a run of
zero RL steps) and every alpha's GRPO starts from that same router (`policy.checkpoint`); the
routers then differ by alpha alone. A finished run is reused (`--retrain` trains it again), so an
interrupted sweep continues where it stopped. Every figure comes from the world the config
names; on the demo config that is the simulator, and the table and plot say so.

    router-r1 sweep-alpha --config configs/demo.yaml --alphas 0,0.3,0.6,0.9 --out outputs/alpha_sweep
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pipelines.cli import add_overrides_argument, error_line, parse_overrides
from router_r1.infra.config import load_config

log = logging.getLogger("router_r1.sweep_alpha")


def _run_overrides(out: Path, tag: str, overrides: dict[str, Any]) -> dict[str, Any]:
    return {**overrides, "output_dir": str(out / tag), "name": f"{overrides.get('name', 'sweep')}-{tag}",
            "pool_runtime.actor_name": f"sweep_pool_{tag}", "pool_runtime.ledger_dir": str(out / tag / "ledger")}


def warm_start_once(config: str, out: Path, overrides: dict[str, Any], retrain: bool) -> dict[str, Any]:
    """The config's warm start alone (zero RL steps), saved as a policy every alpha starts from;
    the overrides that make a run start from it (none when the config has no warm start)."""
    from pipelines.train import Trainer

    cfg = load_config(config, overrides)
    if cfg.policy.checkpoint or cfg.warmstart.steps <= 0:
        return {}
    policy = out / "warm_start" / "policy"
    if retrain or not (policy / "config.json").exists():
        Trainer(load_config(config, {**_run_overrides(out, "warm_start", overrides), "train.steps": 0}),
                progress=False).run()
    return {"policy.checkpoint": str(policy.resolve()), "warmstart.steps": 0}


def train_one(config: str, alpha: float, out: Path, overrides: dict[str, Any], retrain: bool) -> dict[str, Any]:
    """Train (or reuse) the run for one alpha; its report plus the greedy end-of-run call shares."""
    from pipelines.train import Trainer

    tag = f"alpha_{alpha:g}".replace(".", "p")
    run_dir = out / tag
    done = run_dir / "sweep_run.json"
    if done.exists() and not retrain:
        log.info("alpha %g: reusing %s", alpha, done)
        return json.loads(done.read_text())
    cfg = load_config(config, {**_run_overrides(out, tag, overrides), "reward.alpha": alpha})
    trainer = Trainer(cfg, progress=False)
    report = trainer.run()
    end = trainer.evals["end"]
    row = {"alpha": alpha, "em": end["outcome/em"], "reward": end["reward/mean"],
           "cost_usd": end["cost/mean_usd"], "calls": end["calls/per_episode"],
           "format_ok": end["format/ok_rate"],
           "shares": {k.removeprefix("calls/share/"): v for k, v in end.items() if k.startswith("calls/share/")},
           "by_type": report.get("by_type"), "report": report}
    done.write_text(json.dumps(row, indent=2))
    return row


def references(config: str, overrides: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The simulator's reference policies on the run's validation questions: EM, cost, calls
    (router_r1.worlds.sim.oracle.reference_policies; EM and cost do not depend on alpha)."""
    from router_r1.worlds.base import make_world
    from router_r1.worlds.sim.oracle import reference_policies

    cfg = load_config(config, overrides)
    if cfg.data.kind != "simulated":
        return {}
    world = make_world(cfg, cfg.load_pool().seen())
    sim = world.sim
    rows = reference_policies(sim, [sim.world.question(it["id"]) for it in world.questions("val")], cfg.reward)
    names = {**{f"single:{m}": f"single: {m}" for m in sim.names},
             "random (one call)": "random", "expert": "expert (descriptors)", "oracle": "oracle"}
    return {label: {k: rows[key][k] for k in ("em", "cost_usd", "calls")} for key, label in names.items()}


def world_label(config: str, overrides: dict[str, Any]) -> str:
    kind = load_config(config, overrides).data.kind
    return {"simulated": "simulator", "replay": "replay"}.get(kind, kind)


def markdown(rows: list[dict[str, Any]], refs: dict[str, dict[str, float]], world: str) -> str:
    models = sorted({m for r in rows for m in r["shares"]})
    head = "| alpha | EM | reward | cost/episode (USD) | calls/episode | " + " | ".join(
        f"share {m}" for m in models) + " |"
    out = [f"Greedy validation of routers trained at each alpha ({world}).", "", head,
           "|" + "---:|" * (5 + len(models))]
    for r in rows:
        out.append(f"| {r['alpha']:g} | {r['em']:.3f} | {r['reward']:.3f} | {r['cost_usd']:.2e} | "
                   f"{r['calls']:.2f} | " + " | ".join(f"{r['shares'].get(m, 0.0):.2f}" for m in models) + " |")
    if refs:
        out += ["", f"Reference policies on the same questions ({world}):", "",
                "| policy | EM | cost/episode (USD) | calls/episode |", "|---|---:|---:|---:|"]
        out += [f"| {k} | {v['em']:.3f} | {v['cost_usd']:.2e} | {v['calls']:.2f} |" for k, v in refs.items()]
    return "\n".join(out) + "\n"


def plot(rows: list[dict[str, Any]], refs: dict[str, dict[str, float]], path: Path, title: str) -> None:
    from router_r1.evaluation.report import plot_frontier

    by_policy = {f"llm router alpha={r['alpha']:g}": {"cost_usd": r["cost_usd"], "em": r["em"]} for r in rows}
    by_policy.update({k: {"cost_usd": v["cost_usd"], "em": v["em"]} for k, v in refs.items()})
    plot_frontier(by_policy, str(path), title)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1 sweep-alpha", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml", help="run config YAML (default: the demo)")
    p.add_argument("--alphas", default="0,0.3,0.6,0.9", help="comma-separated alphas")
    p.add_argument("--out", default="outputs/alpha_sweep", help="folder for the runs, table, plot")
    add_overrides_argument(p, "train.steps=40")
    p.add_argument("--retrain", action="store_true", help="train again even where a run finished")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        overrides = parse_overrides(args.set)
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
        if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
            raise ValueError(f"--alphas must be numbers in [0, 1], got {args.alphas!r}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        start = warm_start_once(args.config, out, overrides, args.retrain)
        rows = [train_one(args.config, a, out, {**overrides, **start}, args.retrain) for a in alphas]
        refs = references(args.config, overrides)
        world = world_label(args.config, overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"router-r1 sweep-alpha: {error_line(e)}", file=sys.stderr)
        return 2
    table = markdown(rows, refs, world)
    (out / "table.md").write_text(table)
    plot(rows, refs, out / "frontier.png", f"EM vs cost per episode, routers trained at each alpha ({world}, "
                                           f"greedy validation)")
    (out / "sweep.json").write_text(json.dumps({"world": world, "rows": rows, "references": refs}, indent=2))
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'frontier.png'}, {out / 'sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
