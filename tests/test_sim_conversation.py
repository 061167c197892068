"""The simulator's conversation items (issue 28, "the conversation is the input"): follow-ups whose
subject is named only in an earlier turn, rendered in training exactly as Serve renders a request."""
from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest

from router_r1.env.reward import RewardConfig
from router_r1.infra.config import load_config
from router_r1.pool.descriptors import load_pool
from router_r1.worlds.base import make_world
from router_r1.worlds.sim import Simulation, make_trace, make_traces
from router_r1.worlds.sim.knowledge import REFERENTS
from router_r1.worlds.sim.oracle import by_question_type, question_type
from router_r1.worlds.sim.traces import swap_subject

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "configs" / "pool_simulated.yaml"


@pytest.fixture(scope="module")
def sim():
    return Simulation.from_pool(load_pool(POOL))


def _cfg(**over):
    base = {"pool": str(POOL), "policy.prompt_layout": "compact", "pool_runtime.ledger_dir": None,
            "pool_runtime.cache": False, "pool_runtime.num_cpus": 0,
            "pool_runtime.actor_name": f"pool_{uuid.uuid4().hex[:8]}", "rollout.num_cpus": 0,
            "episode.max_turns": 2, "episode.max_new_tokens": 24, "warmstart.num_traces": 40,
            "data.sim": {"val_size": 10, "train_size": 20, "conversation_share": 0.3}}
    return load_config(None, {**base, **over})


