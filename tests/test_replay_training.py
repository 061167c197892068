"""Training an LLM router in the replay world (`data.kind: replay`): the same split as
`router-r1 evaluate`, question tails, warm-start traces, and a training step end to end whose
rewards follow the adoption rule. Uses a small RouterBench-format CSV built here (no shared data)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from router_r1.env.episode import Episode, Segment
from router_r1.env.prompt import PromptOptions, question_tail
from router_r1.env.protocol import FormatRules, information_block, validate
from router_r1.env.reward import ReferenceCostNormalizer, compute_reward
from router_r1.infra.config import load_config
from router_r1.pool.descriptors import load_pool
from router_r1.pool.types import CallResult
from router_r1.worlds.replay.tables import replay_outcome
from router_r1.worlds.replay.world import ReplayWorld, make_traces
from tests.routerbench_tiny import MODELS, ROWS, response, write_pool, write_routerbench

TINY = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 512}
# Ten questions over two tasks: ROWS of routerbench_tiny repeated with new ids (labels kept).
ROWS10 = [(f"{sid}.{k}", f"{q} (variant {k})", per) for k in range(3) for sid, q, per in ROWS][:10]
LABELS = {f"{sid}": {MODELS[m]: lab for m, (lab, _) in per.items()} for sid, _, per in ROWS10}


@pytest.fixture
def world_files(tmp_path) -> tuple[Path, Path]:
    csv = write_routerbench(tmp_path / "tiny_train.csv", ROWS10)
    return csv, write_pool(tmp_path / "pool.yaml", [csv])


def test_split_and_ids_match_router_r1_evaluate(world_files):
    from pipelines.evaluate import load_dataset

    csv, pool_file = world_files
    w = ReplayWorld.load([str(csv)], load_pool(pool_file), val_fraction=0.3, seed=0)
    for split, mine in (("train", w.train), ("val", w.val)):
        _, items, _ = load_dataset([csv], split, 0.3, 0, None)
        assert [it.uid for it in items] == [f"{s.eval_name}:{s.sample_id}" for s in mine]
    assert len(w.train) + len(w.val) == 10


def test_question_tail_keeps_the_end():
    q = "shot one. shot two. shot three. The real question? A) x B) y"
    assert question_tail(q, 5) == "... question? A) x B) y"
    assert question_tail(q, None) == q and question_tail("short one", 5) == "short one"


def test_traces_are_well_formed_and_adopt_the_called_reply(world_files):
    csv, pool_file = world_files
    pool = load_pool(pool_file)
    w = ReplayWorld.load([str(csv)], pool, val_fraction=0.3, seed=0)
    traces = make_traces(w, pool, 40, seed=1, options=PromptOptions(layout="compact", max_question_tokens=8))
    assert len(traces) == 40
    for e in traces:
        p = e.parsed(pool)
        assert p.format_ok, (e.response, p.violations)
        assert validate(e.response, pool, FormatRules(**{k: True for k in FormatRules.model_fields})) == []
        model = e.calls[0].model
        sid = w.sample_of(e).sample_id
        assert w.outcomes([e], pool) == [float(LABELS[sid][model])]
        assert len(e.prompt.split("Question:")[1].split()) <= 9  # '...' + the last 8 words
    # Task accuracy on the train split favours Big, but the mix keeps other models.
    assert {e.calls[0].model for e in traces} >= {"Big", "Mid"}


def _episode(sample_uid: str, answer: str, model: str, reply: str) -> Episode:
    e = Episode(uid=f"{sample_uid}#0", question="q", golden_answers=[], prompt="p",
                meta={"group": sample_uid})
    e.segments = [Segment(f"<think> t </think>\n<search> {model}: solve it </search>", "policy"),
                  Segment(information_block(reply), "information"),
                  Segment(f"<think> t </think>\n<answer> {answer} </answer>", "policy")]
    e.calls = [CallResult(model=model, text=reply, cost_usd=0.001, attempts=1)]
    return e


@pytest.mark.timeout(120)
def test_replay_training_step_end_to_end(world_files, tmp_path, ray_local):
    """Warm start + one GRPO step through the pool actor on the replay tables; every reward is
    the core reward of the adopted reply's label (not EM: the items have no gold answers)."""
    from pipelines.train import Hooks, Trainer

    csv, pool_file = world_files
    cfg = load_config(None, {
        "name": "replay_tiny", "seed": 0, "output_dir": str(tmp_path / "run"), "pool": str(pool_file),
        "pool_runtime": {"actor_name": f"pool_{uuid.uuid4().hex[:8]}", "ledger_dir": None, "cache": False,
                         "num_cpus": 0},
        "policy": {"prompt_layout": "compact", "max_question_tokens": 8, "tokenizer_vocab_size": 300, "tiny": TINY},
        "episode": {"max_turns": 1, "max_new_tokens": 40, "max_obs_tokens": 8},
        "rollout": {"num_actors": 1, "episodes_per_actor": 8, "num_cpus": 0},
        "learner": {"algorithm": "grpo", "group_size": 4, "lr": 1e-3, "num_cpus": 0, "micro_batch_size": 8},
        "warmstart": {"steps": 60, "lr": 1e-2, "batch_size": 8, "num_traces": 32},
        "reward": {"alpha": 0.2, "normalizer": "reference", "reference_cost_usd": 0.05},
        "data": {"kind": "replay", "train": [str(csv)], "val_fraction": 0.3, "val_size": 2},
        "train": {"steps": 1, "checkpoint_every": 0, "sample_every": 0},
        "mlflow": {"enabled": False}, "ray": {"num_cpus": 2},
    })
    seen: list = []

    class Recording(Hooks):
        def after_scores(self, trainer, episodes, scores, normalizer):  # training rewards and greedy validation
            seen.append((episodes, scores, normalizer))

    t = Trainer(cfg, progress=False, hooks=[Recording()])
    report = t.run()
    assert report["steps"] == 1 and (tmp_path / "run" / "policy" / "config.json").exists()
    spec = t.spec
    rcfg = cfg.reward
    n_calls = 0
    for episodes, scores, norm in seen:
        for e, s in zip(episodes, scores):
            p = e.parsed(spec)
            sample = t.world.sample_of(e)
            outcome = replay_outcome(p.answer, e.calls, sample, spec, t.world.table.models)[0] if p.format_ok else 0.0
            want = compute_reward(p.format_ok, outcome, e.cost_usd, norm.score(e.cost_usd), rcfg).reward
            assert s.reward.reward == pytest.approx(want) and s.em == outcome
            for c in e.calls:  # replayed calls answer the sample's own question at its recorded cost
                if c.ok:
                    n_calls += 1
                    assert c.text == response(next(k for k, v in MODELS.items() if v == c.model),
                                              sample.sample_id)
    assert n_calls > 0, "the warm-started router never routed; the replay path was not exercised"

    # The hook itself on hand-built episodes: naming the called model adopts its label (q t.1.0:
    # Mid right, Small wrong), reproducing a reply adopts it too, an unrelated answer scores 0.
    uid = "tiny:t.1.0"
    eps = [_episode(uid, "Mid", "Mid", response("m-mid", "t.1.0")),
           _episode(uid, "Small", "Small", response("m-small", "t.1.0")),
           _episode(uid, response("m-mid", "t.1.0"), "Mid", response("m-mid", "t.1.0")),
           _episode(uid, "Paris", "Mid", response("m-mid", "t.1.0"))]
    scores = t.score(eps, ReferenceCostNormalizer(0.05))
    assert [s.em for s in scores] == [1.0, 0.0, 1.0, 0.0]
    assert scores[0].reward.reward == pytest.approx(0.8 + 0.2 * (1 - 0.001 / 0.05))
    assert [s.reward.reward for s in scores[1:]] == [0.0, pytest.approx(scores[0].reward.reward), 0.0]
