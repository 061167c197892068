"""Per-task routing from training labels (router_r1.worlds.replay.routing), the `per_task`
warm-start traces and the `per-task` baseline of `router-r1 evaluate`, on hand-made samples.

Task "arc" (4 questions) and task "code" (2 questions), three models:

    arc   Big: 1 1 1 1 (cost .01 each)   Mid: 1 1 1 0 (.001)   Small: 1 1 0 0 (.0001)
    code  Big: 1 0     (.02)             Mid: 0 1     (.002)   Small: 0, no reply (.0002)

arc: Big 1.0, Mid .75, Small .5 -> margin 0: Big; .25: Mid; .5: Small; .2: Big.
code: Big .5, Mid .5, Small 0/1 = 0 (the missing reply is not counted) -> margin 0: Mid
(as accurate as Big, ten times cheaper); Big's mean cost .02, Mid's .002.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from router_r1.evaluation.baselines import EvalItem, make_per_task_baseline
from router_r1.infra.config import WarmStartConfig, load_config
from router_r1.pool.descriptors import load_pool
from router_r1.pool.types import CallResult
from router_r1.worlds.replay.routing import per_task_routes, sample_cost, task_stats
from router_r1.worlds.replay.tables import Answer, ReplaySample, ReplayTable
from router_r1.worlds.base import check_trace_mix, make_world
from router_r1.worlds.replay.world import TRACE_POLICIES as REPLAY_POLICIES
from router_r1.worlds.replay.world import ReplayWorld, make_traces
from tests.routerbench_tiny import write_pool

SIM_POOL = str(Path(__file__).resolve().parents[1] / "configs" / "pool_simulated.yaml")

MODELS = ["m-big", "m-mid", "m-small"]
COST = {"arc": {"m-big": 0.01, "m-mid": 0.001, "m-small": 0.0001},
        "code": {"m-big": 0.02, "m-mid": 0.002, "m-small": 0.0002}}
LABELS = {("arc", 0): (1, 1, 1), ("arc", 1): (1, 1, 1), ("arc", 2): (1, 1, 0), ("arc", 3): (1, 0, 0),
          ("code", 0): (1, 0, 0), ("code", 1): (0, 1, None)}


def samples() -> list[ReplaySample]:
    out = []
    for (task, i), labels in LABELS.items():
        s = ReplaySample(f"{task}.{i}", task, f"{task} question {i}")
        for m, lab in zip(MODELS, labels, strict=True):
            s.answers[m] = (Answer(None, None, None) if lab is None
                            else Answer(f"{m} reply", float(lab), COST[task][m]))
        out.append(s)
    return out


@pytest.fixture
def pool(tmp_path):
    return load_pool(write_pool(tmp_path / "pool.yaml", []))


def test_task_stats_hand_checked(pool):
    acc, cost = task_stats(samples(), pool, MODELS)
    assert acc == {"arc": {"Big": 1.0, "Mid": 0.75, "Small": 0.5},
                   "code": {"Big": 0.5, "Mid": 0.5, "Small": 0.0}}
    assert cost["arc"] == pytest.approx({"Big": 0.01, "Mid": 0.001, "Small": 0.0001})
    assert cost["code"] == pytest.approx({"Big": 0.02, "Mid": 0.002, "Small": 0.0002})


@pytest.mark.parametrize("margin,arc,code", [(0.0, "Big", "Mid"), (0.2, "Big", "Mid"), (0.25, "Mid", "Mid"),
                                             (0.5, "Small", "Small"), (1.0, "Small", "Small")])
def test_per_task_routes_cheapest_within_margin(pool, margin, arc, code):
    assert per_task_routes(*task_stats(samples(), pool, MODELS), margin) == {"arc": arc, "code": code}


def test_per_task_routes_rejects_negative_margin():
    with pytest.raises(ValueError, match="margin"):
        per_task_routes({"t": {"A": 1.0}}, {"t": {"A": 1.0}}, -0.1)


def test_sample_cost_recorded_else_priced(pool):
    s = samples()[0]
    assert sample_cost(pool, pool["Big"], s, "m-big") == 0.01
    s.answers["m-big"] = Answer("four words long reply", 1.0, None)  # no recorded cost: descriptor prices
    assert 0 < sample_cost(pool, pool["Big"], s, "m-big") < 0.01


def _world(pool) -> ReplayWorld:
    s = samples()
    table = ReplayTable([])
    table.samples, table.models = s, list(MODELS)
    w = ReplayWorld(table, train=s, val=[])
    w.by_id = {f"{x.eval_name}:{x.sample_id}": x for x in s}
    return w


def test_per_task_traces_follow_the_routes(pool):
    w = _world(pool)
    traces = make_traces(w, pool, 60, seed=3, mix={"per_task": 1.0}, margin=0.25)
    routed = Counter((w.sample_of(e).eval_name, e.calls[0].model) for e in traces)
    assert routed == {("arc", "Mid"): 40, ("code", "Mid"): 20}
    for e in traces:
        assert e.parsed(pool).format_ok
        assert e.calls[0].cost_usd == COST[w.sample_of(e).eval_name]["m-mid"]


def test_trace_mix_shares_and_default_unchanged(pool):
    w = _world(pool)
    mixed = make_traces(w, pool, 600, seed=3, mix={"per_task": 0.5, "task": 0.5}, margin=0.5)
    small = sum(e.calls[0].model == "Small" for e in mixed if w.sample_of(e).eval_name == "arc")
    # arc (400 traces): half take the route (Small); the other half draw by accuracy, where Small
    # weighs exp((0.5 - 1) / 0.1) = 0.7% of Big: about 200 in all (binomial sd 10)
    assert 170 <= small <= 230
    # the default mix draws exactly the traces it drew before trace policies existed
    default = [e.calls[0].model for e in make_traces(w, pool, 50, seed=3)]
    assert default == [e.calls[0].model for e in make_traces(w, pool, 50, seed=3, mix={"task": 1.0})]
    with pytest.raises(ValueError, match="unknown trace policies .* for the replay world"):
        make_traces(w, pool, 5, mix={"expert": 1.0})


def test_config_checks_weights_and_each_world_its_own_trace_policies():
    assert WarmStartConfig(trace_mix={"per_task": 0.7, "task": 0.3}, task_margin=0.1).task_margin == 0.1
    with pytest.raises(ValueError, match="positive sum"):
        WarmStartConfig(trace_mix={"task": 0.0})
    check_trace_mix({"per_task": 1.0}, REPLAY_POLICIES, "replay")
    # A simulator policy in a replay run fails when the world is built, before any actor exists.
    with pytest.raises(ValueError, match=r"unknown trace policies \['expert'\] for the replay world"):
        check_trace_mix({"expert": 1.0}, REPLAY_POLICIES, "replay")
    cfg = load_config(None, {"pool": SIM_POOL, "mlflow.enabled": False, "warmstart.trace_mix": {"per_task": 1.0}})
    with pytest.raises(ValueError, match="for the simulated world"):
        make_world(cfg, cfg.load_pool().seen())


def test_per_task_baseline_routes_by_task_from_train_labels(pool):
    policy = make_per_task_baseline("per-task:0.25", pool, samples(), MODELS)
    assert policy.name == "per-task:0.25"
    held_out = [ReplaySample("x", "arc", "new arc q"), ReplaySample("y", "code", "new code q")]
    items = [EvalItem(f"{s.eval_name}:{s.sample_id}", s.prompt, [], s, s.eval_name) for s in held_out]
    called = []

    async def call(model, query, episode_id=""):
        called.append(model)
        return CallResult(model=model, text="r", cost_usd=0.0, attempts=1)

    asyncio.run(policy.run(items, call))
    assert called == ["Mid", "Mid"]
    assert make_per_task_baseline("per-task", pool, samples(), MODELS).choose(items[0]) == "Big"
    with pytest.raises(ValueError, match="training split"):
        make_per_task_baseline("per-task", pool, [], MODELS)



def test_per_task_baseline_sends_a_task_absent_from_training_to_the_overall_route(pool):
    """Issue 27: a task of the evaluated split that the train split lacks used to be a traceback.
    Overall on train: Big 5/6, Mid 4/6, Small 2/5 (its missing reply not counted); mean costs
    Big .01333, Mid .00133 -> margin 0: Big; margin .25: Mid (within .25 of 5/6, cheaper)."""
    unseen = EvalItem("z:1", "q", [], ReplaySample("1", "z", "q"), "z")
    for spec, route in (("per-task", "Big"), ("per-task:0.25", "Mid")):
        policy = make_per_task_baseline(spec, pool, samples(), MODELS)
        assert policy.notes == []
        assert policy.choose(unseen) == route and policy.choose(EvalItem("z:2", "q2", [], ReplaySample("2", "z", "q2"), "z")) == route
        assert policy.notes == [f"{policy.name}: task 'z' has no training questions; its questions go to "
                                f"{route}, the route of the whole training split"]  # once per task
    with pytest.raises(ValueError, match="margin must be a number"):
        make_per_task_baseline("per-task:wide", pool, samples(), MODELS)


def test_aggregate_call_share_hand_checked():
    from router_r1.evaluation.report import aggregate

    base = {"em": None, "f1": None, "accuracy": 1.0, "cost_usd": 0.0, "failed_calls": 0, "format_ok": True,
            "latency_s": 0.0, "model_latency_s": 0.0}
    rows = [{**base, "models": m, "calls": len(m)} for m in (["A"], ["A", "B"], ["A"], [])]
    assert aggregate(rows)["call_share"] == {"A": 0.75, "B": 0.25}
    assert list(aggregate(rows)["call_share"]) == ["A", "B"]  # most called first
