"""The RLlib router reading descriptors: description terms (by hand), the slot-scoring module
(permutation-equivariant, empty slots masked), catalog pools in the environment (replies and
costs by hand), and a short training run with both that loads and routes by descriptor."""
from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from routerbench_tiny import write_pool, write_routerbench
from router_r1.pool.descriptors import Backend, ModelDescriptor, PoolSpec, load_pool
from router_r1.rl_router.env import RouterEnv
from router_r1.pool.description_words import description_terms
from router_r1.rl_router.features import (DESC_FEATURES, FeatureSpec, description_vector,
                                          pool_features)
from router_r1.worlds.replay.tables import ReplayTable

SPEC = {"question_dim": 16, "reply_dim": 4, "max_models": 4, "desc_dim": 8}


def test_description_terms_carry_their_qualifier():
    assert description_terms("Strong on geography and sports; weak on people, science and arts.") == [
        "strong:geography", "strong:sports", "weak:people", "weak:science", "weak:arts"]
    # a qualifier holds to the next one or the end of the sentence; words before any stand alone
    assert description_terms("Cheap chat model, good at code and multiple choice, weaker on hard commonsense. "
                             "Fast.") == ["cheap", "chat", "model", "good:code", "good:multiple", "good:choice",
                                          "weaker:hard", "weaker:commonsense", "fast"]
    assert description_terms("") == []


def test_description_vector_and_slot_layout():
    a = description_vector("Strong on geography.", 8)
    assert abs(np.linalg.norm(a) - 1) < 1e-6 and np.count_nonzero(a) == 1  # one term
    assert not np.array_equal(a, description_vector("Weak on geography.", 8))  # the qualifier matters
    assert not description_vector("", 8).any() and description_vector("Strong on x.", 0).shape == (0,)
    m = ModelDescriptor(name="A", price=1.0, params_b=7, description="Strong on geography.")
    block, valid = pool_features([None, m], desc_dim=8)
    rows = block.reshape(2, DESC_FEATURES + 8)
    assert valid.tolist() == [0.0, 1.0] and not rows[0].any()
    assert rows[1, 0] == pytest.approx(np.log1p(1.0)) and np.array_equal(rows[1, DESC_FEATURES:], a)
    assert FeatureSpec(**SPEC).obs_dim == 16 + 4 + 1 + 4 + 1 + 4 * (DESC_FEATURES + 8) + 4
    assert FeatureSpec(question_dim=16, reply_dim=4, max_models=4).obs_dim == 16 + 4 + 1 + 4 + 1 + 4 * 5 + 4


def _module():
    from router_r1.rl_router.slot_module import SlotRouterModule

    spec = FeatureSpec(**SPEC)
    return spec, SlotRouterModule(observation_space=gym.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float32),
                                  action_space=gym.spaces.Discrete(spec.max_models + 1),
                                  model_config={"features": spec.to_dict(), "hidden": 8})


def _obs(spec, slots, called, valid, rng):
    """The environment's own observation (features.observation) for these slots."""
    from router_r1.rl_router.features import observation

    return observation(spec, rng.normal(size=spec.question_dim).astype(np.float32), "a reply", called.astype(np.float32),
                       1, 2, (slots.reshape(-1).astype(np.float32), valid.astype(np.float32)))


