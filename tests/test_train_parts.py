"""Driver parts without Ray: the question stream's resumable order, scoring and batch metrics,
and the tracking helpers."""
from __future__ import annotations

import pytest

from router_r1.env.episode import Episode, Segment
from router_r1.env.episode_metrics import score_episodes, summarize
from router_r1.env.reward import RewardConfig, WindowCostNormalizer
from router_r1.infra.config import MlflowConfig
from router_r1.infra.tracking import plot_curves, resolve_tracking_uri
from router_r1.pool.types import CallResult
from router_r1.worlds.base import QuestionStream


def test_question_stream_resumes_where_it_stopped():
    items = [{"id": str(i), "question": f"q{i}", "golden_answers": ["a"]} for i in range(7)]
    a = QuestionStream(items, seed=1)
    first = a.next_batch(5)
    b = QuestionStream(items, seed=1)
    b.load_state_dict(a.state_dict())
    assert a.next_batch(9) == b.next_batch(9)  # across an epoch boundary too
    epoch = QuestionStream(items, seed=1).next_batch(7)
    assert epoch[:5] == first and sorted(x["id"] for x in epoch) == [str(i) for i in range(7)]
    with pytest.raises(ValueError, match="data changed"):
        QuestionStream(items[:3]).load_state_dict(a.state_dict())


def _episode(response: str, cost: float, model: str = "M") -> Episode:
    e = Episode(uid="q#0", question="q", golden_answers=["Paris"], prompt="p")
    e.segments = [Segment(response, "policy")]
    e.calls = [CallResult(model=model, cost_usd=cost)] if cost else []
    return e


def test_scores_and_summary_follow_the_reward_formula(paper_pool):
    name = paper_pool.names[0]
    good = _episode("<think> x </think>\n<answer> Paris </answer>", 2e-6, name)
    wrong = _episode("<think> x </think>\n<answer> Rome </answer>", 0.0)
    bad = _episode("Paris", 0.0)
    cfg = RewardConfig(alpha=0.0)
    scores = score_episodes([good, wrong, bad], paper_pool, cfg, WindowCostNormalizer())
    assert [s.reward.reward for s in scores] == [1.0, 0.0, -1.0]
    m = summarize([good, wrong, bad], scores, paper_pool)
    assert m["format/ok_rate"] == pytest.approx(2 / 3) and m["outcome/em"] == pytest.approx(1 / 3)
    assert m["calls/per_episode"] == pytest.approx(1 / 3) and m[f"calls/share/{name}"] == 1.0


def test_tracking_uri_refuses_the_file_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="filesystem store"):
        resolve_tracking_uri(MlflowConfig(tracking_uri=str(tmp_path / "mlruns")))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/x/m.db")
    assert resolve_tracking_uri(MlflowConfig()).endswith("x/m.db") and (tmp_path / "x").is_dir()


