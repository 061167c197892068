"""Baselines' accuracy and cost on the hand-checked tiny world (numbers in routerbench_tiny)."""
from __future__ import annotations

import asyncio

import pytest

from routerbench_tiny import write_pool, write_routerbench
from router_r1.evaluation.report import Point, aggregate, pareto_frontier, score_run
from router_r1.pool.descriptors import load_pool


@pytest.fixture
def world(tmp_path):
    from pipelines.evaluate import load_dataset

    csv = write_routerbench(tmp_path / "tiny.csv")
    pool = load_pool(write_pool(tmp_path / "pool.yaml", [csv]))
    name, items, table = load_dataset([csv], "all", 0.2, 0, None)
    return pool, items, table


def evaluate(world, spec: str, seed: int = 0):
    from pipelines.evaluate import pool_target, run_policy
    from router_r1.evaluation.baselines import make_direct_baseline

    pool, items, table = world
    policy = make_direct_baseline(spec, pool, seed, 4, table.models)
    runs = asyncio.run(run_policy(policy, items, pool_target(pool, table, False, "t"), True))
    rows = [score_run(i, r, pool, table.models) for i, r in zip(items, runs)]
    return policy.name, rows, aggregate(rows)


@pytest.mark.parametrize("spec,name,acc,cost", [
    ("single:Big", "single:Big", 0.75, 0.025),
    ("single:Mid", "single:Mid", 0.25, 0.0025),
    ("single:m-small", "single:Small", 0.25, 0.00015),
    ("cheapest", "cheapest (Small)", 0.25, 0.00015),
    ("most-expensive", "most-expensive (Big)", 0.75, 0.025),
    ("largest", "largest (Big)", 0.75, 0.025),
    ("oracle", "oracle", 0.75, 0.010375),
])
def test_baseline_numbers(world, spec, name, acc, cost):
    got, rows, s = evaluate(world, spec)
    assert got == name
    assert s["n"] == 4 and s["accuracy"] == pytest.approx(acc) and s["cost_usd"] == pytest.approx(cost)
    assert s["calls_per_q"] == 1.0 and s["em"] is None


def test_oracle_choices_and_failed_call(world):
    _, rows, s = evaluate(world, "oracle")
    assert [r["models"] for r in rows] == [["Mid"], ["Small"], ["Small"], ["Big"]]
    assert [r["accuracy"] for r in rows] == [1.0, 1.0, 0.0, 1.0]
    _, rows, s = evaluate(world, "cheapest")
    assert rows[3]["failed_calls"] == 1 and rows[3]["answer"] is None and rows[3]["cost_usd"] == 0.0
    assert s["failed_call_rate"] == pytest.approx(0.25)


def test_random_is_deterministic_per_seed(world):
    a = [r["models"] for r in evaluate(world, "random", seed=1)[1]]
    assert a == [r["models"] for r in evaluate(world, "random", seed=1)[1]]
    many = {tuple(m) for s in range(8) for m in (r["models"] for r in evaluate(world, "random", seed=s)[1])}
    assert len(many) == 3  # every model gets picked for some question and seed


def test_oracle_needs_labels(world):
    from router_r1.evaluation.baselines import EvalItem, make_direct_baseline

    pool, _, table = world
    with pytest.raises(ValueError, match="needs replay labels"):
        make_direct_baseline("oracle", pool, table_models=table.models).choose(EvalItem("q", "x"))
    with pytest.raises(ValueError, match="unknown baseline"):
        make_direct_baseline("smartest", pool)


def test_oracle_takes_the_best_graded_score(world):
    """Issue 27: with graded scores the oracle takes the cheapest model of the question's best
    score, not the cheapest with any score above 0."""
    from router_r1.evaluation.baselines import oracle_choice
    from router_r1.worlds.replay.tables import Answer, ReplaySample, model_ids

    pool, _, table = world
    cols = model_ids(pool, table.models)
    s = ReplaySample("g", "graded", "q", {"m-big": Answer("a", 0.9, 0.01), "m-mid": Answer("b", 0.9, 0.001),
                                           "m-small": Answer("c", 0.2, 0.0001)})
    assert oracle_choice(pool, s, cols) == "Mid"  # 0.9 twice: the cheaper; not Small's 0.2
    s.answers["m-big"] = Answer("a", 1.0, 0.01)
    assert oracle_choice(pool, s, cols) == "Big"
    for m in s.answers:
        s.answers[m] = Answer("x", 0.0, s.answers[m].cost)
    assert oracle_choice(pool, s, cols) == "Small"  # nothing scores: the cheapest


def test_largest_refuses_unknown_sizes_and_says_which_are_unknown(world):
    """Issue 27: `largest` with no size known used to become `most-expensive` silently."""
    from router_r1.evaluation.baselines import NoKnownSize, make_direct_baseline

    pool = world[0]
    unsized = pool.model_copy(update={"models": [m.model_copy(update={"params_b": None}) for m in pool.models]})
    with pytest.raises(NoKnownSize, match="no model of pool 'tiny' has a known size"):
        make_direct_baseline("largest", unsized)
    some = pool.model_copy(update={"models": [m.model_copy(update={"params_b": None}) if m.name == "Big" else m
                                              for m in pool.models]})
    policy = make_direct_baseline("largest", some)
    assert policy.name == "largest (Mid)"
    assert policy.notes == ["largest: unknown size for Big; Mid is the largest of the 2 models of known size"]
    assert make_direct_baseline("largest", pool).notes == []