def test_slot_module_scores_each_slot_alike_and_masks_empty_ones():
    import torch

    from router_r1.rl_router.slot_module import INVALID_LOGIT, split_observation

    spec, module = _module()
    rng = np.random.default_rng(0)
    slots = rng.normal(size=(4, spec.slot_dim))
    slots[3] = 0.0
    called, valid = np.array([1.0, 0, 0, 0]), np.array([1.0, 1, 1, 0])
    obs = _obs(spec, slots, called, valid, rng)
    parts = split_observation(torch.from_numpy(obs), spec)
    assert np.array_equal(parts["slots"].numpy(), slots.astype(np.float32))
    assert parts["called"].tolist() == called.tolist() and parts["valid"].tolist() == valid.tolist()
    assert parts["step"].item() == pytest.approx(0.5)
    perm = [2, 0, 1, 3]  # the same models, moved to other slots
    moved = obs.copy()
    start = spec.question_dim + spec.reply_dim + 1
    moved[start:start + 4] = called[perm]
    s0 = start + 5
    moved[s0:s0 + 4 * spec.slot_dim] = slots[perm].reshape(-1)
    moved[-4:] = valid[perm]
    with torch.no_grad():
        out = module.forward_inference({"obs": torch.from_numpy(np.stack([obs, moved]))})["action_dist_inputs"].numpy()
    assert np.allclose(out[1, :4], out[0, perm], atol=1e-5)  # a model's logit moves with it
    assert out[0, 4] == pytest.approx(out[1, 4], abs=1e-5)  # the answer action does not care where
    assert out[0, 3] == INVALID_LOGIT and len(set(np.round(out[0, :3], 5))) == 3
    with torch.no_grad():
        v = module.compute_values({"obs": torch.from_numpy(np.stack([obs, moved]))})
    assert v.shape == (2,) and v[0].item() == pytest.approx(v[1].item(), abs=1e-5)
    with pytest.raises(ValueError, match="spec says"):
        split_observation(torch.zeros(1, spec.obs_dim + 1), spec)


@pytest.fixture
def tiny(tmp_path):
    csv = write_routerbench(tmp_path / "tiny.csv")
    return csv, load_pool(write_pool(tmp_path / "pool.yaml", [csv])), ReplayTable.from_files([csv])


def _catalog(*pairs):
    """Catalog models answered by the tiny table's columns: (name, column, price, description)."""
    return PoolSpec(name="catalog", models=[
        ModelDescriptor(name=n, price=p, description=d, backend=Backend(kind="replay", replay_column=c))
        for n, c, p, d in pairs])


CATALOG = _catalog(("Cat-A", "m-big", 5.0, "Strong on everything."), ("Cat-B", "m-small", 0.1, "Weak."),
                   ("Cat-C", "m-mid", 1.0, "Fair."))
# for training without Mid: no catalog model answers with Mid's column
CATALOG_NO_MID = _catalog(("Cat-A", "m-big", 5.0, "Strong on everything."), ("Cat-B", "m-small", 0.1, "Weak."),
                          ("Cat-D", "m-big", 2.0, "Fair."))


def test_catalog_pools_in_the_env(tiny):
    _, pool, table = tiny
    env = RouterEnv({"samples": table.samples, "table_models": table.models, "pool": pool, "features": SPEC,
                     "catalog": CATALOG, "catalog_share": 1.0, "catalog_sizes": (2, 3), "seed": 1,
                     "reward": {"alpha": 0.0}})
    sizes = set()
    for _ in range(30):
        env.reset()
        names = [m.name for m in env.slots if m]
        sizes.add(len(names))
        assert set(names) <= {"Cat-A", "Cat-B", "Cat-C"} and env.pool_block[1].sum() == len(names)
    assert sizes == {2, 3}
    # Cat-A answers as Big (q1: right, $0.01 recorded)
    env.reset(options={"index": 0})
    while "Cat-A" not in [m and m.name for m in env.slots]:
        env.reset(options={"index": 0})
    slot = [m and m.name for m in env.slots].index("Cat-A")
    env.step(slot)
    _, r, done, _, info = env.step(SPEC["max_models"])
    assert (r, done, info["model"], info["outcome"]) == (1.0, True, "Cat-A", 1.0)
    assert info["cost_usd"] == pytest.approx(0.01)
    plain = RouterEnv({"samples": table.samples, "table_models": table.models, "pool": pool, "features": SPEC,
                       "catalog": CATALOG, "catalog_share": 0.0})
    plain.reset()
    assert [m and m.name for m in plain.slots] == ["Big", "Mid", "Small", None]
    # half and half, no shuffling: back from a catalog episode, the pool is in its own slots again
    mixed = RouterEnv({"samples": table.samples, "table_models": table.models, "pool": pool, "features": SPEC,
                       "catalog": CATALOG, "catalog_share": 0.5, "catalog_sizes": (2, 3), "seed": 2})
    kinds = set()
    for _ in range(30):
        mixed.reset()
        names = [m and m.name for m in mixed.slots]
        if "Big" in names:
            assert names == ["Big", "Mid", "Small", None] and mixed.pool_block[1].tolist() == [1, 1, 1, 0]
            kinds.add("pool")
        else:
            kinds.add("catalog")
    assert kinds == {"pool", "catalog"}


