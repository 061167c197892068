"""Warm-start traces: exact protocol, same segments as the episode machine, answers copied."""
from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from router_r1.env.answer_metrics import exact_match
from router_r1.env.episode import Episode, EpisodeConfig, run_episodes, tokenize_trace
from router_r1.env.protocol import FormatRules, information_block, parse, validate
from router_r1.env.reward import RewardConfig
from router_r1.pool.backends import make_backend
from router_r1.pool.cost import call_cost
from router_r1.pool.descriptors import load_pool
from router_r1.pool.types import CallResult
from router_r1.worlds.sim import Simulation
from router_r1.worlds.sim.oracle import oracle_plan
from router_r1.worlds.sim.traces import make_trace, make_traces, tokenizer_corpus

ROOT = Path(__file__).resolve().parents[1]
ALL_STRICT = FormatRules(**{k: True for k in FormatRules.model_fields})


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return Simulation.from_pool(load_pool(ROOT / "configs" / "pool_simulated.yaml"))


@pytest.mark.parametrize("policy", ["oracle", "expert", "random", "generalist"])
@pytest.mark.parametrize("layout", ["full", "compact"])
def test_traces_are_well_formed_and_copy_the_last_reply(sim, policy, layout):
    rng = random.Random(0)
    for q in sim.world.questions("train", 80):
        e = make_trace(sim, q, policy, rng, layout=layout)
        assert validate(e.response, sim.pool) == [], e.response
        assert validate(e.response, sim.pool, ALL_STRICT) == [], e.response  # every option too
        p = parse(e.response, sim.pool)
        last = sim.call(e.routes[-1][0], e.routes[-1][1]).reply
        assert p.answer == (last.stated.name if last.stated else "unknown")
        assert e.meta["em"] == exact_match(p.answer, q.golden_answers)
        # The answer matches gold when every model the answer rests on knew: the last reply, and
        # for a decomposed question the last reply to the first hop.
        hop1 = [sim.call(m, x).reply for m, x in e.routes if x == q.subquestions[0] and q.two_hop]
        knew = bool(last.correct) and (not hop1 or bool(hop1[-1].correct))
        if knew:
            assert e.meta["em"] == 1.0
        if not hop1:  # one question, asked directly: right exactly when the model knew
            assert e.meta["em"] == float(bool(last.correct))
        assert [r.model for r in p.routes] == [m for m, _ in e.routes] == [c.model for c in e.calls]
        assert e.prompt.endswith(f"Question: {q.text}\n")


def test_oracle_traces_reach_gold_whenever_the_oracle_can(sim):
    cfg = RewardConfig(alpha=0.5)
    for q in sim.world.questions("val", 80):
        e = make_trace(sim, q, "oracle", reward_cfg=cfg)
        assert e.meta["em"] == oracle_plan(sim, q, cfg).outcome
        assert len(e.calls) <= 2


def test_two_hop_traces_decompose(sim):
    rng = random.Random(1)
    q = next(q for q in sim.world.questions("train", 50) if q.two_hop)
    e = make_trace(sim, q, "expert", rng)
    assert [query for _, query in e.routes][0] == q.subquestions[0]
    hop1 = sim.call(e.routes[0][0], e.routes[0][1]).reply.stated.name
    assert f" is {hop1}. Now I need " in e.response


def test_segments_have_origins_and_mask(sim):
    e = make_trace(sim, sim.world.questions("train", 1)[0], "random", random.Random(2))
    origins = [s.origin for s in e.segments]
    assert origins == ["policy", "information"] * len(e.calls) + ["policy"]
    for seg, call in zip(e.segments[1::2], e.calls):
        assert seg.text == information_block(call.text)
    assert all(s.text.startswith("<think>") for s in e.segments[::2])
    assert e.calls[0].cost_usd == call_cost(sim.descriptor(e.calls[0].model),
                                            e.calls[0].prompt_tokens, e.calls[0].completion_tokens)

    class CharTok:  # one id per character: makes the mask check exact
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

        def decode(self, ids, skip_special_tokens=False):
            return "".join(map(chr, ids))

    t = tokenize_trace(e, CharTok())
    info = sum(len(s.text) for s in e.segments if s.origin == "information")
    assert len(t.response_ids) == len(e.response) and t.loss_mask.count(0) == info


def test_traces_replay_through_the_episode_machine_and_backend(sim):
    """Feeding a trace's policy turns to run_episodes, with calls answered by the simulated
    backend, rebuilds the same response: traces are exactly what RL rollouts look like."""
    pool = sim.pool
    backend = make_backend("simulated", pool)
    traces = make_traces(sim, sim.world.questions("train", 12), seed=3)
    turns = {t.uid: [s.text for s in t.segments if s.origin == "policy"] for t in traces}
    eps = [Episode(t.uid, t.question, t.golden_answers, t.prompt) for t in traces]

    def generate(contexts):
        out = []
        for c in contexts:
            e = next(e for e in eps if c == e.context)
            out.append(turns[e.uid][e.turns])
        return out

    async def call(model, query):
        m = pool[model]
        r = await backend.complete(m, [{"role": "user", "content": query}], {})
        return CallResult(m.name, r.text, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
                          cost_usd=call_cost(m, r.prompt_tokens, r.completion_tokens))

    asyncio.run(run_episodes(eps, generate, call, EpisodeConfig(max_turns=4), pool))
    for e, t in zip(eps, traces):
        assert e.response == t.response and not e.truncated
        assert e.cost_usd == pytest.approx(t.cost_usd)


