"""What a router could at best earn on the simulator, and what simple fixed policies earn.

The oracle knows every simulated model's knowledge and picks, per question, the path with the
highest reward under the core's reward formula (router_r1.env.reward.compute_reward):

  * one call: any model asked the full question, answering what it states; or
  * for a two-hop question, two calls: model i asked the first hop's canonical sub-question,
    then model j asked the second hop about the entity i stated (i and j over the whole pool).

The router itself knows nothing, so the oracle makes at least one call; when no path yields
the gold answer it answers wrongly and earns 0 (a well-formed wrong answer). More calls only add
cost, so these paths cover every reward the router can reach with canonical sub-questions. Costs
use the backend's own token counting (a bare query as the only message). A follow-up's "full
question" is its standalone form (`SimQuestion.standalone`): the oracle reads the conversation. The cost reward uses a
stateless normaliser (by default ReferenceCostNormalizer(reward_cfg.reference_cost_usd)), since
the training window's state depends on the run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router_r1.env.answer_metrics import exact_match, f1_score
from router_r1.env.reward import CostNormalizer, ReferenceCostNormalizer, RewardConfig, compute_reward
from router_r1.worlds.sim.knowledge import SimQuestion
from router_r1.worlds.sim.language import RELATIONS
from router_r1.worlds.sim.models import SimCall, Simulation
from router_r1.worlds.sim.plans import expert_plan


@dataclass(frozen=True)
class RoutePlan:
    """A fixed sequence of calls and the answer it ends with, with its reward."""

    calls: tuple[SimCall, ...]
    answer: str | None  # None: the last reply stated nothing ("I don't know.")
    reward: float
    outcome: float  # EM or F1 of the answer
    cost_usd: float


def _normalizer(cfg: RewardConfig, normalizer: CostNormalizer | None) -> CostNormalizer:
    return normalizer if normalizer is not None else ReferenceCostNormalizer(cfg.reference_cost_usd)


def score_plan(q: SimQuestion, calls: Sequence[SimCall], cfg: RewardConfig,
               normalizer: CostNormalizer | None = None) -> RoutePlan:
    """Reward of answering with the last call's stated answer, exactly as the trainer scores it."""
    stated = calls[-1].reply.stated if calls else None
    answer = stated.name if stated is not None else None
    metric = exact_match if cfg.metric == "em" else f1_score
    outcome = metric(answer, q.golden_answers) if answer is not None else 0.0
    cost = sum(c.cost_usd for c in calls)
    r = compute_reward(True, outcome, cost, _normalizer(cfg, normalizer).score(cost), cfg)
    return RoutePlan(tuple(calls), answer, r.reward, outcome, cost)


def candidate_plans(sim: Simulation, q: SimQuestion, cfg: RewardConfig,
                    normalizer: CostNormalizer | None = None) -> list[RoutePlan]:
    """Every one-call plan, and for a two-hop question every two-call decomposition."""
    plans = [score_plan(q, [sim.call(m, q.standalone)], cfg, normalizer) for m in sim.names]
    if q.two_hop:
        second = RELATIONS[q.relations[1]]
        for m1 in sim.names:
            first = sim.call(m1, q.subquestions[0])
            if first.reply.stated is None:
                continue
            follow_up = second.ask(first.reply.stated.name)
            for m2 in sim.names:
                plans.append(score_plan(q, [first, sim.call(m2, follow_up)], cfg, normalizer))
    return plans


def oracle_plan(sim: Simulation, q: SimQuestion, cfg: RewardConfig,
                normalizer: CostNormalizer | None = None) -> RoutePlan:
    """The best plan: highest reward, then highest outcome, then cheapest, then fewest calls."""
    return max(candidate_plans(sim, q, cfg, normalizer),
               key=lambda p: (p.reward, p.outcome, -p.cost_usd, -len(p.calls)))


def oracle_reward(sim: Simulation, q: SimQuestion, cfg: RewardConfig,
                  normalizer: CostNormalizer | None = None) -> float:
    return max(0.0, oracle_plan(sim, q, cfg, normalizer).reward)


def single_model_policy_reward(sim: Simulation, model: str, q: SimQuestion, cfg: RewardConfig,
                               normalizer: CostNormalizer | None = None) -> float:
    """Always ask `model` the full question once and answer what it states."""
    return score_plan(q, [sim.call(model, q.standalone)], cfg, normalizer).reward