def test_a_follow_up_names_its_subject_only_in_the_history(sim):
    w = sim.world
    fingerprint = w.fingerprint()
    chain = next(q for q in w.all_questions("val") if q.relations == ("founder_of", "born_in"))
    q = w.follow_up(chain)
    founder = w.entities[w.facts[("founder_of", chain.subject)]]
    company = w.entities[chain.subject].name
    assert q.history == ({"role": "user", "content": f"Who founded {company}?"},
                         {"role": "assistant", "content": founder.name})
    assert q.text == "Where was that person born?" and q.standalone == f"Where was {founder.name} born?"
    assert q.answer == chain.answer == w.entities[w.facts[("born_in", founder.id)]].name
    assert q.split == chain.split == "val" and w.question(q.id) == q and w.question(q.id).history == q.history
    assert question_type(q) == "follow-up" and question_type(chain) == "two-hop"
    for split in ("train", "val", "test"):
        for f in w.follow_ups(split):
            referent = f.history[-1]["content"]
            assert referent not in f.text and REFERENTS[w.entities[f.subject].kind] in f.text
            assert w.interpret(f.text) is None  # alone, the question names nothing a model can answer
            it = w.interpret(f.standalone)
            assert it.subject.name == referent and w.resolve(it.subject, it.relations).name == f.answer
    ids = [{f.id for f in w.follow_ups(s)} for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert w.fingerprint() == fingerprint  # made on demand: the world is unchanged


def test_without_the_history_no_model_can_answer_a_follow_up(sim):
    q = sim.world.follow_ups("val", 20)[0]
    assert all(sim.call(m, q.text).reply.stated is None for m in sim.names)  # "I don't know."
    assert any(sim.call(m, q.standalone).reply.stated is not None for m in sim.names)
    table = by_question_type(sim, sim.world.follow_ups("val", 30), RewardConfig())
    assert list(table) == ["follow-up"] and table["follow-up"]["n"] == 30
    assert table["follow-up"]["policies"]["oracle"]["em"] > 0.9  # the oracle reads the conversation


def test_a_follow_up_trace_copies_the_referent_out_of_the_history(sim):
    q = sim.world.follow_ups("train", 5, seed=3)[0]
    referent = q.history[-1]["content"]
    ep = make_trace(sim, q, "expert", layout="compact")
    assert ep.history == [dict(t) for t in q.history]
    assert f"Conversation so far:\nUser: {q.history[0]['content']}\nAssistant: {referent}\n\nQuestion: {q.text}\n" \
        in ep.prompt
    assert ep.routes[0][1] == q.standalone and referent in ep.segments[0].text
    swapped = swap_subject(ep, referent, sim.world.entities[q.subject].kind, sim, random.Random(0))
    new = swapped.history[-1]["content"]
    assert new != referent and swapped.routes[0][1] == q.standalone.replace(referent, new)
    assert referent not in swapped.response and swapped.history[0] == ep.history[0]


def test_conversation_share_mixes_follow_ups_into_every_split_and_the_traces():
    cfg = _cfg()
    world = make_world(cfg, cfg.load_pool().seen())
    train, val = world.questions("train"), world.questions("val")
    assert sum("history" in it for it in train) == 6 and sum("history" in it for it in val) == 3
    assert all(it["id"].startswith("sim-followup-") == ("history" in it) for it in train + val)
    traces = world.warmstart_traces(cfg.load_pool().seen(), None)
    follow = [t for t in traces if t.history]
    assert len(traces) == 40 and len(follow) == 12 and any(t.history for t in traces[:28])  # mixed in
    assert all("Conversation so far" in t.prompt or not t.prompt for t in follow)
    assert cfg.prompt_options().conversation and not cfg.policy.prompt_options().conversation
    plain = _cfg(**{"data.sim": {"val_size": 10, "train_size": 20}})
    assert not plain.prompt_options().conversation
    world0 = make_world(plain, plain.load_pool().seen())
    assert all(set(it) == {"id", "question", "golden_answers"} for it in world0.questions("train") + world0.questions("val"))
    assert not any(t.history for t in world0.warmstart_traces(plain.load_pool().seen(), None))


@pytest.fixture(scope="module")
def convo_checkpoint(bpe_checkpoint, tmp_path_factory):
    """The bpe_checkpoint re-saved as a router trained with conversation items would be."""
    from router_r1.engines.model import load_policy, save_policy

    model, tok = load_policy(bpe_checkpoint)
    cfg = _cfg()
    return save_policy(model, tok, tmp_path_factory.mktemp("convo") / "policy", prompt_options=cfg.prompt_options())


def test_training_renders_a_follow_up_exactly_as_serve_renders_its_messages(convo_checkpoint):
    """Rollouts, warm-start traces and `router-r1 evaluate` render a follow-up to the very ids Serve
    renders for [earlier turns..., user: follow-up]; the question alone renders the single prompt."""
    from actors.rollout import RolloutWorker
    from pipelines.evaluate import make_policy
    from router_r1.env.prompt import load_prompt_options
    from router_r1.evaluation.baselines import EvalItem
    from router_r1.serving.openai_api import parse_request
    from router_r1.serving.router import Router

    cfg = _cfg(**{"policy.checkpoint": str(convo_checkpoint)})
    assert load_prompt_options(convo_checkpoint).conversation
    world = make_world(cfg, cfg.load_pool().seen())
    worker = RolloutWorker(cfg)
    evaluate = make_policy(f"llm:{convo_checkpoint}", cfg.load_pool().seen(), cfg, [], 1)  # router-r1 evaluate
    router = Router.load(convo_checkpoint, pool=cfg.load_pool().seen(), config=cfg)
    try:
        fus = world.sim.world.follow_ups("val", 6)
        traces = worker.encode_traces(make_traces(world.sim, fus, layout="compact"))
        for q, trace_prompt in zip(fus, traces.prompt_ids):
            messages = [*q.history, {"role": "user", "content": q.text}]
            plan = router.service.plan(parse_request(json.dumps({"model": "router-r1", "messages": messages}).encode()),
                                       "t")
            assert plan.history == list(q.history)
            text, ids = worker.prompt_ids(q.text, q.history)
            assert (text, ids) == (plan.prompt, plan.prompt_ids) and trace_prompt == plan.prompt_ids
            assert evaluate.episode(EvalItem(q.id, q.text, [q.answer], history=list(q.history))).prompt_ids == ids
            assert "Conversation so far" in text
            alone = router.service.plan(parse_request(json.dumps(
                {"model": "router-r1", "messages": messages[-1:]}).encode()), "t")
            assert alone.prompt_ids == worker.prompt_ids(q.text)[1] != ids
    finally:
        router.close()


def test_a_follow_up_item_flows_through_an_episode():
    """A rollout of a follow-up item: the prompt holds the history, the (scripted) router copies the
    referent out of it into its sub-question, the simulated model answers, the outcome is scored."""
    from actors.rollout import RolloutWorker
    from router_r1.engines.model import train_tokenizer
    from router_r1.env.episode_metrics import score_episodes
    from router_r1.env.generation import Generation
    from router_r1.env.reward import ReferenceCostNormalizer, RewardConfig
    from router_r1.pool.core import PoolCore

    cfg = _cfg(**{"policy.tiny": {"architecture": "qwen2", "hidden_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
                                  "max_position_embeddings": 1024}})
    spec = cfg.load_pool().seen()
    world = make_world(cfg, spec)
    tok = train_tokenizer(world.tokenizer_corpus(spec, "compact")[:400], 600)
    item = next(it for it in world.questions("val") if "history" in it)
    q = world.sim.world.question(item["id"])

    class CopyingEngine:  # asks the strongest geography/people model about the name after "Assistant:"
        max_context = 4096

        def generate(self, contexts, **kw):
            out = []
            for ids in contexts:
                ctx = tok.decode(ids)
                if "<information>" in ctx.split("Question:")[-1]:
                    info = ctx.rsplit("<information>", 1)[1].split("</information>", 1)[0]
                    stated = world.sim.world.mentions(info)[-1].name  # the reply ends its statement with it
                    text = f"<think> done </think><answer> {stated} </answer>"
                else:
                    referent = ctx.split("Assistant: ", 1)[1].split("\n", 1)[0]
                    sub = q.standalone.replace(q.history[-1]["content"], referent)
                    text = f"<think> ask </think><search> Sim-General-Large: {sub} </search>"
                new = tok.encode(text, add_special_tokens=False)
                out.append(Generation(new, [-0.5] * len(new), text))
            return out

    worker = RolloutWorker(cfg, tok, PoolCore(spec, cfg.pool_runtime, "t"))
    worker.engine = CopyingEngine()
    (ep,) = worker.rollout([item], n_samples=1, seed=0)
    assert ep.history == item["history"] and "Conversation so far" in tok.decode(ep.prompt_ids)
    assert ep.routes == [("Sim-General-Large", q.standalone)] and ep.calls[0].ok
    stated = world.sim.call("Sim-General-Large", q.standalone).reply.stated
    parsed = ep.parsed(spec)
    assert parsed.format_ok and parsed.answer == stated.name
    (score,) = score_episodes([ep], spec, RewardConfig(alpha=0.0), ReferenceCostNormalizer(1e-5))
    assert score.em == float(stated.name == q.answer) == score.reward.reward  # alpha 0: the reward is the EM


def test_evaluate_reports_follow_ups_as_a_dataset_of_their_own():
    from pipelines.evaluate import load_world_datasets

    cfg = _cfg()
    (single, follow) = load_world_datasets(cfg, cfg.load_pool(), "val", None)
    assert (single.name, follow.name) == ("simulated[val]", "simulated[val]:follow-ups")
    assert len(single.items) == 7 and len(follow.items) == 3
    assert not any(it.history for it in single.items) and all(len(it.history) == 2 for it in follow.items)
    plain = _cfg(**{"data.sim": {"val_size": 10, "train_size": 20}})
    assert [d.name for d in load_world_datasets(plain, plain.load_pool(), "val", None)] == ["simulated[val]"]
