"""Simulated candidate models and the `simulated` backend of the ModelPool."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from router_r1.pool.backends import make_backend
from router_r1.pool.descriptors import PoolSpec, load_pool
from router_r1.worlds.sim import Simulation
from router_r1.worlds.sim.backend import SimulatedBackend
from router_r1.worlds.sim.language import HEDGE, IDK, RELATIONS, count_tokens

ROOT = Path(__file__).resolve().parents[1]
POOL_FILE = ROOT / "configs" / "pool_simulated.yaml"


def tiny_pool(**backend_options) -> PoolSpec:
    """Three models whose knowledge is certain: one knows everything, one nothing, one only
    geography (and always hedges what it does not know)."""
    def model(name, price, skill, **opts):
        return {"name": name, "price": price, "latency_s": 0.05,
                "backend": {"kind": "simulated", "options": {"skill": skill, **opts}}}
    return PoolSpec.model_validate({
        "name": "tiny", "backends": {"simulated": {"seed": 7, "entities_per_domain": 12, **backend_options}},
        "models": [model("Know-All", 2.0, {}, default_skill=1.0, hop_skill=1.0, verbosity=1),
                   model("Know-None", 0.1, {}, default_skill=0.0, hedge=0.0),
                   model("Geo-Only", 0.1, {"geography": 1.0}, default_skill=0.0, hop_skill=0.0, hedge=1.0)]})


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return Simulation.from_pool(tiny_pool())


@pytest.fixture(scope="module")
def real() -> Simulation:
    return Simulation.from_pool(load_pool(POOL_FILE))


def test_known_facts_are_answered_exactly_in_a_sentence(sim):
    for q in sim.world.all_questions("train"):
        r = sim.call("Know-All", q.text).reply
        assert r.correct and r.stated.name == q.answer and not r.hedged
        assert r.text.endswith(f" {q.answer}. I hope this helps.")  # verbosity 1: one filler
        if not q.two_hop:
            subject = sim.world.entities[q.subject].name
            assert r.text == RELATIONS[q.relations[0]].state(subject, q.answer) + " I hope this helps."


def test_unknown_facts_get_plausible_wrong_answers(sim):
    for q in sim.world.all_questions("train"):
        r = sim.call("Know-None", q.text).reply
        truth = sim.world.resolve(sim.world.entities[q.subject], q.relations)
        assert r.correct is False and r.stated != truth and r.stated.kind == truth.kind
        assert not r.hedged and r.text.endswith(f"{r.stated.name}.")
        if q.relations == ("capital_of",):  # a city of the same country
            assert sim.world.lookup("country_of", r.stated).id == q.subject


def test_hedges_only_wrong_answers(sim):
    for q in sim.world.all_questions("train"):
        r = sim.call("Geo-Only", q.text).reply
        knows = not q.two_hop and RELATIONS[q.relations[0]].domain == "geography"
        assert r.correct == knows and r.hedged == (not knows)
        assert r.text.startswith(HEDGE) == (not knows)


def test_answers_are_fixed_properties(real):
    qs = real.world.questions("val", 60)
    first = [[real.call(m, q.text).reply.text for m in real.names] for q in qs]
    rebuilt = Simulation.from_pool(load_pool(POOL_FILE))
    assert first == [[rebuilt.call(m, q.text).reply.text for m in rebuilt.names] for q in qs]
    # Same fact asked in other words: same answer.
    q = next(q for q in qs if q.relations == ("capital_of",))
    country = real.world.entities[q.subject].name
    for m in real.names:
        a = real.call(m, q.text).reply.stated
        assert real.call(m, f"capital of {country.lower()}, please").reply.stated == a


def test_knowledge_rate_follows_skill(real):
    qs = [q for s in ("train", "val", "test") for q in real.world.all_questions(s) if not q.two_hop]
    for m in real.names:
        spec = real.models[m].spec
        for domain in ("geography", "people"):
            d_qs = [q for q in qs if q.domains[0] == domain]
            rate = sum(real.call(m, q.text).reply.correct for q in d_qs) / len(d_qs)
            assert abs(rate - spec.p_know(domain)) < 0.08, (m, domain, rate)


def test_unintelligible_query_gets_i_dont_know(sim):
    for q in ("", "Tell me a joke.", "What is the capital of Atlantis?"):
        r = sim.call("Know-All", q).reply
        assert r.text == IDK and r.stated is None and r.correct is None


def test_two_hop_questions_are_solvable_by_decomposition(sim):
    for q in (q for q in sim.world.all_questions("train") if q.two_hop):
        assert not sim.call("Geo-Only", q.text).reply.correct  # hop_skill 0: never in one call
        first = sim.call("Know-All", q.subquestions[0]).reply.stated
        follow = RELATIONS[q.relations[1]].ask(first.name)
        assert follow == q.subquestions[1]
        assert sim.call("Know-All", follow).reply.stated.name == q.answer


def test_token_counts_and_prices(sim):
    c = sim.call("Know-All", "What is the capital of Vorland?")
    assert c.prompt_tokens == 7 == count_tokens("What is the capital of Vorland?")
    assert c.completion_tokens == count_tokens(c.reply.text)
    assert c.cost_usd == pytest.approx((c.prompt_tokens + c.completion_tokens) * 2.0 / 1e6)


def test_backend_through_make_backend(real):
    pool = load_pool(POOL_FILE)
    backend = make_backend("simulated", pool)
    assert isinstance(backend, SimulatedBackend)
    q = real.world.questions("val", 1)[0]
    m = pool["Sim-General-Large"]
    msgs = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": q.text}]
    reply = asyncio.run(backend.complete(m, msgs, {"temperature": 0.0}))
    assert reply.text == real.call(m.name, q.text).reply.text
    assert reply.prompt_tokens == count_tokens("Answer briefly.") + count_tokens(q.text)
    assert reply.completion_tokens == count_tokens(reply.text) and reply.cost_usd is None
    assert reply.meta["latency_s"] == m.latency_s and reply.meta["simulated"] is True
    asyncio.run(backend.close())


def test_backend_sleeps_only_when_asked():
    pool = tiny_pool()
    m, msgs = pool["Know-All"], [{"role": "user", "content": "hi"}]
    t = time.perf_counter()
    asyncio.run(make_backend("simulated", pool).complete(m, msgs, {}))
    assert time.perf_counter() - t < 0.04
    t = time.perf_counter()
    asyncio.run(make_backend("simulated", tiny_pool(sleep=True)).complete(m, msgs, {}))
    assert time.perf_counter() - t >= 0.05


def test_backend_rejects_bad_options_and_calls():
    from router_r1.pool.backends.base import BackendError
    with pytest.raises(ValueError, match="unknown simulated backend options"):
        make_backend("simulated", tiny_pool(sede=1))
    backend = make_backend("simulated", tiny_pool())
    with pytest.raises(BackendError):
        asyncio.run(backend.complete(tiny_pool()["Know-All"], [{"role": "system", "content": "x"}], {}))


def test_backend_caps_completion_tokens():
    pool = tiny_pool()
    backend = make_backend("simulated", pool)
    q = Simulation.from_pool(pool).world.all_questions("train")[0]
    msgs = [{"role": "user", "content": q.text}]
    full = asyncio.run(backend.complete(pool["Know-All"], msgs, {}))
    cut = asyncio.run(backend.complete(pool["Know-All"], msgs, {"max_tokens": 5}))
    assert cut.completion_tokens <= 5 < full.completion_tokens and full.text.startswith(cut.text)


def test_world_options_are_validated():
    with pytest.raises(Exception, match="sede"):
        Simulation.from_pool(tiny_pool(sede=1))
    assert Simulation.from_pool(tiny_pool(sleep=True)).world.config.seed == 7
