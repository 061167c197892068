"""Normalisation, EM and F1 edge cases, cost, and the reward with its normalisers."""
import math
from pathlib import Path

import pytest

from router_r1.env.answer_metrics import exact_match, f1_score, normalize_answer
from router_r1.env.reward import (ReferenceCostNormalizer, RewardConfig, WindowCostNormalizer, compute_reward,
                                  make_normalizer, score_batch)
from router_r1.pool.cost import call_cost, episode_cost


@pytest.mark.parametrize("raw, norm", [
    ("The  Eiffel Tower!", "eiffel tower"),
    ("a cat, an owl & the dog", "cat owl dog"),
    ("  MIXED Case\t\nspaces ", "mixed case spaces"),
    ("Theatre", "theatre"),  # 'the' only as a word
    ("", ""),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_exact_match_any_gold():
    assert exact_match("the Paris.", ["London", "paris"]) == 1.0
    assert exact_match("Paris France", ["Paris"]) == 0.0
    assert exact_match(None, ["Paris"]) == 0.0
    assert exact_match("x", []) == 0.0


def test_f1_best_over_golds_and_exact_only_words():
    assert f1_score("George Orwell", ["Orwell", "Eric Blair"]) == pytest.approx(2 / 3)
    assert f1_score("Eric Arthur Blair", ["George Orwell", "Eric Blair"]) == pytest.approx(0.8)
    assert f1_score("yes indeed", ["yes"]) == 0.0  # yes/no/noanswer: exact or nothing
    assert f1_score("no", ["no"]) == 1.0
    assert f1_score("noanswer", ["no answer"]) == 0.0
    assert f1_score("the", ["a"]) == 0.0  # both normalise to empty
    assert f1_score(None, ["x"]) == 0.0


def test_call_cost(paper_pool):
    m = paper_pool["LLaMA-3.1-70B-Instruct"]  # $0.88 / 1M both ways
    assert call_cost(m, 1_000_000, 0) == pytest.approx(0.88)
    assert call_cost(m, 500, 250) == pytest.approx(750 * 0.88 / 1e6)
    assert episode_cost([0.1, 0.2]) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        call_cost(m, -1, 0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9])
def test_reward_cases(alpha):
    cfg = RewardConfig(alpha=alpha)
    assert compute_reward(False, 1.0, 0.0, 1.0, cfg).reward == -1.0  # bad format wins
    assert compute_reward(True, 0.0, 0.0, 1.0, cfg).reward == 0.0  # wrong: no cost credit
    r = compute_reward(True, 1.0, 0.01, 0.25, cfg).reward
    assert r == pytest.approx((1 - alpha) * 1.0 + alpha * 0.25)


def test_reward_prefers_cheaper_when_alpha_positive():
    cfg = RewardConfig(alpha=0.5, normalizer="reference", reference_cost_usd=1e-3)
    norm = make_normalizer(cfg)
    cheap, dear = score_batch([True, True], [1.0, 1.0], [1e-5, 9e-4], norm, cfg)
    assert cheap.reward > dear.reward
    cfg0 = RewardConfig(alpha=0.0, normalizer="reference", reference_cost_usd=1e-3)
    a, b = score_batch([True, True], [1.0, 1.0], [1e-5, 9e-4], make_normalizer(cfg0), cfg0)
    assert a.reward == b.reward == 1.0


def test_window_normalizer_percentiles_and_clipping():
    n = WindowCostNormalizer(window=101, low_pct=5, high_pct=95)
    n.update([(i / 100) ** 2 for i in range(101)])  # sqrt costs are 0.00 .. 1.00
    # p5 = .05, p95 = .95 of the sqrt window: sqrt(cost) .5 scales to (.5-.05)/.9 = .5
    assert n.score(0.5 ** 2) == pytest.approx(0.5, abs=1e-9)
    assert n.score(0.2 ** 2) == pytest.approx(1 - 0.15 / 0.9, abs=1e-9)
    assert n.score(0.0) == 1.0 and n.score(4.0) == 0.0  # clipped
    n.update([1.0] * 50)
    assert len(n) == 101  # window keeps the last 101 only


def test_window_normalizer_slides_and_checkpoints():
    n = WindowCostNormalizer(window=3)
    n.update([1.0, 4.0, 9.0, 16.0])  # keeps sqrt 2, 3, 4
    state = n.state_dict()
    assert state["costs"] == [2.0, 3.0, 4.0]
    m = WindowCostNormalizer()
    m.load_state_dict(state)
    assert m.score(9.0) == n.score(9.0) and len(m) == 3
    with pytest.raises(ValueError):
        m.load_state_dict({"kind": "reference", "reference": 1.0})


def test_window_normalizer_degenerate_window():
    n = WindowCostNormalizer()
    assert n.score(0.0) == 1.0  # empty window
    n.update([0.04] * 10)  # all equal
    assert n.score(0.04) == 1.0 and n.score(0.09) == 0.0


def test_reference_normalizer_stateless():
    n = ReferenceCostNormalizer(0.01)
    assert n.score(0.0) == 1.0 and n.score(0.005) == pytest.approx(0.5) and n.score(1.0) == 0.0
    n.update([123.0])
    assert n.score(0.005) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ReferenceCostNormalizer(0)
    assert math.isclose(ReferenceCostNormalizer(2.0).state_dict()["reference"], 2.0)


def test_format_rules_reach_the_reward(paper_pool):
    """`reward.format_rules` decides what 'bad format' means in `router-r1 score` and in training
    (episode_metrics.score_episodes): an answer straight after </information> is fine under the
    reference's rules and scores -1 under think_after_information."""
    import json

    from router_r1.env.episode import Episode, Segment
    from router_r1.env.episode_metrics import score_episodes
    from router_r1.env.protocol import FormatRules
    from router_r1.env.reward import RewardConfig, make_normalizer
    from router_r1.evaluation.completions import score_lines

    policy = "<think>ask</think><search>LLaMA-3.1-70B-Instruct: who wrote 1984?</search>"
    info = "<information>George Orwell</information>"
    line = json.dumps({"completion": policy + info + "<answer>George Orwell</answer>",
                       "golden_answers": ["George Orwell"], "calls": []})
    ref = RewardConfig(normalizer="reference")
    strict = RewardConfig(normalizer="reference", format_rules=FormatRules(think_after_information=True))
    (a,), (b,) = list(score_lines([line], paper_pool, ref)), list(score_lines([line], paper_pool, strict))
    assert a["format_ok"] and a["reward"] == 1.0 and a["format_errors"] == []
    assert not b["format_ok"] and b["reward"] == -1.0 and b["format_errors"] == ["no_think_after_information"]

    ep = Episode(uid="q", question="Who wrote 1984?", golden_answers=["George Orwell"], prompt="",
                 segments=[Segment(policy, "policy"), Segment(info, "information"),
                           Segment("<answer>George Orwell</answer>", "policy")], done=True)
    (s1,) = score_episodes([ep], paper_pool, ref, make_normalizer(ref))
    (s2,) = score_episodes([ep], paper_pool, strict, make_normalizer(strict))
    assert s1.reward.reward == 1.0 and s1.violations == ()
    assert s2.reward.reward == -1.0 and s2.violations == ("no_think_after_information",)


def test_score_does_not_depend_on_line_order():
    """The same completion scores the same on any line, and shuffling a file changes no score
    (window normaliser: the whole file is one batch)."""
    import json
    import random

    from router_r1.env.reward import RewardConfig
    from router_r1.evaluation.completions import score_lines
    from router_r1.pool.descriptors import load_pool

    pool = load_pool(Path(__file__).resolve().parents[1] / "configs" / "pool_router_r1.yaml")
    lines = []
    for i, ct in enumerate([12, 12, 300, 5, 40, 12]):
        lines.append(json.dumps({"completion": "<think>x</think>\n<search>LLaMA-3.1-70B-Instruct: q</search>\n\n"
                                 "<information>Paris</information>\n\n<think>y</think>\n<answer>Paris</answer>",
                                 "golden_answers": ["Paris"],
                                 "calls": [{"model": "LLaMA-3.1-70B-Instruct", "prompt_tokens": 40, "completion_tokens": ct}]}))
    cfg = RewardConfig(alpha=0.5)
    first = [r["reward"] for r in score_lines(lines, pool, cfg)]
    assert first[0] == first[1] == first[5] and first[2] < first[0] < first[3]
    order = list(range(len(lines)))
    random.Random(0).shuffle(order)
    shuffled = [r["reward"] for r in score_lines([lines[i] for i in order], pool, cfg)]
    assert [shuffled[order.index(i)] for i in range(len(lines))] == first
