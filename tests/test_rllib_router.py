"""The RLlib router: environment rewards (hand-checked), slot assignment for unseen models, PPO
training for a few iterations on the tiny world, loading without an Algorithm, and evaluation."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from routerbench_tiny import write_pool, write_routerbench
from router_r1.pool.descriptors import load_pool
from router_r1.rl_router.env import RouterEnv
from router_r1.rl_router.features import FeatureSpec, assign_slots, hash_ngrams
from router_r1.worlds.replay.tables import ReplayTable

SPEC = {"question_dim": 32, "reply_dim": 8, "max_models": 4}


@pytest.fixture
def tiny(tmp_path):
    csv = write_routerbench(tmp_path / "tiny.csv")
    return csv, load_pool(write_pool(tmp_path / "pool.yaml", [csv])), ReplayTable.from_files([csv])


def make_env(tiny, **kw):
    _, pool, table = tiny
    return RouterEnv({"samples": table.samples, "table_models": table.models, "pool": pool,
                      "features": SPEC, **kw})


def test_env_rewards_are_the_core_reward(tiny):
    env = make_env(tiny, reward={"alpha": 0.0}, max_calls=2)
    ANSWER = SPEC["max_models"]
    obs, _ = env.reset(options={"index": 0})  # q1: Big 1, Mid 1, Small 0
    assert obs.shape == env.observation_space.shape == (FeatureSpec(**SPEC).obs_dim,)
    assert env.step(2)[1:3] == (0.0, False)  # call Small
    _, r, done, _, info = env.step(ANSWER)
    assert (r, done, info["outcome"], info["model"]) == (0.0, True, 0.0, "Small")
    env.reset(options={"index": 0})
    env.step(2)
    _, r, done, _, info = env.step(1)  # Small then Mid: max calls reached, the last reply answers
    assert (r, done, info["model"], info["calls"]) == (1.0, True, "Mid", 2)
    assert info["cost_usd"] == pytest.approx(0.0001 + 0.001)
    env.reset(options={"index": 0})
    assert env.step(3)[1:3] == (-1.0, True)  # slot 3: no such model, a format violation
    env.reset(options={"index": 1})
    assert env.step(ANSWER)[1] == 0.0  # answer with nothing called: outcome 0


def test_env_cost_term(tiny):
    env = make_env(tiny, reward={"alpha": 0.5, "normalizer": "reference", "reference_cost_usd": 0.04})
    env.reset(options={"index": 0})
    env.step(1)  # Mid on q1: correct, $0.001
    r = env.step(4)[1]
    assert r == pytest.approx(0.5 * 1 + 0.5 * (1 - 0.001 / 0.04))


def test_shuffled_slots_move_models(tiny):
    env = make_env(tiny, shuffle_slots=True, seed=3)
    seen = set()
    for _ in range(10):
        env.reset()
        seen.add(tuple(None if m is None else m.name for m in env.slots))
        assert sorted(m.name for m in env.slots if m) == ["Big", "Mid", "Small"]
    assert len(seen) > 1


def test_assign_slots_for_unseen_models(tiny, tmp_path):
    _, pool, _ = tiny
    spec = FeatureSpec(**SPEC)
    slots = assign_slots(pool, spec, ["Big", "Small"])  # Mid was held out of training
    assert [m and m.name for m in slots] == ["Big", "Small", "Mid", None]
    extra = "  - name: Tiny\n    price: 0.05\n    backend: {kind: replay}\n"
    swapped = load_pool(write_pool(tmp_path / "p2.yaml", [tmp_path / "x.csv"], extra)).subset(["Big", "Mid", "Tiny"])
    slots = assign_slots(swapped, spec, ["Big", "Mid", "Small"])  # Tiny replaces Small: its slot
    assert [m and m.name for m in slots] == ["Big", "Mid", "Tiny", None]
    with pytest.raises(ValueError, match="slots"):
        assign_slots(load_pool(write_pool(tmp_path / "p3.yaml", [], extra + extra.replace("Tiny", "T2"))),
                     FeatureSpec(question_dim=4, reply_dim=2, max_models=4), [])


def test_hash_ngrams_is_stable_and_normalised():
    a, b = hash_ngrams("Which planet is red?", 64), hash_ngrams("Which planet is red?", 64)
    assert np.array_equal(a, b) and abs(np.linalg.norm(a) - 1) < 1e-5
    assert not np.array_equal(a, hash_ngrams("Write a sorting function", 64))
    assert not hash_ngrams("", 64).any()


def test_train_load_route_and_evaluate(tiny, tmp_path, ray_local):
    from pipelines import train_rllib
    from pipelines.evaluate import pool_target, load_dataset, run_policy
    from router_r1.evaluation.report import aggregate, score_run
    from router_r1.rl_router.eval_policy import RLlibPolicy
    from router_r1.rl_router.router import RLlibRouter

    csv, pool, _ = tiny
    out = tmp_path / "router"
    args = train_rllib.build_parser().parse_args([
        "--pool", str(tmp_path / "pool.yaml"), "--data", str(csv), "--split", "all", "--iterations", "2",
        "--batch", "64", "--minibatch", "32", "--epochs", "1", "--hidden", "16", "--question-dim", "32",
        "--num-envs", "2", "--holdout", "Mid", "--out", str(out),
        "--mlflow-uri", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"])
    meta = train_rllib.train(args)
    assert len(meta["history"]) == 2 and meta["slots"] == ["Big", "Small"]
    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}").get_run(meta["mlflow_run_id"])
    assert run.data.params["alpha"] == "0.2" and "episode_return_mean" in run.data.metrics
    assert json.loads((out / "rllib_router.json").read_text())["algorithm"].startswith("PPO")

    router = RLlibRouter.load(out)
    assert router._mlp is not None  # numpy copy of the actor, checked against the module
    obs = np.random.default_rng(1).normal(size=router.spec.obs_dim).astype(np.float32)
    assert np.allclose(router.logits(obs), router._module_logits(obs), atol=1e-4)
    assert router.route("What is 2 + 2?") in {"Big", "Small"}  # Mid was never seen
    router.set_pool(pool)  # the full pool: Mid is an unseen model in a free slot
    assert router.route("What is 2 + 2?") in {"Big", "Mid", "Small"}

    _, items, table = load_dataset([csv], "all", 0.2, 0, None)
    policy = RLlibPolicy.load(out, pool)
    runs = asyncio.run(run_policy(policy, items, pool_target(pool, table, False, "rl"), True))
    s = aggregate([score_run(i, r, pool, table.models) for i, r in zip(items, runs)])
    assert s["n"] == 4 and 1 <= s["calls_per_q"] <= 2 and s["cost_usd"] > 0
    assert 0.0 <= s["accuracy"] <= 1.0


def test_load_rejects_a_non_router_folder(tmp_path):
    from router_r1.rl_router.router import RLlibRouter

    with pytest.raises(FileNotFoundError, match="not an RLlib router"):
        RLlibRouter.load(tmp_path)
