"""`router-r1 train-rllib`: train the feature-based router with RLlib PPO (new API stack).

    router-r1 train-rllib --pool configs/pool_routerbench.yaml \\
        --data routerbench/arc_challenge_train.csv+routerbench/mbpp_train.csv+routerbench/winograde_train.csv \\
        --split train --alpha 0.2 --iterations 40 --out outputs/rllib_router

    router-r1 train-rllib --config my_run.yaml --split train --iterations 40 --out outputs/rllib_router

Trains on the recorded answers of a world's train split (router_r1.rl_router.env): the world of
`--config`'s `data:` section, the one `router-r1 train` builds (replay tables, or a custom class
with recorded answers: World.recorded), or replay tables given as `--data` files (a shortcut).
Then writes a self-contained router folder: the RLModule (loadable without an Algorithm) and rllib_router.json. `--holdout`
leaves models out of training (they are unseen models at evaluation time). For models unseen in
training: `--arch slots` (one network scores every slot from its descriptor:
router_r1.rl_router.slot_module), `--desc-dim` (hashed description terms per slot) and `--catalog`
(a pool file of more models answered by the same tables, drawn as random pools for
`--catalog-share` of the episodes) make the router read descriptors instead of remembering models.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from router_r1.pool.descriptors import load_pool
from router_r1.rl_router.env import RouterEnv, training_pool
from router_r1.rl_router.features import FeatureSpec
from router_r1.rl_router.router import META_FILE, MODULE_DIR


DEFAULT_POOL = "configs/pool_routerbench.yaml"
DEFAULT_ALPHA = 0.2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router-r1 train-rllib", description=__doc__.splitlines()[0])
    p.add_argument("--pool", default=None, help=f"model-descriptor YAML (default: --config's pool, else {DEFAULT_POOL})")
    p.add_argument("--config", default=None,
                   help="run config YAML: train on the recorded answers of its data: section's world")
    p.add_argument("--data", default=None, help="replay tables joined with '+' (or ','), instead of --config")
    p.add_argument("--split", choices=["train", "val", "all"], default="train",
                   help="--data: hash split; --config: the world's own split (all: train and val)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="--data only")
    p.add_argument("--holdout", default="", help="comma-separated models left out of training")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"cost coefficient of the reward (default: --config's reward.alpha, else {DEFAULT_ALPHA})")
    p.add_argument("--normalizer", choices=["window", "reference"], default=None,
                   help="cost normaliser (default: --config's reward.normalizer, else window)")
    p.add_argument("--max-calls", type=int, default=2)
    p.add_argument("--shuffle-slots", action="store_true",
                   help="random model-to-slot placement per episode (generalises to unseen models)")
    p.add_argument("--arch", choices=["mlp", "slots"], default="mlp",
                   help="mlp: RLlib's default MLP over the flat observation; slots: one shared network "
                        "scores each model slot from its descriptor (router_r1.rl_router.slot_module)")
    p.add_argument("--desc-dim", type=int, default=0, help="hashed description terms per slot (0: none)")
    p.add_argument("--catalog", default=None,
                   help="pool file of extra models (answers in the same tables) for random training pools")
    p.add_argument("--catalog-share", type=float, default=0.5, help="share of episodes over a catalog pool")
    p.add_argument("--catalog-sizes", default="2,5", help="models per catalog pool: min,max")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--batch", type=int, default=2000, help="env steps per training iteration")
    p.add_argument("--minibatch", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--entropy", type=float, default=0.01)
    p.add_argument("--hidden", default="128,128", help="MLP widths (--arch slots: the first is its width)")
    p.add_argument("--question-dim", type=int, default=256)
    p.add_argument("--num-envs", type=int, default=16, help="vectorised envs in the local env runner")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs/rllib_router")
    p.add_argument("--num-cpus", type=int, default=None, help="for the local Ray this starts")
    p.add_argument("--mlflow-uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or "
                   "sqlite:///mlruns/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true")
    return p


def train(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    if bool(args.data) == bool(args.config):
        raise ValueError("give the questions either as --config (the run's data: section) or as --data files")
    reward: dict[str, Any] = {"alpha": DEFAULT_ALPHA, "normalizer": "window"}
    cfg_pool = None
    if args.config:
        from router_r1.infra.config import load_config

        cfg = load_config(args.config)
        reward = cfg.reward.model_dump(mode="json")
        cfg_pool = cfg.pool
    reward |= {k: v for k, v in (("alpha", args.alpha), ("normalizer", args.normalizer)) if v is not None}
    args.alpha, args.normalizer = reward["alpha"], reward["normalizer"]
    pool_path = str(Path(args.pool or cfg_pool or DEFAULT_POOL).resolve())
    pool = load_pool(pool_path)
    holdout = [h.strip() for h in args.holdout.split(",") if h.strip()]
    tpool = training_pool(pool, holdout)
    if args.desc_dim < 0:
        raise ValueError(f"--desc-dim must be >= 0, got {args.desc_dim}")
    if not 0.0 <= args.catalog_share <= 1.0:
        raise ValueError(f"--catalog-share must lie in [0, 1], got {args.catalog_share}")
    try:
        sizes = [int(x) for x in args.catalog_sizes.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 2:
        raise ValueError(f"--catalog-sizes must be min,max (e.g. 2,5), got {args.catalog_sizes!r}")
    features = FeatureSpec(question_dim=args.question_dim, desc_dim=args.desc_dim)
    data: Any = ({"config": str(Path(args.config).resolve())} if args.config
                 else [str(p) for g in args.data.split(",") for p in g.split("+") if p.strip()])
    env_config = {
        "pool_path": pool_path, "holdout": holdout, "split": args.split, "val_fraction": args.val_fraction,
        **({"run_config": data["config"]} if args.config else {"data": data}),
        "reward": reward,
        "max_calls": args.max_calls, "features": features.to_dict(), "seed": args.seed,
        "shuffle_slots": args.shuffle_slots,
    }
    if args.catalog:
        env_config |= {"catalog_path": str(Path(args.catalog).resolve()), "catalog_share": args.catalog_share,
                       "catalog_sizes": sizes}
    import torch

    torch.set_num_threads(1)  # a tiny MLP: thread hand-offs cost more than they save
    RouterEnv(env_config)  # fail here, with our own error, on bad data, pool or holdout (cached)
    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    config = (
        PPOConfig()
        .environment(RouterEnv, env_config=env_config)
        .env_runners(num_env_runners=0, num_envs_per_env_runner=args.num_envs)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=args.batch, minibatch_size=args.minibatch,
                  num_epochs=args.epochs, lr=args.lr, entropy_coeff=args.entropy, gamma=1.0, lambda_=1.0)
        .rl_module(**module_spec(args, features))
        .debugging(seed=args.seed)
        .reporting(metrics_num_episodes_for_smoothing=200)
    )
    algo = config.build_algo()
    history = []
    t0 = time.perf_counter()
    for it in range(args.iterations):
        res = algo.train()
        ret = res.get("env_runners", {}).get("episode_return_mean")
        history.append({"iteration": it, "episode_return_mean": ret, "elapsed_s": time.perf_counter() - t0})
        print(f"iter {it:3d}  return {ret if ret is None else round(ret, 4)}  "
              f"({time.perf_counter() - t0:.1f}s)", flush=True)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    module = algo.get_module()
    module.save_to_path(str((tmp / MODULE_DIR).resolve()))
    meta = {
        "features": features.to_dict(), "max_calls": args.max_calls,
        "slots": [m.name for m in tpool.models], "pool": tpool.model_dump(mode="json"),
        "reward": env_config["reward"], "data": data, "split": args.split,
        "val_fraction": args.val_fraction, "holdout": holdout, "iterations": args.iterations,
        "shuffle_slots": args.shuffle_slots, "arch": args.arch,
        "catalog": env_config.get("catalog_path"), "catalog_share": args.catalog_share if args.catalog else 0.0,
        "history": history, "algorithm": "PPO (RLlib new API stack)",
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    algo.stop()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    if not args.no_mlflow:
        meta["mlflow_run_id"] = log_mlflow(args, meta, out)
    return meta


def module_spec(args: argparse.Namespace, features: FeatureSpec) -> dict[str, Any]:
    """`PPOConfig.rl_module` arguments for `--arch`."""
    hidden = [int(h) for h in args.hidden.split(",")]
    if args.arch == "slots":
        from ray.rllib.core.rl_module.rl_module import RLModuleSpec

        from router_r1.rl_router.slot_module import SlotRouterModule

        return {"rl_module_spec": RLModuleSpec(module_class=SlotRouterModule,
                                               model_config={"features": features.to_dict(), "hidden": hidden[0]})}
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    return {"model_config": DefaultModelConfig(fcnet_hiddens=hidden, fcnet_activation="relu", vf_share_layers=False)}


def log_mlflow(args: argparse.Namespace, meta: dict[str, Any], out: Path) -> str:
    """Params, the return curve, and the router folder as artifacts (experiment <name>-rllib)."""
    import os

    import mlflow

    from router_r1.infra.config import MlflowConfig

    cfg = MlflowConfig()
    uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(cfg.experiment + "-rllib")
    with mlflow.start_run(run_name=f"train-rllib-{out.name}") as run:
        mlflow.log_params({k: str(v)[:500] for k, v in vars(args).items()})
        for h in meta["history"]:
            if h["episode_return_mean"] is not None:
                mlflow.log_metric("episode_return_mean", h["episode_return_mean"], step=h["iteration"])
        mlflow.log_artifacts(str(out), artifact_path="router")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        meta = train(args)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"router-r1 train-rllib: {e}", file=sys.stderr)
        return 2
    print(f"saved RLlib router to {args.out} (final return "
          f"{meta['history'][-1]['episode_return_mean'] if meta['history'] else None})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
