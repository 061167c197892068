"""The World protocol without Ray: `data.kind` picks a built-in world, a custom world is one class
plus a config entry, the trainer is composed from its pieces, and old checkpoints are pruned."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router_r1.env.episode import Episode, Segment
from router_r1.infra import checkpoint
from router_r1.infra.config import load_config
from router_r1.pool.types import CallResult
from router_r1.worlds.base import World, make_world, world_class
from router_r1.worlds.qa import QAWorld
from router_r1.worlds.replay.world import ReplayWorld
from router_r1.worlds.sim.world import SimulatedWorld

ROOT = Path(__file__).resolve().parents[1]
POOL = str(ROOT / "configs" / "pool_simulated.yaml")
CUSTOM = "tests.test_worlds:CapitalsWorld"


class CapitalsWorld(World):
    """A user's own world: its questions, and an outcome rule of its own (any answer naming the
    capital's country counts)."""

    def __init__(self, n_train: int = 4, bonus_word: str = "land"):
        qs = [{"id": f"c{i}", "question": f"What is the capital of Vor{i}land?",
               "golden_answers": [f"Vorcity{i}"]} for i in range(n_train + 2)]
        self.train, self.val, self.bonus_word = qs[:n_train], qs[n_train:], bonus_word

    def questions(self, split):
        return self.train if split == "train" else self.val

    def outcomes(self, episodes, pool):
        return [float(self.bonus_word in e.response) for e in episodes]


def _cfg(**data):
    return load_config(None, {"pool": POOL, "mlflow.enabled": False, "data": data})


def test_data_kind_picks_the_built_in_world():
    assert world_class(_cfg().data) is SimulatedWorld
    assert world_class(_cfg(kind="qa", train=["x.jsonl"]).data) is QAWorld
    assert world_class(_cfg(kind="replay", train=["x.csv"]).data) is ReplayWorld
    cfg = _cfg(sim={"val_size": 3, "train_size": 5})
    w = make_world(cfg, cfg.load_pool().seen())
    assert len(w.questions("train")) == 5 and len(w.questions("val")) == 3
    assert w.reference(w.questions("val"), cfg.reward)["oracle"] > 0


def test_custom_world_is_one_class_and_a_config_entry():
    cfg = _cfg(kind="custom", world=CUSTOM, options={"n_train": 3})
    world = make_world(cfg, cfg.load_pool().seen())
    assert type(world).__name__ == "CapitalsWorld" and len(world.questions("train")) == 3  # (imported by path)
    pool = cfg.load_pool().seen()
    corpus = world.tokenizer_corpus(pool, layout="compact")  # the defaults of World
    assert len(corpus) == 5 and corpus[0].endswith("Vorcity0")
    assert world.warmstart_traces(pool, None) == [] and world.reference([], cfg.reward) is None


@pytest.mark.parametrize("data, msg", [
    ({"kind": "custom"}, "data.world"),
    ({"kind": "simulated", "world": CUSTOM}, "data.world"),
    ({"kind": "qa", "options": {"a": 1}}, "data.options"),
    ({"sim": {"val_sise": 3}}, "val_sise"),
])
def test_bad_data_sections_are_refused(data, msg):
    with pytest.raises(ValueError, match=msg):
        _cfg(**data)


def test_policy_tiny_is_typed():
    with pytest.raises(ValueError, match="hidden_sise"):
        load_config(None, {"policy.tiny": {"hidden_sise": 8}})
    assert load_config(None, {"policy.tiny": {"hidden_size": 8}}).policy.tiny.num_hidden_layers == 2


def test_unimportable_world_is_one_line():
    cfg = _cfg(kind="custom", world="no_such_pkg.mod:W")
    with pytest.raises(ValueError, match="cannot be imported"):
        make_world(cfg, cfg.load_pool())


