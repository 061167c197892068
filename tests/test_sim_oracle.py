"""The oracle and the fixed baseline policies, including values computed by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from router_r1.env.reward import RewardConfig, WindowCostNormalizer
from router_r1.pool.descriptors import PoolSpec, load_pool
from router_r1.worlds.sim import Simulation
from router_r1.worlds.sim.oracle import (best_single_model, candidate_plans, expected_rewards, oracle_plan,
                                         oracle_reward, single_model_policy_reward)

ROOT = Path(__file__).resolve().parents[1]


def hand_pool() -> PoolSpec:
    """Big: knows everything, answers two-hop questions in one call, $2/1M tokens.
    Geo: knows all geography and nothing else, never composes two hops, $0.10/1M tokens."""
    def model(name, price, **opts):
        return {"name": name, "price": price, "backend": {"kind": "simulated", "options": opts}}
    return PoolSpec.model_validate({
        "name": "hand", "backends": {"simulated": {"seed": 1, "entities_per_domain": 8}},
        "models": [model("Big", 2.0, default_skill=1.0, hop_skill=1.0),
                   model("Geo", 0.1, skill={"geography": 1.0}, default_skill=0.0, hop_skill=0.0,
                         hedge=0.0)]})


@pytest.fixture(scope="module")
def hand() -> Simulation:
    return Simulation.from_pool(hand_pool())


def _question(sim, relations):
    return next(q for s in ("train", "val", "test") for q in sim.world.all_questions(s)
                if q.relations == relations)


def test_hand_checked_single_hop_capital(hand):
    q = _question(hand, ("capital_of",))
    # "What is the capital of X ?" = 7 tokens; "The capital of X is Y ." = 7 tokens.
    # Big: 14 tokens * $2/1M = 2.8e-5 USD; cost reward 1 - 2.8e-5/1e-4 = 0.72.
    # Geo: 14 tokens * $0.1/1M = 1.4e-6 USD; cost reward 0.986.
    a0, a5 = RewardConfig(alpha=0.0), RewardConfig(alpha=0.5)
    assert single_model_policy_reward(hand, "Big", q, a5) == pytest.approx(0.5 + 0.5 * 0.72)
    assert single_model_policy_reward(hand, "Geo", q, a5) == pytest.approx(0.5 + 0.5 * 0.986)
    assert oracle_reward(hand, q, a5) == pytest.approx(0.993)
    assert oracle_reward(hand, q, a0) == 1.0
    assert [c.model for c in oracle_plan(hand, q, a5).calls] == ["Geo"]


def test_hand_checked_two_hop(hand):
    q = _question(hand, ("country_of", "capital_of"))
    a5 = RewardConfig(alpha=0.5)
    # Big, one call: "What is the capital of the country of C ?" (10) + "The capital of the
    # country of C is Y ." (10) = 20 tokens * $2/1M = 4e-5; cost reward 0.6; reward 0.8.
    assert single_model_policy_reward(hand, "Big", q, a5) == pytest.approx(0.8)
    # Geo, one call: never composes, so wrong: reward 0.
    assert single_model_policy_reward(hand, "Geo", q, a5) == 0.0
    # Geo twice: "In which country is C ?" (6) + "C is in X ." (5) + "What is the capital of X ?"
    # (7) + "The capital of X is Y ." (7) = 25 tokens * $0.1/1M = 2.5e-6; cost reward 0.975.
    plan = oracle_plan(hand, q, a5)
    assert [c.model for c in plan.calls] == ["Geo", "Geo"] and plan.answer == q.answer
    assert plan.cost_usd == pytest.approx(2.5e-6)
    assert oracle_reward(hand, q, a5) == pytest.approx(0.5 + 0.5 * 0.975)
    # born_in then country_of: Geo does not know birthplaces, so the best is Big then Geo, unless
    # Geo's wrong birthplace happens to lie in the right country (a lucky path is still a path).
    w = hand.world
    for q2 in (q for s in ("train", "val", "test") for q in w.all_questions(s)
               if q.relations == ("born_in", "country_of")):
        plan2 = oracle_plan(hand, q2, a5)
        guess = hand.call("Geo", q2.subquestions[0]).reply.stated
        lucky = w.lookup("country_of", guess).name == q2.answer
        assert [c.model for c in plan2.calls] == (["Geo", "Geo"] if lucky else ["Big", "Geo"])
        assert plan2.outcome == 1.0


def test_hand_checked_expected_rewards(hand):
    qs = [_question(hand, ("capital_of",)), _question(hand, ("country_of", "capital_of"))]
    out = expected_rewards(hand, qs, RewardConfig(alpha=0.5))
    assert out["oracle"] == pytest.approx((0.993 + 0.9875) / 2)
    assert out["per_model"] == pytest.approx({"Big": (0.86 + 0.8) / 2, "Geo": (0.993 + 0.0) / 2})
    assert out["best_single"][0] == "Big" and out["best_single"][1] == pytest.approx(0.83)
    assert out["random"] == pytest.approx((0.83 + 0.4965) / 2)
    assert best_single_model(hand, qs, RewardConfig(alpha=0.5)) == out["best_single"]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_oracle_dominates_every_single_model_on_every_question(alpha):
    sim = Simulation.from_pool(load_pool(ROOT / "configs" / "pool_simulated.yaml"))
    cfg = RewardConfig(alpha=alpha)
    for q in sim.world.questions("val", 120):
        best = oracle_reward(sim, q, cfg)
        for m in sim.names:
            assert best >= single_model_policy_reward(sim, m, q, cfg) - 1e-12
        assert best == max(0.0, max(p.reward for p in candidate_plans(sim, q, cfg)))


def test_oracle_accepts_a_normalizer(hand):
    q = _question(hand, ("capital_of",))
    norm = WindowCostNormalizer(window=10)
    norm.update([0.0, 1e-5])
    cfg = RewardConfig(alpha=1.0)  # reward = cost reward of the cheapest correct path (Geo)
    assert oracle_reward(hand, q, cfg, norm) == pytest.approx(norm.score(1.4e-6))
    assert oracle_reward(hand, q, cfg) == pytest.approx(1 - 1.4e-6 / 1e-4)  # reference default


def test_simulated_pool_rewards_routing():
    """The shipped pool is designed so that routing pays: no model is best on every domain, the
    generalist is the best single model but costly, and the oracle and expert beat it."""
    sim = Simulation.from_pool(load_pool(ROOT / "configs" / "pool_simulated.yaml"))
    best_per_domain = {d: max(sim.names, key=lambda m: sim.models[m].spec.p_know(d))
                       for d in ("geography", "people", "science", "arts", "sports")}
    assert len(set(best_per_domain.values())) > 1
    prices = {m: sim.descriptor(m).price_in for m in sim.names}
    qs = sim.world.questions("val", 100)
    for alpha in (0.0, 0.5):
        out = expected_rewards(sim, qs, RewardConfig(alpha=alpha))
        assert out["best_single"][0] == max(prices, key=prices.get)
        assert out["oracle"] > out["expert"] > out["best_single"][1] > out["random"]


def test_reference_policies_by_question_type(hand):
    """Hand pool: Big knows everything and composes two hops; Geo knows only geography and never
    composes. One-call policies on two-hop geography questions: Big 1, Geo 0; the oracle decomposes
    through Geo (cheaper) with two calls; single-hop figures are split off."""
    from router_r1.worlds.sim import by_question_type

    qs = [q for s in ("train", "val") for q in hand.world.all_questions(s)
          if q.relations in (("capital_of",), ("country_of", "capital_of"))][:12]
    t = by_question_type(hand, qs, RewardConfig(alpha=0.5))
    assert set(t) == {"single-hop", "two-hop"}
    assert t["single-hop"]["n"] + t["two-hop"]["n"] == len(qs)
    two = t["two-hop"]["policies"]
    assert two["single:Big"]["em"] == 1.0 and two["single:Geo"]["em"] == 0.0
    assert two["random (one call)"]["em"] == 0.5 and two["oracle (one call)"]["calls"] == 1.0
    assert two["oracle"]["em"] == 1.0 and two["oracle"]["calls"] == 2.0
    assert two["oracle"]["cost_usd"] < two["single:Big"]["cost_usd"]
    one = t["single-hop"]["policies"]
    assert one["single:Geo"]["em"] == 1.0 and one["oracle"]["calls"] == 1.0
