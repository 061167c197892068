"""Scoring finished episodes and summarising a batch of them into metrics.

Rewards follow the core (router_r1.env.reward, Router-R1 eq. 2-5): format from the protocol
validator, outcome EM or F1 (router_r1.env.answer_metrics), cost through a cost normaliser. Training uses
the run's stateful normaliser; evaluation against the simulator's reference policies uses a
stateless one, so the trained router and the oracle are scored alike.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean, pstdev
from typing import Any

from router_r1.env.answer_metrics import exact_match, f1_score
from router_r1.env.episode import Episode
from router_r1.env.protocol import parse
from router_r1.env.reward import CostNormalizer, RewardBreakdown, RewardConfig, score_batch
from router_r1.pool.descriptors import PoolSpec


@dataclass(frozen=True)
class EpisodeScore:
    reward: RewardBreakdown
    em: float
    f1: float
    violations: tuple[str, ...]


def score_episodes(episodes: Sequence[Episode], pool: PoolSpec, cfg: RewardConfig,
                   normalizer: CostNormalizer, outcomes: Sequence[float] | None = None) -> list[EpisodeScore]:
    """Score a batch; updates `normalizer` with the batch's costs (see reward.score_batch).
    `outcomes` replaces EM/F1 against gold answers (replay world: the adopted reply's label,
    router_r1.worlds.replay.world); it is then reported as both EM and F1."""
    parsed = [parse(e.response, pool, cfg.format_rules) for e in episodes]
    if outcomes is not None:
        em = f1 = [float(o) for o in outcomes]
    else:
        em = [exact_match(p.answer, e.golden_answers) for p, e in zip(parsed, episodes)]
        f1 = [f1_score(p.answer, e.golden_answers) for p, e in zip(parsed, episodes)]
    outcome = em if cfg.metric == "em" else f1
    rewards = score_batch([p.format_ok for p in parsed], outcome, [e.cost_usd for e in episodes],
                          normalizer, cfg)
    return [EpisodeScore(r, a, b, tuple(v.value for v in p.violations))
            for r, a, b, p in zip(rewards, em, f1, parsed)]


def summarize(episodes: Sequence[Episode], scores: Sequence[EpisodeScore], pool: PoolSpec,
              prefix: str = "") -> dict[str, float]:
    """Batch metrics: reward mean/std, format-ok rate, EM, F1, cost, calls per episode, the share
    of calls per model, turns, and call failures."""
    if not episodes:
        return {}
    rewards = [s.reward.reward for s in scores]
    calls = [len(e.calls) for e in episodes]
    per_model = Counter(c.model for e in episodes for c in e.calls)
    total_calls = sum(calls)
    out: dict[str, float] = {
        "reward/mean": mean(rewards), "reward/std": pstdev(rewards),
        "format/ok_rate": mean(float(s.reward.format_ok) for s in scores),
        "outcome/em": mean(s.em for s in scores), "outcome/f1": mean(s.f1 for s in scores),
        "cost/mean_usd": mean(e.cost_usd for e in episodes),
        "cost/reward_mean": mean(s.reward.cost_reward for s in scores),
        "calls/per_episode": mean(calls),
        "calls/failed_rate": (sum(not c.ok for e in episodes for c in e.calls) / total_calls
                              if total_calls else 0.0),
        "episode/turns": mean(e.turns for e in episodes),
        "episode/truncated_rate": mean(float(e.truncated) for e in episodes),
    }
    for m in pool.names:
        out[f"calls/share/{m}"] = per_model.get(m, 0) / total_calls if total_calls else 0.0
    return {prefix + k: v for k, v in out.items()}


def trajectory_record(e: Episode, s: EpisodeScore, step: int) -> dict[str, Any]:
    """One sample trajectory as a JSON-able dict (MLflow JSONL artifact)."""
    return {"step": step, "uid": e.uid, "policy_version": e.policy_version, "question": e.question,
            "golden_answers": e.golden_answers, "response": e.response,
            "reward": s.reward.reward, "format_ok": s.reward.format_ok, "em": s.em, "f1": s.f1,
            "violations": list(s.violations), "cost_usd": e.cost_usd,
            "calls": [{"model": c.model, "status": c.status.value, "cost_usd": c.cost_usd} for c in e.calls]}