def test_trainer_takes_its_world_and_reward_function():
    from pipelines.train import Trainer

    cfg = load_config(None, {"pool": POOL, "mlflow.enabled": False, "output_dir": "/nonexistent/run"})
    world = CapitalsWorld(n_train=2)
    t = Trainer(cfg, progress=False, world=world, reward_fn=lambda eps, scores: scores[::-1])
    assert t.world is world and t.stream.items == world.train and t.val_items == world.val
    e = Episode(uid="c0#0", question="q", golden_answers=["Vorcity0"], prompt="p",
                segments=[Segment("<think> t </think>\n<answer> Vorland </answer>", "policy")])
    scores = t.score([e], t.normalizer)
    assert scores[0].em == 1.0  # the world's outcome rule, not EM against the gold answer


def test_replay_routes_calls_to_the_samples_own_question():
    asked = []

    async def call(model, query, episode_id=""):
        asked.append(query)
        return CallResult(model=model, text="r")

    e = Episode(uid="t:1#0", question="the full question", golden_answers=[], prompt="p")
    routed = ReplayWorld.route_calls(call, [e])  # per class: no tables loaded
    asyncio.run(routed("M", "a sub-question", episode_id="t:1#0"))
    assert asked == ["the full question"]
    assert World.route_calls(call, [e]) is call


class _Learner:
    def save_checkpoint(self, path, extra):
        checkpoint.save(path, {"model": {}}, step=extra["step"], meta={"extra": extra})


def test_keep_checkpoints_prunes_older_ones(tmp_path):
    from pipelines.train import Trainer

    cfg = load_config(None, {"pool": POOL, "mlflow.enabled": False, "output_dir": str(tmp_path / "run"),
                             "train.keep_checkpoints": 2, "data.sim": {"val_size": 2}})
    t = Trainer(cfg, progress=False)
    t.learner = _Learner()
    for step in range(1, 5):
        t.step = step
        t.save_checkpoint()
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["step_00000003", "step_00000004"]
    assert checkpoint.latest(tmp_path / "run").name == "step_00000004"


def test_split_seed_holds_the_validation_questions_fixed_across_run_seeds(tmp_path):
    """A qa/replay run's validation split follows `data.split_seed` when set, else `seed`: a second
    run under another seed can be compared on the same held-out questions."""
    import json

    rows = tmp_path / "qa.jsonl"
    rows.write_text("".join(json.dumps({"id": str(i), "question": f"q{i}?", "golden_answers": [f"a{i}"]}) + "\n"
                            for i in range(40)))

    def val_ids(seed, split_seed=None):
        cfg = load_config(None, {"pool": POOL, "mlflow.enabled": False, "seed": seed,
                                 "data": {"kind": "qa", "train": [str(rows)], "val_fraction": 0.25,
                                          "split_seed": split_seed}})
        assert cfg.split_seed == (seed if split_seed is None else split_seed)
        return [q["id"] for q in make_world(cfg, cfg.load_pool()).questions("val")]

    assert len(val_ids(0)) == 10 and val_ids(0) != val_ids(1)
    assert val_ids(1, split_seed=0) == val_ids(0) and val_ids(0, split_seed=1) == val_ids(1)


def test_split_seed_holds_the_simulated_questions_fixed_across_run_seeds():
    """The simulator draws its train / val / held-out-entity questions with the split seed too."""
    def splits(seed, split_seed=None):
        cfg = load_config(ROOT / "configs" / "unseen_sim.yaml", {"seed": seed, "data.split_seed": split_seed,
                                                                  "data.sim.val_size": 24, "data.sim.train_size": 50})
        w = make_world(cfg, cfg.load_pool().seen())
        return [[q["id"] for q in w.questions(s)] for s in ("train", "val")] + [[q["id"] for q in w.heldout]]

    assert splits(0) != splits(1)
    assert splits(1, split_seed=0) == splits(0) and splits(0, split_seed=1) == splits(1)


RECORDED = "recorded_world_tiny:TinyRecordedWorld"


def _recorded_cfg(tmp_path, **data):
    from recorded_world_tiny import write_pool  # tests/ is on the path, as a user's package would be

    pool = write_pool(tmp_path / "pool.yaml")
    return load_config(None, {"pool": str(pool), "mlflow.enabled": False,
                              "data": {"kind": "custom", "world": RECORDED, "val_fraction": 0.3, **data}})