def test_pareto_frontier_excludes_dominated_and_oracle():
    pts = [Point("a", 1.0, 0.5), Point("b", 2.0, 0.7), Point("c", 3.0, 0.6), Point("d", 0.5, 0.4),
           Point("oracle", 0.1, 1.0), Point("e", 2.0, 0.7)]
    assert [p.name for p in pareto_frontier(pts)] == ["d", "a", "b", "e"]


def test_same_numbers_through_the_ray_actor(world, ray_local):
    import ray

    from pipelines.evaluate import pool_target, run_policy
    from router_r1.evaluation.baselines import make_direct_baseline

    pool, items, table = world
    actor = pool_target(pool, table, True, "ray_baseline_test", actor_cpus=0)
    try:
        runs = asyncio.run(run_policy(make_direct_baseline("oracle", pool, table_models=table.models),
                                      items, actor, True))
        s = aggregate([score_run(i, r, pool, table.models) for i, r in zip(items, runs)])
        assert s["accuracy"] == pytest.approx(0.75) and s["cost_usd"] == pytest.approx(0.010375)
    finally:
        ray.kill(actor)


@pytest.mark.parametrize("reply, answer", [
    ("<answer> Paris </answer>", "Paris"),
    ("Let me think. <answer>Lyon</answer> Actually, <answer> Paris </answer>", "Paris"),  # the last one
    ("<ANSWER>Paris</ANSWER>", "Paris"),
    ("<answer> George Orwell", "George Orwell"),  # cut off before </answer>
    ("The answer is Paris.", "Paris"),
    ("Reasoning first.\nSo the final answer is: Barack Obama.", "Barack Obama"),
    ("Answer: 1945", "1945"),
    ("A: 1945.", "1945"),
    ("Paris", "Paris"),
    ("Paris.", "Paris"),
    ("**Paris**", "Paris"),
    ('"Paris"', "Paris"),
    ("Paris. It is the capital and largest city of France.", "Paris"),
    ("Paris\n\nParis has been the capital since 987.", "Paris"),
    ("J. K. Rowling. She wrote the series.", "J. K. Rowling"),  # initials do not end a sentence
    ("St. Louis, Missouri.", "St. Louis, Missouri"),
    ("The U.S. Navy", "The U.S. Navy"),
    ("", ""),
])
def test_extract_final_answer(reply, answer):
    from router_r1.evaluation.baselines import extract_final_answer

    assert extract_final_answer(reply) == answer


def test_direct_baselines_on_qa_use_the_paper_answer_format():
    """A QA item is asked in DIRECT_PROMPT and scored on the extracted short answer; the bare
    question and the whole reply (the old behaviour) score EM 0 against a chat model."""
    from router_r1.evaluation.baselines import DIRECT_PROMPT, DirectPolicy, EvalItem
    from router_r1.pool.types import CallResult, CallStatus

    sent: list[str] = []

    async def chat_model(model: str, query: str, episode_id: str | None = None) -> CallResult:
        sent.append(query)  # a chat model: tags when asked for them, a sentence otherwise
        text = "<answer> George Orwell </answer>" if "<answer>" in query else "The author is George Orwell."
        return CallResult(model=model, text=text, prompt_tokens=10, completion_tokens=5)

    items = [EvalItem("q1", "  Who wrote 1984? ", ["George Orwell"])]
    (run,) = asyncio.run(DirectPolicy("single:Big", lambda it: "Big").run(items, chat_model))
    assert sent == [DIRECT_PROMPT.format(question="Who wrote 1984?")]
    assert sent[0].endswith("Question: Who wrote 1984?") and "<answer> Beijing </answer>" in sent[0]
    assert run.answer == "George Orwell" and run.meta["reply"] == "<answer> George Orwell </answer>"
    row = score_run(items[0], run, load_pool_from_dict(), [])
    assert row["em"] == 1.0 and row["f1"] == 1.0

    async def failing(model: str, query: str, episode_id: str | None = None) -> CallResult:
        return CallResult(model=model, status=CallStatus.TIMEOUT, error="slow")

    (run,) = asyncio.run(DirectPolicy("single:Big", lambda it: "Big").run(items, failing))
    assert run.answer is None


def test_direct_baselines_on_replay_keep_the_bare_question_and_reply(world):
    """Replay items: the recorded answers reply to the dataset's own prompt, so the question goes
    out bare and the reply is the answer (the adoption rule scores it)."""
    from router_r1.evaluation.baselines import DirectPolicy
    from router_r1.pool.types import CallResult

    _, items, _ = world
    sent: list[str] = []

    async def call(model: str, query: str, episode_id: str | None = None) -> CallResult:
        sent.append(query)
        return CallResult(model=model, text=f"reply to {query}")

    runs = asyncio.run(DirectPolicy("single:Big", lambda it: "Big").run(items, call))
    assert sent == [it.question for it in items]
    assert [r.answer for r in runs] == [f"reply to {it.question}" for it in items]


def load_pool_from_dict():
    from router_r1.pool.descriptors import PoolSpec

    return PoolSpec.model_validate({"models": [{"name": "Big", "price": 1.0}]})