def test_catalog_errors(tiny):
    _, pool, table = tiny
    base = {"samples": table.samples, "table_models": table.models, "pool": pool, "features": SPEC}
    with pytest.raises(ValueError, match="also in the pool"):
        RouterEnv({**base, "catalog": _catalog(("Big", "m-big", 1.0, ""), ("Cat-B", "m-small", 1.0, ""))})
    with pytest.raises(ValueError, match="without replay columns"):
        RouterEnv({**base, "catalog": _catalog(("Cat-X", "m-nope", 1.0, ""), ("Cat-B", "m-small", 1.0, ""))})
    with pytest.raises(ValueError, match="catalog_sizes"):
        RouterEnv({**base, "catalog": CATALOG, "catalog_sizes": (2, 4)})
    # a held-out model's answers must not come back under another name
    with pytest.raises(ValueError, match="held-out model's column: \\['Cat-C'\\]"):
        RouterEnv({**base, "holdout": ["Mid"], "catalog": CATALOG})
    RouterEnv({**base, "holdout": ["Mid"], "catalog_sizes": (2, 2),
               "catalog": _catalog(("Cat-A", "m-big", 5.0, ""), ("Cat-B", "m-small", 0.1, ""))})


def test_train_slots_with_a_catalog_then_route_by_descriptor(tiny, tmp_path, ray_local):
    import yaml

    from pipelines import train_rllib
    from router_r1.rl_router.router import RLlibRouter

    csv, pool, _ = tiny
    cat = tmp_path / "catalog.yaml"
    cat.write_text(yaml.safe_dump(CATALOG_NO_MID.model_dump(mode="json", exclude={"source_dir"}), sort_keys=False))
    out = tmp_path / "router"
    args = train_rllib.build_parser().parse_args([
        "--pool", str(tmp_path / "pool.yaml"), "--data", str(csv), "--split", "all", "--iterations", "2",
        "--batch", "64", "--minibatch", "32", "--epochs", "1", "--hidden", "8", "--question-dim", "16",
        "--num-envs", "2", "--holdout", "Mid", "--shuffle-slots", "--arch", "slots", "--desc-dim", "8",
        "--catalog", str(cat), "--catalog-share", "0.5", "--catalog-sizes", "2,3", "--out", str(out), "--no-mlflow"])
    meta = train_rllib.train(args)
    assert meta["arch"] == "slots" and meta["features"]["desc_dim"] == 8 and meta["catalog_share"] == 0.5
    router = RLlibRouter.load(out)
    assert router._mlp is None  # not the default MLP: decisions go through the module
    assert router.route("What is 2 + 2?") in {"Big", "Small"}
    router.set_pool(CATALOG)  # a pool of other models: still a model of it
    assert router.route("What is 2 + 2?") in {"Cat-A", "Cat-B", "Cat-C"}  # Cat-C: never seen
    with pytest.raises(SystemExit):
        train_rllib.build_parser().parse_args(["--data", "x", "--arch", "cnn"])


@pytest.mark.parametrize("args, message", [(["--catalog-sizes", "2"], "--catalog-sizes must be min,max"),
                                           (["--desc-dim", "-1"], "--desc-dim must be >= 0"),
                                           (["--catalog-share", "1.5"], "--catalog-share must lie in [0, 1]")])