def test_a_world_of_recorded_answers_is_one_class(tmp_path):
    """Issue 27: a user's routing data set (recorded answers, graded scores, costs) is one class
    given in the config; its questions split like the replay world's, its answers serve the pool."""
    from router_r1.worlds.base import recorded_samples

    cfg = _recorded_cfg(tmp_path, options={"n": 6})
    pool = cfg.load_pool().seen()
    w = make_world(cfg, pool)
    train, val = w.questions("train"), w.questions("val")
    assert len(train) + len(val) == 12 and not {q["id"] for q in train} & {q["id"] for q in val}
    table, samples = recorded_samples(w, "val")
    assert table is w.recorded() and [s.prompt for s in samples] == [q["question"] for q in val]
    assert len(recorded_samples(w, "all")[1]) == 12
    # The outcome: the graded score of the adopted reply (Mid half right on `triple` questions).
    q = next(q for q in train + val if q["id"].startswith("triple:"))
    mid = table.lookup(q["question"]).answers["mid-1"]
    e = Episode(uid=q["id"] + "#0", question=q["question"], golden_answers=[], prompt="p",
                segments=[Segment("<think> t </think>\n<answer> Mid </answer>", "policy")],
                calls=[CallResult(model="Mid", text=mid.response, cost_usd=0.001)])
    assert mid.correct == 0.5 and w.outcomes([e], pool) == [0.5]
    assert w.warmstart_traces(pool, None) and w.tokenizer_corpus(pool, "compact")
    with pytest.raises(ValueError, match="records no answers"):
        recorded_samples(CapitalsWorld(), "val")


def test_world_backend_answers_from_the_worlds_recorded_answers(tmp_path):
    from router_r1.pool.core import PoolCore
    from router_r1.pool.cost import call_cost
    from router_r1.pool.runtime import PoolRuntimeConfig
    from router_r1.worlds.backend import WorldBackend

    cfg = _recorded_cfg(tmp_path, options={"n": 4})
    pool = cfg.load_pool()
    world = make_world(cfg, pool.seen())
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=None, cache=False),
                    backends={"world": WorldBackend(pool, recorded=world.recorded())})
    calls = {m: core.call(m, "What is 3 + 3?") for m in ("Big", "Small")}

    async def go():
        return {m: await c for m, c in calls.items()} | {"miss": await core.call("Big", "What is 99 + 1?")}

    got = asyncio.run(go())
    assert got["Big"].ok and got["Big"].text == "6" and got["Big"].cost_usd == pytest.approx(0.01)
    # Small records token counts and no cost: priced from its descriptor.
    assert got["Small"].text == "about 7" and got["Small"].cost_usd == pytest.approx(call_cost(pool["Small"], 20, 5))
    assert not got["miss"].ok and "not in the world's recorded answers" in got["miss"].error
    # Built from the pool file alone (serve): the run config names the world.
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"pool: pool.yaml\ndata: {{kind: custom, world: '{RECORDED}', options: {{n: 4}}}}\n")
    assert WorldBackend(pool, config="run.yaml").table.lookup("What is 3 + 3?") is not None
    with pytest.raises(ValueError, match="no recorded answers"):
        WorldBackend(pool)


def test_trainer_hands_the_world_backend_its_worlds_answers(tmp_path):
    from pipelines.train import Trainer, world_backends
    from router_r1.worlds.backend import WorldBackend

    cfg = _recorded_cfg(tmp_path, options={"n": 4})
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path / "run")})
    t = Trainer(cfg, progress=False)
    assert isinstance(t.backends["world"], WorldBackend) and t.backends["world"].table is t.world.recorded()
    with pytest.raises(ValueError, match="CapitalsWorld world records none"):
        world_backends(t.spec, CapitalsWorld())
    assert world_backends(load_config(None, {"pool": POOL}).load_pool(), CapitalsWorld()) is None
