"""Rollout workers: episodes through the pool, weight sync, and recovery of a killed actor."""
from __future__ import annotations

import uuid

import pytest

from router_r1.engines.model import build_tiny_policy, train_tokenizer
from router_r1.infra.config import load_config
from router_r1.worlds.base import make_world

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

TINY = {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 1024}


def _cfg(**over):
    base = {"pool": str(ROOT / "configs" / "pool_simulated.yaml"), "policy.prompt_layout": "compact",
            "policy.tiny": TINY, "pool_runtime.ledger_dir": None, "pool_runtime.cache": False,
            "pool_runtime.num_cpus": 0, "pool_runtime.actor_name": f"pool_{uuid.uuid4().hex[:8]}",
            "rollout.num_cpus": 0, "episode.max_turns": 2, "episode.max_new_tokens": 12,
            "data.sim": {"val_size": 4}}
    return load_config(None, {**base, **over})


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg()
    spec = cfg.load_pool()
    world = make_world(cfg, spec)
    corpus = [q.text for q in world.sim.world.all_questions("train")[:300]]
    tok = train_tokenizer(corpus, 400)
    val = world.questions("val")
    return cfg, spec, tok, val


class ScriptedEngine:
    """Routes on the first turn, answers on the second: exercises the pool path without a trained
    policy. Token in, token out like the real engines: it reads the context ids and "samples" the
    ids of its scripted text (with the overshoot " more" after the stop, which must be cut)."""

    max_context = 4096

    def __init__(self, model: str, tokenizer):
        self.model, self.tok = model, tokenizer

    def generate(self, contexts, **kw):  # the prompt's instructions mention </information> once
        from router_r1.env.generation import Generation

        out = []
        for ids in contexts:
            routed = self.tok.decode(ids).count("</information>") >= 2
            text = ("<think> done </think><answer> Kestrel </answer>" if routed else
                    f"<think> ask </think><search> {self.model}: What is the capital of Vorland? </search> more")
            new = self.tok.encode(text, add_special_tokens=False)
            out.append(Generation(new, [-0.5] * len(new), text))
        return out

    def load_buckets(self, buckets):
        pass


def test_worker_plays_episodes_through_the_pool_with_episode_ids(setup):
    from actors.rollout import RolloutWorker
    from router_r1.pool.core import PoolCore

    cfg, spec, tok, val = setup
    records = []
    core = PoolCore(spec, cfg.pool_runtime, "t", on_record=records.append)
    w = RolloutWorker(cfg, tok, core)
    w.engine = ScriptedEngine("Sim-Geo-Small", tok)
    w.set_weights([{}], version=7)
    eps = w.rollout(val[:2], n_samples=3, seed=1)
    assert [e.uid for e in eps] == [f"{val[i]['id']}#{k}" for i in range(2) for k in range(3)]
    assert all(e.policy_version == 7 and e.done and len(e.calls) == 1 and e.calls[0].ok for e in eps)
    assert eps[0].parsed(spec).answer == "Kestrel" and eps[0].parsed(spec).format_ok
    assert "more" not in eps[0].response  # cut at the token that completes </search>
    assert all(s.ids and len(s.logprobs) == len(s.ids) for e in eps for s in e.segments)
    assert sorted(r["episode_id"] for r in records if r["kind"] == "call") == sorted(e.uid for e in eps)


@pytest.mark.ray
def test_weight_sync_changes_what_the_actor_generates(setup, ray_local):
    import ray

    from actors.model_pool import get_or_create_pool
    from actors.rollout import make_rollout_actor

    cfg, spec, tok, val = setup
    pool = get_or_create_pool(cfg.pool, cfg.pool_runtime, "t")
    actor = make_rollout_actor().options(num_cpus=0).remote(cfg, tok, pool)
    a = ray.put(build_tiny_policy(TINY, tok, seed=1).state_dict())
    b = ray.put(build_tiny_policy(TINY, tok, seed=2).state_dict())

    def sample(refs, version):  # seeded sampling: only the weights differ between calls
        ray.get(actor.set_weights.remote(refs, version))
        eps = ray.get(actor.rollout.remote(val, 1, 11, False))
        assert {e.policy_version for e in eps} == {version}
        return [e.response for e in eps]

    out_a = sample([a], 1)
    out_b = sample([b], 2)
    assert out_a != out_b  # new weights, new text
    assert sample([a], 3) == out_a  # and the same weights give the same text again
    ray.kill(actor)
    ray.kill(pool)


@pytest.mark.ray
def test_group_recovers_a_killed_actor(setup, ray_local):
    """A killed actor is restarted by Ray with fresh weights; the group notices, re-sends the
    weights and re-issues its share, and every episode comes back from the current weights."""
    import ray

    from actors.model_pool import get_or_create_pool
    from actors.rollout import RolloutGroup, make_rollout_actor

    cfg, spec, tok, val = setup
    pool = get_or_create_pool(cfg.pool, cfg.pool_runtime, "t")

    def make(i):
        return make_rollout_actor().options(num_cpus=0, max_restarts=2, max_task_retries=0).remote(
            cfg, tok, pool, i)

    group = RolloutGroup(make, 2, max_restarts=2)
    group.sync([ray.put(build_tiny_policy(TINY, tok, seed=1).state_dict())], version=5)
    before = [e.response for e in group.rollout(val, 2, seed=3)]
    ray.kill(group.workers[0], no_restart=False)
    eps = group.rollout(val, 2, seed=3)
    assert group.restarts >= 1
    assert [e.uid for e in eps] == [f"{it['id']}#{k}" for it in val for k in range(2)]
    assert all(e.policy_version == 5 for e in eps)
    assert [e.response for e in eps] == before  # same weights, items and seed: same episodes
    group.kill()
    ray.kill(pool)


@pytest.mark.gpu
def test_vllm_engine_generates_and_loads_new_weights(setup, tmp_path):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs CUDA")
    from router_r1.engines.model import save_policy
    from router_r1.engines.vllm import VLLMGenerator

    cfg, spec, tok, val = setup
    save_policy(build_tiny_policy(TINY, tok, seed=1), tok, tmp_path / "p")
    gen = VLLMGenerator(tmp_path / "p", gpu_memory_utilization=0.2)
    prompts = [it["question"] for it in val]
    a = gen.generate(prompts, max_new_tokens=8, temperature=1.0, seed=5)
    gen.load_state_dict(build_tiny_policy(TINY, tok, seed=2).state_dict())
    assert gen.generate(prompts, max_new_tokens=8, temperature=1.0, seed=5) != a