def test_make_traces_mix_and_corpus(sim):
    qs = sim.world.questions("train", 60)
    mixed = make_traces(sim, qs, mix={"expert": 1, "random": 1}, seed=0)
    assert {e.meta["trace_policy"] for e in mixed} == {"expert", "random"}
    assert [e.response for e in mixed] == [e.response for e in make_traces(sim, qs, mix={"expert": 1, "random": 1}, seed=0)]
    with pytest.raises(ValueError):
        make_traces(sim, qs, mix={"psychic": 1.0})
    corpus = tokenizer_corpus(sim, n_traces=50)
    text = "\n".join(corpus)
    assert all(e.name in text for e in sim.world.entities.values())
    assert "<information>" in text and "Candidate LLMs:" in text


def test_compact_prompt_and_two_call_trace_fit_a_tiny_router(sim):
    """With the compact prompt and a tokenizer trained on the simulator's corpus, prompt plus a
    two-call trace stays around 350 tokens (the demo router's context budget)."""
    from router_r1.engines.model import train_tokenizer
    tok = train_tokenizer(tokenizer_corpus(sim, n_traces=400, layout="compact"), vocab_size=2000)
    traces = [e for e in make_traces(sim, sim.world.questions("val", 150), mix={"expert": 1.0},
                                     layout="compact") if len(e.calls) == 2]
    lengths = [len(tok.encode(e.prompt + e.response)) for e in traces]
    assert traces and max(lengths) <= 360, max(lengths)
    full = make_trace(sim, sim.world.questions("val", 1)[0], "expert")
    assert len(tok.encode(full.prompt)) > len(tok.encode(traces[0].prompt)) + 50


def test_subject_swap_gives_each_trace_a_fresh_subject_everywhere(sim):
    qs = sim.world.questions("train", 60)
    base = make_traces(sim, qs, seed=5, mix={"expert": 1.0})
    swapped = make_traces(sim, qs, seed=5, mix={"expert": 1.0}, subject_swap=1.0)
    assert [e.response for e in make_traces(sim, qs, seed=5, mix={"expert": 1.0})] == [e.response for e in base]
    fresh = set()
    for q, a, b in zip(qs, base, swapped):
        old = sim.world.entities[q.subject]
        assert b.meta["subject_swap"] and b.prompt == "" and old.name not in b.question + b.response
        new = next(e for e in sim.world.by_kind(old.kind) if e.name in b.question)
        fresh.add(new.name)
        # Every mention moved: question, sub-questions, replies; the answer and models stay.
        assert b.question == a.question.replace(old.name, new.name)
        assert b.response == a.response.replace(old.name, new.name)
        assert [m for m, _ in b.routes] == [m for m, _ in a.routes]
        assert all(new.name in query for _, query in b.routes[:1])
    assert len(fresh) > len(qs) // 2  # fresh names, not one stand-in
    with pytest.raises(ValueError, match="subject_swap"):
        make_traces(sim, qs, subject_swap=1.5)


def test_renamed_subjects_are_never_held_out_entities_unless_asked(sim):
    """swap_names "all" (the default) draws a renamed subject among every entity of its kind,
    held-out ones included; "training" only among entities training questions may ask about, so
    no trace writes a held-out (validation or test) subject's name."""
    world = sim.world
    assert all(world.trained_subject(q.subject) for q in world.questions("train"))
    assert not any(world.trained_subject(q.subject) for q in world.questions("val") + world.questions("test"))
    qs = world.questions("train", 200)
    base = make_traces(sim, qs, seed=5, mix={"expert": 1.0})
    drawn = {}
    for names in ("training", "all"):
        swapped = make_traces(sim, qs, seed=5, mix={"expert": 1.0}, subject_swap=1.0, swap_names=names)
        new = []
        for q, a, b in zip(qs, base, swapped):
            old = world.entities[q.subject]
            new += [e for e in world.by_kind(old.kind) if a.question.replace(old.name, e.name) == b.question]
        assert len(new) == len(qs)  # each trace renamed to exactly one entity of its kind
        drawn[names] = [world.trained_subject(e.id) for e in new]
    assert all(drawn["training"])
    assert not all(drawn["all"])  # ~a third of entities are held out under the default split


def test_generalist_traces_ask_the_model_best_over_all_domains_once():
    """The sweep's pool: the generalist is the most accurate and the most expensive model; its
    trace is one call with the whole question, the expert's goes to cheaper specialists."""
    sim = Simulation.from_pool(load_pool(ROOT / "configs" / "pool_simulated_tradeoff.yaml"))
    qs = sim.world.questions("train", 40)
    general = [make_trace(sim, q, "generalist") for q in qs]
    assert all(e.routes == [("Sim-General-Large", q.text)] for e, q in zip(general, qs))
    expert = [make_trace(sim, q, "expert") for q in qs]
    cost = lambda eps: sum(c.cost_usd for e in eps for c in e.calls)  # noqa: E731
    em = lambda eps: sum(e.meta["em"] for e in eps)  # noqa: E731
    assert cost(expert) < cost(general) / 3 and em(expert) < em(general)