def test_training_curves_png(tmp_path):
    hist = [{"step": s, "reward/mean": -1 + s / 10, "format/ok_rate": s / 10} for s in range(1, 6)]
    path = plot_curves(hist, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert plot_curves([{"step": 1}], tmp_path / "none.png") is None
    assert plot_curves([{"step": 1}], tmp_path / "sft.png", sft_losses=[2.0, 1.5]).stat().st_size > 0


def test_report_lists_greedy_validation_along_the_way():
    from pipelines.train import REPORT_KEYS, format_report

    ev = {label: {k: r for k, _ in REPORT_KEYS} for label, r in
          (("untrained", -1.0), ("start", 0.25), ("step_10", 0.5), ("end", 0.75))}
    rep = {"steps": 20, "wall_s": 1.0, "restarts": 0, "eval": ev,
           "train": {k: [0.1, 0.2] for k, _ in REPORT_KEYS}}
    text = format_report(rep)
    assert "greedy val reward by step: start 0.250, 10 0.500, end 0.750" in text
    assert "by step" not in format_report({**rep, "eval": {k: ev[k] for k in ("start", "end")}})


def test_report_shows_held_out_rule_extra_evaluations_and_question_types():
    from pipelines.train import REPORT_KEYS, format_report

    ev = {label: {k: r for k, _ in REPORT_KEYS} for label, r in (("start", 0.5), ("end", 0.8))}
    pol = {"single:A": {"em": 0.4, "calls": 1.0}, "single:B": {"em": 0.6, "calls": 1.0},
           "oracle (one call)": {"em": 0.7, "calls": 1.0}, "expert": {"em": 0.85, "calls": 2.1},
           "oracle": {"em": 1.0, "calls": 2.0}}
    ref = {"oracle": 1.0, "best_single": ["B", 0.6], "random": 0.5, "expert": 0.85,
           "fraction_of_oracle": 0.8, "fraction_of_best_single": 1.333}
    rep = {"steps": 20, "wall_s": 1.0, "restarts": 0, "eval": ev, "train": {k: [0.1, 0.2] for k, _ in REPORT_KEYS},
           "reference": ref, "held_out": "questions: test",
           "extra": {"held_out_entities": {"n": 64, "reward": [0.3, 0.4], "em": [0.31, 0.41],
                                           "reference": {**ref, "oracle": 0.99, "fraction_of_oracle": 0.404}}},
           "by_type": {"two-hop": {"n": 26, "policies": pol,
                                   "router": {"em": 0.9, "calls": 2.0, "reward": 0.9, "cost_usd": 1e-6}}}}
    text = format_report(rep)
    assert "validation holds out questions: test" in text
    assert "held out entities (64 questions" in text and "greedy reward 0.300 -> 0.400" in text
    assert "0.404 of the oracle (0.990)" in text
    assert "two-hop (n=26): router 0.900 / 2.000; one call: A 0.400, B 0.600, best per question 0.700" in text
    assert "descriptor-only expert 0.850" in text


def test_alpha_sweep_table_and_frontier(tmp_path):
    from pipelines.sweep_alpha import markdown, plot

    rows = [{"alpha": a, "em": 0.9 - a / 4, "reward": 0.8, "cost_usd": 2e-5 * (1 - a) + 1e-6, "calls": 1.5,
             "shares": {"A": 1 - a, "B": a}} for a in (0.0, 0.5, 0.9)]
    refs = {"single: A": {"em": 0.6, "cost_usd": 3e-5, "calls": 1.0}, "oracle": {"em": 1.0, "cost_usd": 1e-6, "calls": 1.2}}
    table = markdown(rows, refs, "simulator")
    assert "(simulator)" in table.splitlines()[0]
    assert "| 0.5 | 0.775 | 0.800 | 1.10e-05 | 1.50 | 0.50 | 0.50 |" in table
    assert "| oracle | 1.000 | 1.00e-06 | 1.20 |" in table
    plot(rows, refs, tmp_path / "f.png", "t (simulator)")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_report_and_run_summary_show_what_rl_changed():
    from pipelines.train import REPORT_KEYS, format_report, run_summary

    ev = {"start": {k: 0.5 for k, _ in REPORT_KEYS}, "end": {k: 0.8 for k, _ in REPORT_KEYS}}
    rep = {"steps": 20, "wall_s": 1.0, "restarts": 0, "eval": ev, "train": {k: [0.1, 0.2] for k, _ in REPORT_KEYS},
           "shares": {"start": {"Big": 0.75, "Small": 0.25}, "end": {"Big": 0.125, "Small": 0.875}}}
    assert "calls by model, start -> end: Big 0.75 -> 0.12, Small 0.25 -> 0.88" in format_report(rep)
    md = run_summary(rep, [2.5, 0.75])
    assert "| reward | 0.500 | 0.800 |" in md and "loss 2.500 -> 0.750" in md


def test_report_shows_what_rl_changed_on_held_out_entities_and_the_learning_curve():
    from pipelines.train import REPORT_KEYS, format_report, run_summary

    ev = {label: {k: r for k, _ in REPORT_KEYS} for label, r in
          (("start", 0.5), ("end", 0.8), ("held_out_entities_start", 0.25), ("held_out_entities_end", 0.375))}
    rep = {"steps": 16, "wall_s": 1.0, "restarts": 0, "eval": ev, "train": {k: [0.1, 0.2] for k, _ in REPORT_KEYS},
           "shares": {"start": {"Big": 0.75, "Small": 0.25}, "end": {"Big": 0.125, "Small": 0.875},
                      "held_out_entities_start": {"Big": 0.5, "Small": 0.5},
                      "held_out_entities_end": {"Big": 0.0, "Small": 1.0}},
           "extra": {"held_out_entities": {"n": 8, "reward": [0.25, 0.375], "em": [0.25, 0.375], "reference": None}},
           "curve": {"every": 8, "reward": [[8, 0.125], [16, 0.625]]}}
    text = format_report(rep)
    row = next(ln for ln in text.splitlines() if ln.strip().startswith("calls/episode"))
    assert row.split() == ["calls/episode", "0.100", "->", "0.200", "0.500", "->", "0.800", "0.250", "->", "0.375"]
    assert "held out entities: start -> end" in text
    assert "held out entities calls by model, start -> end: Big 0.50 -> 0.00, Small 0.50 -> 1.00" in text
    assert "training reward (mean of each 8 steps, by last step): 8 0.125, 16 0.625" in text
    md = run_summary(rep, [2.5, 0.75])
    assert "| reward | 0.500 | 0.800 | 0.250 | 0.375 |" in md
    assert "| calls to Small (share) | 0.250 | 0.875 | 0.500 | 1.000 |" in md


def test_report_learning_curve_is_the_training_reward_per_block_of_steps():
    from pipelines.train import Trainer

    t = object.__new__(Trainer)  # report() reads only the run's figures
    t.history = [{"step": s, "reward/mean": s / 20} for s in range(1, 21)]
    t.step, t._restarts_before, t.evals = 20, 0, {}
    curve = t.report(1.0)["curve"]
    # 20 steps -> blocks of 3 (about 8 points); each point: the block's last step, its mean reward
    assert curve["every"] == 3 and len(curve["reward"]) == 7
    assert curve["reward"][0] == [3, pytest.approx(0.1)] and curve["reward"][-1] == [20, pytest.approx(0.975)]


def test_greedy_curve_runs_from_the_start_of_rl_to_the_end():
    from pipelines.train import Trainer

    t = object.__new__(Trainer)
    t.step = 24
    t.evals = {"untrained": {"reward/mean": -1.0}, "start": {"reward/mean": 0.5}, "step_16": {"reward/mean": 0.75},
               "step_8": {"reward/mean": 0.625}, "end": {"reward/mean": 0.875}, "held_out_entities_end": {"reward/mean": 0.0}}
    assert t.greedy_curve() == [{"step": 0, "eval/reward/mean": 0.5}, {"step": 8, "eval/reward/mean": 0.625},
                                {"step": 16, "eval/reward/mean": 0.75}, {"step": 24, "eval/reward/mean": 0.875}]