def best_single_model(sim: Simulation, questions: Sequence[SimQuestion], cfg: RewardConfig,
                      normalizer: CostNormalizer | None = None) -> tuple[str, float]:
    per = per_model_rewards(sim, questions, cfg, normalizer)
    name = max(per, key=per.get)
    return name, per[name]


def per_model_rewards(sim: Simulation, questions: Sequence[SimQuestion], cfg: RewardConfig,
                      normalizer: CostNormalizer | None = None) -> dict[str, float]:
    return {m: _mean([single_model_policy_reward(sim, m, q, cfg, normalizer) for q in questions])
            for m in sim.names}


def expected_rewards(sim: Simulation, questions: Sequence[SimQuestion], cfg: RewardConfig,
                     normalizer: CostNormalizer | None = None) -> dict:
    """Mean rewards of the reference policies, to report a trained router against:

    oracle: the best plan per question; expert: the descriptor-only policy of `plans.py`
    (route each hop to the cheapest strong model, retry hedges); best_single: (name, mean) of the best always-ask-one-model
    policy; per_model: every such policy; random: a model drawn uniformly per question (its
    expectation, i.e. the mean over models). Also the oracle's mean cost and calls per episode.
    """
    plans = [oracle_plan(sim, q, cfg, normalizer) for q in questions]
    expert = [score_plan(q, [c for _, c in expert_plan(sim, q)], cfg, normalizer) for q in questions]
    per = per_model_rewards(sim, questions, cfg, normalizer)
    best = max(per, key=per.get)
    return {
        "n": len(questions),
        "oracle": _mean([max(0.0, p.reward) for p in plans]),
        "oracle_em": _mean([p.outcome for p in plans]),
        "oracle_cost_usd": _mean([p.cost_usd for p in plans]),
        "oracle_calls": _mean([len(p.calls) for p in plans]),
        "expert": _mean([p.reward for p in expert]),
        "expert_cost_usd": _mean([p.cost_usd for p in expert]),
        "best_single": (best, per[best]),
        "per_model": per,
        "random": _mean(list(per.values())),
    }


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


QUESTION_TYPES = ("single-hop", "two-hop", "follow-up")


def question_type(q: SimQuestion) -> str:
    """single-hop, two-hop, or follow-up (a question whose subject is named only in the history)."""
    return "follow-up" if q.follow_up else "two-hop" if q.two_hop else "single-hop"


def reference_policies(sim: Simulation, questions: Sequence[SimQuestion], cfg: RewardConfig,
                       normalizer: CostNormalizer | None = None) -> dict[str, dict[str, float]]:
    """EM, reward, cost and calls per episode of the reference policies on `questions`: every
    one-call policy (each model asked the whole question; random: their mean; the one-call
    oracle: the best single call per question), the descriptor-only expert and the oracle (which
    may call twice)."""
    singles = {m: [score_plan(q, [sim.call(m, q.standalone)], cfg, normalizer) for q in questions] for m in sim.names}
    best_one = [max((singles[m][i] for m in sim.names), key=lambda p: (p.reward, p.outcome, -p.cost_usd))
                for i in range(len(questions))]
    rows = {f"single:{m}": _stats(ps) for m, ps in singles.items()}
    rows["random (one call)"] = {k: _mean([rows[f"single:{m}"][k] for m in sim.names])
                                 for k in ("em", "reward", "cost_usd", "calls")}
    rows["oracle (one call)"] = _stats(best_one)
    rows["expert"] = _stats([score_plan(q, [c for _, c in expert_plan(sim, q)], cfg, normalizer)
                             for q in questions])
    rows["oracle"] = _stats([oracle_plan(sim, q, cfg, normalizer) for q in questions])
    return rows


def by_question_type(sim: Simulation, questions: Sequence[SimQuestion], cfg: RewardConfig,
                     normalizer: CostNormalizer | None = None) -> dict[str, dict]:
    """`reference_policies` per question type (`QUESTION_TYPES`), with each type's count."""
    out: dict[str, dict] = {}
    for kind in QUESTION_TYPES:
        qs = [q for q in questions if question_type(q) == kind]
        if qs:
            out[kind] = {"n": len(qs), "policies": reference_policies(sim, qs, cfg, normalizer)}
    return out


def _stats(plans: Sequence[RoutePlan]) -> dict[str, float]:
    return {"em": _mean([p.outcome for p in plans]), "reward": _mean([max(0.0, p.reward) for p in plans]),
            "cost_usd": _mean([p.cost_usd for p in plans]), "calls": _mean([len(p.calls) for p in plans])}