def test_train_rllib_bad_options_are_one_line(tiny, tmp_path, capsys, args, message):
    from pipelines import train_rllib

    csv, _, _ = tiny
    rc = train_rllib.main(["--pool", str(tmp_path / "pool.yaml"), "--data", str(csv), "--no-mlflow",
                           "--out", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0] and not (tmp_path / "r").exists()


def test_train_rllib_takes_a_config_or_files_and_needs_recorded_answers(tiny, tmp_path, capsys):
    """`--config`: the world of its data: section (here the simulator, which records no answers:
    one line); `--data` and `--config` together, or neither, is one line too."""
    from pipelines import train_rllib

    csv, _, _ = tiny
    sim = tmp_path / "sim.yaml"
    sim.write_text(f"pool: {Path(__file__).resolve().parents[1] / 'configs' / 'pool_simulated.yaml'}\n"
                   "data: {sim: {train_size: 4, val_size: 2}}\n")
    for args, message in ((["--config", str(sim)], "the SimulatedWorld world records no answers"),
                          (["--config", str(sim), "--data", str(csv)], "either as --config"),
                          ([], "either as --config")):
        rc = train_rllib.main([*args, "--no-mlflow", "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_unseen_rllib_only_end_to_end(tmp_path, monkeypatch, ray_local, capsys):
    """`router-r1 unseen --rllib-only` at toy size: the catalog never uses the pool file's names,
    its models answer the training table, and the report carries the RLlib router's rows, shares
    and descriptor-reading figure (2 PPO iterations: wiring, not learning)."""
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    from experiments import unseen

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(unseen, "RLLIB_TRAIN_QUESTIONS", 150)
    monkeypatch.setattr(unseen, "RLLIB_CATALOG_SIZE", 10)
    out = tmp_path / "u"
    args = ["--config", str(root / "configs" / "unseen_sim.yaml"), "--out", str(out), "--rllib-only",
            "--set", "data.sim.val_size=24"]
    assert unseen.main(args) == 2 and "needs --rllib-iterations" in capsys.readouterr().err
    for bad, message in ((["--rllib-desc-dim", "-2"], "--rllib-desc-dim must be >= 0"),
                         (["--rllib-catalog-share", "2"], "--rllib-catalog-share must lie in [0, 1]")):
        assert unseen.main([*args, "--rllib-iterations", "2", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not out.exists()  # refused before anything was trained or written
    assert unseen.main([*args, "--rllib-iterations", "2"]) == 0
    res = json.loads((out / "unseen.json").read_text())
    rl = res["rllib"]
    assert res["pools"] == {} and res["n_questions"] == rl["n_questions"] == 24
    assert (rl["arch"], rl["desc_dim"], rl["catalog_models"], rl["catalog_share"]) == ("slots", 64, 10, 0.75)
    assert rl["route_choice"]["n"] == 24 and set(rl["pools"]) == {"training pool", "whole pool"}
    assert "Sim-Geo-Small" in rl["pools"]["whole pool"]["shares"]
    refs = rl["pools"]["whole pool"]["references"]
    assert "one-call oracle" in refs and any(k.startswith("best single model (") for k in refs)
    assert refs["one-call oracle"]["outcome/em"] >= max(r["outcome/em"] for r in refs.values())
    catalog = load_pool(out / "rllib" / "catalog_replay.yaml")
    pool_names = {m.name.casefold() for m in load_pool(root / "configs" / "pool_simulated_unseen.yaml").models}
    assert len(catalog.models) == 10 and not pool_names & {m.name.casefold() for m in catalog.models}
    models = set(pq.read_table(out / "rllib" / "train.parquet").column("model").to_pylist())
    assert {m.name for m in catalog.models} < models and "Sim-Geo-Small" in models  # (left out by --holdout)
    table = (out / "table.md").read_text()
    assert "Does the RLlib router read descriptions?" in table and "| one-call oracle, whole pool" in table and "network `slots`" in table
    assert "| router, " not in table  # the LLM router was neither trained nor played
    assert all(m.params_b is not None for m in catalog.models)  # sized like the pool file's models
    # asking for other RLlib options retrains instead of reporting the old router under them
    assert unseen.main([*args, "--rllib-iterations", "3"]) == 0
    assert json.loads((out / "unseen.json").read_text())["rllib"]["iterations"] == 3
