"""`router-r1 evaluate`: policies x datasets through the ModelPool -> table, Parquet, plot, MLflow.

    router-r1 evaluate --policy baselines,rllib:outputs/rllib_router \\
        --data routerbench/arc_challenge_train.csv,routerbench/mbpp_train.csv --split val \\
        --pool configs/pool_routerbench.yaml --out outputs/eval_routerbench
    router-r1 evaluate --config my_run.yaml --policy baselines,per-task,llm:outputs/my_run/policy --split val

Policies (comma-separated; POLICY_HELP): `single:<model>`, `singles` (every pool model), `random`,
`cheapest`, `largest` (by known size; skipped, with a note, when no size is known),
`most-expensive`, `oracle` (recorded answers only: it picks by their graded scores; skipped on
QA sets, with a note), `baselines` (all of those), `per-task[:margin]` (recorded answers with
--split val: one model per task, chosen from the scores of the train split), `rllib:<dir>` (RLlib
router), `llm:<dir>` (an RL-trained router checkpoint), `prompt:<dir>` (an untrained LLM prompted
with the descriptors), `openai:<model>@<base_url>` (prompt-only router behind an
OpenAI-compatible completions endpoint). A bare directory is an RLlib router if it holds
rllib_router.json, else an LLM checkpoint.

Datasets: `--data FILES` (a shortcut), or without it the world of `--config`'s `data:` section,
the same one `router-r1 train` builds (simulated, qa, replay or a custom class): its `--split`
questions (train, val, or all = both, split as the world splits them), and its recorded answers
when it has them (World.recorded: the pool's `world` and `replay` backends answer from them, and
the oracle and per-task baselines read them). Items with a history (the simulator's follow-ups,
`data.sim.conversation_share`) are rendered with it and reported as a dataset of their own,
`<world>[split]:follow-ups`. QA sets (FlashRAG/verl, router_r1.worlds.qa.load_qa)
are scored with EM/F1 against gold answers; replay tables (RouterBench/RouteLLM CSV or long
Parquet, router_r1.worlds.replay.tables) and recorded answers with accuracy (graded score) under
the adoption rule. With `--data`, `--split train|val|all` applies the deterministic hash split to
replay sets (a held-out test file evaluates with `--split all`). Relative data paths also resolve
against the shared data folder.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from pipelines.cli import error_line
from router_r1.evaluation.baselines import (DIRECT_BASELINES, EpisodePolicy, EvalItem, NoKnownSize, Policy,
                                            largest_model, make_direct_baseline, make_per_task_baseline)
from router_r1.evaluation.report import aggregate, markdown_table, plot_frontier, quality, score_run
from router_r1.infra.config import MlflowConfig, RunConfig, load_config
from router_r1.pool.descriptors import PoolSpec, load_pool
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.worlds.qa import load_qa
from router_r1.worlds.replay.tables import (ReplaySample, ReplayTable, is_replay_file, replay_call,
                                            resolve_data_path, split_samples)

DEFAULT_POOL = "configs/pool_routerbench.yaml"  # relative to the working directory, else the repo
POLICY_HELP = (
    "comma-separated policies: single:<model> (ask one model); singles (every pool model); random (a model "
    "drawn per question); cheapest, most-expensive (by descriptor price); largest (by descriptor params_b; "
    "skipped when no size is known); oracle (the cheapest model with the best recorded score per question: "
    "an upper bound, recorded answers only); baselines (all of the above); per-task[:margin] (per task, the "
    "cheapest model within margin of the best score on the train split; needs --split val); rllib:<dir> "
    "(the RLlib router); llm:<dir> (an RL-trained LLM router); prompt:<dir> (an untrained LLM prompted with "
    "the descriptors); openai:<model>@<base_url> (a prompt-only router behind a completions endpoint). "
    "A bare <dir> is rllib: if it holds rllib_router.json, else llm:")


class Dataset(NamedTuple):
    name: str
    items: list[EvalItem]
    table: ReplayTable | None  # recorded answers (replay tables or a world's), else None
    train: list[ReplaySample] | None  # the train split's recorded samples, for per-task (--split val)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1 evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument("--data", default=None,
                   help="comma-separated dataset files; replay tables joined with '+' form one dataset "
                        "(default: the questions of --config's data: section, the world `train` uses)")
    p.add_argument("--pool", default=None, help=f"model-descriptor YAML (default: config's pool or {DEFAULT_POOL})")
    p.add_argument("--exclude", default="",
                   help="comma-separated models to drop from the pool (e.g. a router's unseen models)")
    p.add_argument("--config", default=None, help="RunConfig YAML (episode, reward, eval, mlflow sections)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each dataset (after the split)")
    p.add_argument("--split", choices=["train", "val", "all"], default="all",
                   help="--data replay sets: hash split; --config: the world's own split (all: train and val)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="--data replay sets (a --config world splits by its data.val_fraction)")
    p.add_argument("--seed", type=int, default=0,
                   help="random baseline and --data hash split (a --config world splits by its own seed)")
    p.add_argument("--device", default="auto",
                   help="llm:/prompt: routers run on this torch device: auto (cuda when present, else cpu), cpu, cuda, cuda:1")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="llm:/prompt: routers' weights (default: the config's policy.dtype, 'auto': the checkpoint's own)")
    p.add_argument("--out", default=None, help="output folder (default: config eval.output_dir)")
    p.add_argument("--concurrency", type=int, default=None, help="calls in flight (default: config)")
    p.add_argument("--ray", action="store_true", help="call models through the ModelPool Ray actor")
    p.add_argument("--mlflow-uri", default=None, help="tracking URI (default: config / MLFLOW_TRACKING_URI)")
    p.add_argument("--no-mlflow", action="store_true")
    return p


# -- datasets ---------------------------------------------------------------------------------
def load_dataset(paths: list[Path], split: str, val_fraction: float, seed: int, limit: int | None
                 ) -> tuple[str, list[EvalItem], ReplayTable | None]:
    """(dataset name, items, replay table or None). Several replay files (joined with '+' on the
    command line) make one dataset, e.g. all RouterBench tasks together."""
    if all(is_replay_file(p) for p in paths):
        table = ReplayTable.from_files(paths)
        samples = split_samples(table.samples, split, val_fraction, seed)[:limit]
        name = "+".join(p.stem for p in paths) + ("" if split == "all" else f"[{split}]")
        items = [EvalItem(f"{s.eval_name}:{s.sample_id}", s.prompt, [], s, s.eval_name) for s in samples]
        return name, items, table
    if len(paths) != 1:
        raise ValueError(f"only replay tables can be joined with '+': {'+'.join(map(str, paths))}")
    path = paths[0]
    qa = load_qa(path, limit)
    return path.stem, [EvalItem(e.id, e.question, e.golden_answers, None, e.source) for e in qa], None


def load_world_datasets(cfg: RunConfig, pool: PoolSpec, split: str, limit: int | None) -> list[Dataset]:
    """The questions of the world `cfg.data` names (router_r1.worlds.base.make_world, over the
    pool's training view, as `router-r1 train` builds it), with its recorded answers if any. Items
    with a history (the simulator's follow-ups, data.sim.conversation_share) are a dataset of their
    own, `<name>:follow-ups`, so they are reported apart from the single questions."""
    from router_r1.worlds.base import make_world, recorded_samples

    world = make_world(cfg, pool.seen())
    table = world.recorded()
    splits = ("train", "val") if split == "all" else (split,)
    questions = [q for s in splits for q in world.questions(s)][:limit]
    items = []
    for q in questions:
        sample = table.lookup(q["question"]) if table is not None else None
        if table is not None and sample is None:
            raise ValueError(f"the {type(world).__name__} world has no recorded answers to question {q['id']!r}")
        items.append(EvalItem(q["id"], q["question"], list(q.get("golden_answers") or []), sample,
                              sample.eval_name if sample is not None else "", list(q.get("history") or [])))
    if not items:
        raise ValueError(f"the {type(world).__name__} world has no {split} questions")
    train = recorded_samples(world, "train")[1] if table is not None and split == "val" else None
    kind = cfg.data.world.rpartition(":")[2] if cfg.data.kind == "custom" else cfg.data.kind
    name = kind + ("" if split == "all" else f"[{split}]")
    single = [it for it in items if not it.history]
    follow = [it for it in items if it.history]
    return ([Dataset(name, single, table, train)] if single else []) + (  # type: ignore[arg-type]
        [Dataset(f"{name}:follow-ups", follow, table, train)] if follow else [])  # type: ignore[arg-type]


# -- policies ---------------------------------------------------------------------------------
def expand_policies(spec: str, pool: PoolSpec) -> list[str]:
    out: list[str] = []
    for s in (x.strip() for x in spec.split(",")):
        if not s:
            continue
        if s == "singles":
            out += [f"single:{n}" for n in pool.names]
        elif s == "baselines":
            out += [f"single:{n}" for n in pool.names] + list(DIRECT_BASELINES)
        else:
            out.append(s)
    return list(dict.fromkeys(out))


def resolve_device(device: str) -> str:
    """`--device auto` is cuda when torch sees a GPU, else cpu; an explicit cuda without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device here")
    return device


def make_policy(spec: str, pool: PoolSpec, cfg: RunConfig, table_models: list[str], concurrency: int,
                device: str = "cpu", dtype: str | None = None,
                train: list[ReplaySample] | None = None) -> Policy:
    """`device` and `dtype` ("auto": the checkpoint's own; None: the config's policy.dtype)
    apply to llm:/prompt: routers; `train` (the replay train split) to `per-task`."""
    if spec.startswith("single:") or spec in DIRECT_BASELINES:
        return make_direct_baseline(spec, pool, cfg.seed, concurrency, table_models)
    if spec == "per-task" or spec.startswith("per-task:"):
        return make_per_task_baseline(spec, pool, train or [], table_models, concurrency)
    kind, _, arg = spec.partition(":")
    if not arg:  # a bare directory
        arg = spec
        kind = "rllib" if (Path(arg) / "rllib_router.json").exists() else "llm"
    if kind == "rllib":
        from router_r1.rl_router.eval_policy import RLlibPolicy

        return RLlibPolicy.load(arg, pool, concurrency=concurrency)
    if kind in ("llm", "prompt"):
        from router_r1.engines.hf import HFGenerator
        from router_r1.engines.model import load_policy
        from router_r1.env.prompt import load_prompt_options, render_prompt_ids

        model, tok = load_policy(arg, device=device, dtype=dtype or cfg.policy.dtype)
        model.eval()
        gen = HFGenerator(model, tok, device=device)
        ep = cfg.episode
        # The prompt the router was trained with, saved beside it; a checkpoint that records none
        # (a stock instruct model, `prompt:DIR`) renders as the --config policy section says.
        options = load_prompt_options(arg, default=cfg.policy.prompt_options())

        batches = itertools.count(1)

        def generate(contexts: list[list[int]]):
            # Each generation batch its own seed (cfg.seed, batch): at temperature > 0 no two
            # turns reuse one sampling stream.
            return gen.generate(contexts, ep.max_new_tokens, ep.temperature, ep.top_p,
                                seed=cfg.seed * 1_000_003 + next(batches))

        return EpisodePolicy(_llm_name(kind, arg), generate, pool, ep, tok, batch_size=concurrency,
                             render=lambda q, history=(): render_prompt_ids(tok, pool, q, options, history),
                             max_context=gen.max_context)
    if kind == "openai":
        from router_r1.engines.endpoint import CompletionsGenerator

        model_id, _, url = arg.partition("@")
        gen = CompletionsGenerator(url or None, model_id, cfg.episode)
        return EpisodePolicy(f"prompt:{model_id}", gen.generate, pool, cfg.episode, None,
                             batch_size=concurrency)
    raise ValueError(f"unknown policy {spec!r}")


def _llm_name(kind: str, arg: str) -> str:
    """`llm:<run>/policy` is named after its run folder (every run's final policy is `policy`)."""
    p = Path(arg)
    name = p.parent.name if p.name == "policy" and p.parent.name else p.name
    return f"{kind}:{name}"


# -- running ----------------------------------------------------------------------------------
def pool_target(pool: PoolSpec, table: ReplayTable | None, use_ray: bool, run_id: str,
                actor_cpus: float = 0.5):
    """A fresh pool per policy: no cross-policy cache hits, per-policy totals. Cache off: a
    repeated question must be billed again, as a deployed policy would be."""
    from router_r1.worlds.backend import WorldBackend
    from router_r1.worlds.replay.backend import ReplayBackend

    # Recorded answers (replay tables, or a world's own) answer the models of either kind.
    backends = ({"replay": ReplayBackend(pool, table=table), "world": WorldBackend(pool, recorded=table)}
                if table is not None else None)
    runtime = PoolRuntimeConfig(ledger_dir=None, cache=False, actor_name=f"eval_pool_{run_id}",
                                num_cpus=actor_cpus)
    if use_ray:
        import ray

        from actors.model_pool import get_or_create_pool

        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        return get_or_create_pool(pool, runtime, run_id, backends=backends)
    from router_r1.pool.core import PoolCore

    return PoolCore(pool, runtime, run_id, backends=backends)


async def run_policy(policy: Policy, items: list[EvalItem], target: Any, replay: bool) -> list:
    from actors.model_pool import PoolClient

    client = PoolClient(target)

    async def call(model: str, query: str, episode_id: str | None = None):
        return await client.call(model, query, episode_id=episode_id or "")

    if replay:  # see router_r1.worlds.replay.tables.replay_call and docs/evaluation.md
        call = replay_call(call, {it.uid: it.question for it in items})
    try:
        return await policy.run(items, call)
    finally:
        if client._local:  # an in-process pool: close its HTTP session on the loop that opened it
            await target.close()


def _metric_key(*parts: str) -> str:
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. /:]", "_", p) for p in parts)


def log_mlflow(mcfg: MlflowConfig, uri: str | None, params: dict[str, Any],
               summaries: dict[str, dict[str, dict[str, Any]]], out: Path) -> str:
    import os

    import mlflow

    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or mcfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    # A new experiment keeps its artifacts beside the configured store (as training's do), not
    # under ./mlruns of whatever directory the command runs in.
    from router_r1.infra.tracking import artifact_root

    client, name = mlflow.MlflowClient(uri), mcfg.experiment + "-eval"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(
        name, artifact_location=artifact_root(uri))
    with mlflow.start_run(experiment_id=exp_id, run_name=f"evaluate-{out.name}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics = {}
        for ds, by_policy in summaries.items():
            for pol, s in by_policy.items():
                for k in ("accuracy", "em", "f1", "cost_usd", "calls_per_q", "format_ok", "latency_s"):
                    if s.get(k) is not None:
                        metrics[_metric_key(ds, pol, k)] = float(s[k])
        mlflow.log_metrics(metrics)
        for f in sorted(out.iterdir()):
            if f.is_file():
                mlflow.log_artifact(str(f))
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config) if args.config else RunConfig()
        pool_path = args.pool or (cfg.pool if args.config else DEFAULT_POOL)
        if not args.pool and not args.config and not Path(pool_path).exists():
            pool_path = str(Path(__file__).resolve().parents[1] / DEFAULT_POOL)
        pool = load_pool(pool_path)
        drop = {pool[m.strip()].name for m in args.exclude.split(",") if m.strip()}
        if drop:
            pool = pool.subset([n for n in pool.names if n not in drop])
        if args.data:
            groups = [[resolve_data_path(f.strip(), None) for f in g.split("+")]
                      for g in args.data.split(",") if g.strip()]
            datasets = []
            for g in groups:
                name, items, table = load_dataset(g, args.split, args.val_fraction, args.seed, args.limit)
                # per-task routing learns from the train split's labels: none when the whole file is evaluated
                train = (split_samples(table.samples, "train", args.val_fraction, args.seed)
                         if table is not None and args.split == "val" else None)
                datasets.append(Dataset(name, items, table, train))
        elif args.config:
            datasets = load_world_datasets(cfg, pool, args.split, args.limit)
        else:
            raise ValueError("no questions: give --data FILES, or --config with the run's data: section")
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"router-r1 evaluate: {error_line(e)}", file=sys.stderr)
        return 2
    cfg = cfg.model_copy(update={"seed": args.seed})
    out = Path(args.out or cfg.eval.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    concurrency = args.concurrency or cfg.eval.concurrency
    specs = expand_policies(args.policy, pool)
    # Pre-flight, before anything is spent: every model a policy names is in the pool, and every
    # model the run may call can be called (its API key variable is set).
    needed: set[str] = set()
    for s in specs:
        if s.startswith("single:"):
            desc = pool.resolve(s.partition(":")[2])
            if desc is None:
                print(f"router-r1 evaluate: policy {s!r}: no model {s.partition(':')[2]!r} in pool "
                      f"{pool.name!r} ({', '.join(pool.names)})", file=sys.stderr)
                return 2
            needed.add(desc.name)
        else:
            needed.update(pool.names)
    unset = sorted({f"{m.backend.api_key_env} (for {m.name})" for m in pool.models
                    if m.name in needed and m.backend.key_missing()})
    if unset:
        print(f"router-r1 evaluate: API key variable(s) not set: {', '.join(unset)}", file=sys.stderr)
        return 2
    all_failed: list[str] = []  # policies whose every call failed
    run_calls = run_failed = 0
    # The oracle picks by replay labels; a QA set has none, so it is skipped there, with a note.
    notes = [f"oracle skipped on {d.name}: it chooses by replay labels and a QA set has none"
             for d in datasets if d.table is None and "oracle" in specs]
    if "largest" in specs:  # no model of known size: unknown, never guessed (e.g. by price)
        try:
            largest_model(pool)
        except NoKnownSize as e:
            notes.append(f"largest skipped: {str(e).removeprefix('largest: ')}")
            specs.remove("largest")
    for note in notes:
        print(f"router-r1 evaluate: {note}", file=sys.stderr)
    runnable = [s for s in specs if s != "oracle"] or ("oracle" in specs and any(d.table is not None
                                                                              for d in datasets))
    if not runnable:  # checked before anything is spent
        print("router-r1 evaluate: nothing to evaluate", file=sys.stderr)
        return 2

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, dict[str, Any]]] = {}
    for ds_name, items, table, train in datasets:
        table_models = table.models if table is not None else []
        for spec in specs:
            if spec == "oracle" and table is None:
                continue
            try:
                policy = make_policy(spec, pool, cfg, table_models, concurrency,
                                     device=resolve_device(args.device), dtype=args.dtype, train=train)
            except (FileNotFoundError, ValueError, RuntimeError) as e:
                print(f"router-r1 evaluate: policy {spec!r}: {e}", file=sys.stderr)
                return 2
            run_id = re.sub(r"[^A-Za-z0-9_]", "_", f"{ds_name}_{policy.name}")[:60]
            target = pool_target(pool, table, args.ray, run_id)
            t0 = time.perf_counter()
            runs = asyncio.run(run_policy(policy, items, target, table is not None))
            wall = time.perf_counter() - t0
            ds_rows = []
            for it, r in zip(items, runs, strict=True):
                row = score_run(it, r, pool, table_models)
                row.update(dataset=ds_name, policy=policy.name)
                ds_rows.append(row)
            rows += ds_rows
            n_calls = sum(r["calls"] for r in ds_rows)
            n_failed = sum(r["failed_calls"] for r in ds_rows)
            run_calls, run_failed = run_calls + n_calls, run_failed + n_failed
            if n_calls and n_calls == n_failed:
                first = next(c for run in runs for c in run.calls)
                all_failed.append(f"{policy.name} on {ds_name}: all {n_calls} calls failed "
                                  f"(e.g. {first.status.value}: {first.error})")
                print(f"router-r1 evaluate: WARNING: {all_failed[-1]}", file=sys.stderr, flush=True)
            for note in getattr(policy, "notes", []):
                if note not in notes:
                    notes.append(note)
                    print(f"router-r1 evaluate: {note}", file=sys.stderr)
            s = aggregate(ds_rows)
            s["wall_s"] = wall
            summaries.setdefault(ds_name, {})[policy.name] = s
            print(f"{ds_name:32s} {policy.name:40s} quality={quality(s):.3f} "
                  f"cost=${s['cost_usd']:.6f} calls={s['calls_per_q']:.2f} ({wall:.1f}s)", flush=True)
            if args.ray:
                import ray

                ray.kill(target)

    table_md = markdown_table(summaries)
    notes_md = "".join(f"Note: {note}.\n\n" for note in notes)
    (out / "results.md").write_text(f"# Evaluation\n\npool: {pool.name} ({pool_path}); "
                                    f"split: {args.split}; limit: {args.limit}"
                                    f"{'; excluded: ' + args.exclude if args.exclude else ''}\n\n"
                                    f"{notes_md}{table_md}")
    pq.write_table(pa.Table.from_pylist(rows), out / "results.parquet")
    (out / "summary.json").write_text(json.dumps(summaries, indent=2))
    for ds_name, by_policy in summaries.items():
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", ds_name)
        plot_frontier(by_policy, str(out / f"frontier_{safe}.png"), f"{ds_name}: cost vs quality ({pool.name})")
    print(table_md)
    if not args.no_mlflow and cfg.mlflow.enabled:
        params = {"policies": ",".join(specs), "data": args.data or f"config:{args.config}", "pool": str(pool_path),
                  "split": args.split, "limit": args.limit, "seed": args.seed,
                  "exclude": args.exclude}
        run_id = log_mlflow(cfg.mlflow, args.mlflow_uri, params, summaries, out)
        print(f"MLflow run {run_id}")
    if run_calls and run_calls == run_failed:  # the table above is not a result: say so last, and fail
        print(f"router-r1 evaluate: FAILED: all {run_calls} calls of the run failed: {'; '.join(all_failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
