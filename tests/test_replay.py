"""Replay world: loading RouterBench/RouteLLM tables, the replay backend's lookups and billing,
the deterministic split, and the answer-adoption outcome rule."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from routerbench_tiny import response, shared_data_dir, write_pool, write_routerbench  # noqa: F401

from router_r1.pool.descriptors import load_pool
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus
from router_r1.worlds.base import DataError
from router_r1.worlds.replay.tables import (ReplayTable, adopted_call, adopted_outcome, load_long,
                                            load_routerbench, split_samples)


def test_routerbench_long_table(tmp_path):
    t = load_routerbench(write_routerbench(tmp_path / "tiny.csv"))
    assert t.num_rows == 12 and t.schema.names == ["sample_id", "eval_name", "prompt", "model", "response",
                                                    "correct", "cost", "prompt_tokens", "completion_tokens"]
    assert set(t.column("prompt_tokens").to_pylist()) == {None}  # RouterBench records no token counts
    rows = {(r["sample_id"], r["model"]): r for r in t.to_pylist()}
    assert rows[("t.1", "m-mid")]["response"] == response("m-mid", "t.1")
    assert rows[("t.1", "m-mid")]["cost"] == 0.001 and rows[("t.1", "m-small")]["correct"] == 0.0
    assert rows[("t.4", "m-small")]["correct"] is None and rows[("t.4", "m-small")]["response"] is None
    assert rows[("t.2", "m-big")]["prompt"] == "What is 2 + 2?\nA) 3\nB) 4"


def test_schema_errors_name_file_row_column(tmp_path):
    p = write_routerbench(tmp_path / "bad.csv")
    text = p.read_text().splitlines()
    text[2] = text[2].replace("['What is 2 + 2?", "[What is 2 + 2?")  # row 1: broken literal
    p.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"bad.csv: row 1: column 'prompt'"):
        load_routerbench(p)
    q = tmp_path / "nocost.csv"
    q.write_text("sample_id,prompt,eval_name,m,m|model_response\n1,['x'],e,1,['y']\n")
    with pytest.raises(DataError, match=r"model 'm' has no column 'm\|total_cost'"):
        load_long(q)


def test_routellm_table_has_no_cost(tmp_path):
    p = tmp_path / "gsm.csv"
    p.write_text('prompt,a,b,a_response,b_response\n"What is 3+4?",True,False,"7","8"\n')
    rows = load_long(p).to_pylist()
    assert [(r["model"], r["correct"], r["cost"], r["response"]) for r in rows] == [
        ("a", 1.0, None, "7"), ("b", 0.0, None, "8")]


def test_long_parquet_is_an_input_format_with_optional_token_counts(tmp_path):
    """The long table as a user's own file: the seven columns, token counts optional."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"sample_id": "1", "eval_name": "math", "prompt": "What is 3+4?", "model": "m-big",
             "response": "7", "correct": 1.0, "cost": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "plain.parquet")
    pq.write_table(pa.Table.from_pylist([rows[0] | {"prompt_tokens": 12, "completion_tokens": 3}]),
                   tmp_path / "tokens.parquet")
    plain, tokens = (ReplayTable.from_files([tmp_path / f"{n}.parquet"]) for n in ("plain", "tokens"))
    assert plain.samples[0].answers["m-big"].prompt_tokens is None
    a = tokens.samples[0].answers["m-big"]
    assert (a.response, a.correct, a.cost, a.prompt_tokens, a.completion_tokens) == ("7", 1.0, None, 12, 3)
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in rows[0].items() if k != "correct"}]),
                   tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: missing columns \['correct'\]"):
        load_long(tmp_path / "bad.parquet")


@pytest.mark.parametrize("row, message", [
    ({"eval_name": "e", "prompt": "q", "model": "m", "correct": 1}, "row 0: field 'sample_id' is empty"),
    ({"sample_id": "1", "eval_name": "e", "prompt": "q", "model": "m", "correct": 1.5}, "graded score in \\[0, 1\\]"),
    ({"sample_id": "1", "eval_name": "e", "prompt": "q", "model": "m", "correct": 1, "cost": -1}, "non-negative USD"),
    ({"sample_id": "1", "eval_name": "e", "prompt": "q", "model": "m", "correct": 1, "prompt_tokens": 2.5},
     "'prompt_tokens' must be a non-negative integer"),
    ({"sample_id": "1", "eval_name": "e", "prompt": "q", "model": "m", "score": 1}, "unknown fields \\['score'\\]"),
])
def test_table_from_rows_refuses_what_does_not_fit(row, message):
    with pytest.raises(DataError, match=message):
        ReplayTable.from_rows([row], where="MyWorld")


def test_recorded_token_counts_price_a_call_without_cost(tmp_path):
    """A recorded answer with token counts and no cost is billed from the descriptor's prices
    and those counts, by the backend and by the baselines' cost estimate alike."""
    from router_r1.pool.core import PoolCore
    from router_r1.pool.cost import call_cost
    from router_r1.worlds.replay.backend import ReplayBackend
    from router_r1.worlds.replay.routing import sample_cost

    pool = load_pool(write_pool(tmp_path / "pool.yaml", []))
    table = ReplayTable.from_rows([{"sample_id": "1", "eval_name": "e", "prompt": "What is 3+4?", "model": "m-mid",
                                    "response": "7", "correct": 0.5, "prompt_tokens": 1000, "completion_tokens": 10}])
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=None, cache=False),
                    backends={"replay": ReplayBackend(pool, table=table)})
    res = asyncio.run(core.call("Mid", "What is 3+4?"))
    want = call_cost(pool["Mid"], 1000, 10)
    assert res.ok and (res.prompt_tokens, res.completion_tokens) == (1000, 10) and res.cost_usd == pytest.approx(want)
    assert sample_cost(pool, pool["Mid"], table.samples[0], "m-mid") == pytest.approx(want)


def _pool_core(tmp_path, csv):
    from router_r1.pool.core import PoolCore

    pool = load_pool(write_pool(tmp_path / "pool.yaml", [csv]))
    return pool, PoolCore(pool, PoolRuntimeConfig(ledger_dir=None, cache=False))


def test_replay_backend_lookup_and_recorded_cost(tmp_path):
    csv = write_routerbench(tmp_path / "tiny.csv")
    pool, core = _pool_core(tmp_path, csv)

    async def go():
        ok = await core.call("Mid", "  What is 2 + 2?\nA) 3\n B) 4 ")  # whitespace does not matter
        alias = await core.call("m-big", "What is 2 + 2?\nA) 3\nB) 4")
        miss = await core.call("Mid", "What is 3 + 3?")
        none = await core.call("Small", ROWS_Q4)
        return ok, alias, miss, none

    ROWS_Q4 = "The trophy does not fit in the suitcase because the _ is too big.\nA) trophy\nB) suitcase"
    ok, alias, miss, none = asyncio.run(go())
    assert ok.ok and ok.text == response("m-mid", "t.2") and ok.cost_usd == pytest.approx(0.002)
    assert ok.meta["correct"] == 0.0
    assert alias.ok and alias.model == "Big" and alias.cost_usd == pytest.approx(0.02)
    assert miss.status is CallStatus.INVALID_REQUEST and "not in the replay tables" in miss.error
    assert miss.attempts == 1 and miss.cost_usd == 0.0
    assert none.status is CallStatus.INVALID_REQUEST and "no recorded answer" in none.error


def test_replay_backend_prices_sources_without_cost(tmp_path):
    from router_r1.pool.core import PoolCore
    from router_r1.pool.cost import call_cost

    p = tmp_path / "gsm.csv"
    p.write_text('prompt,m-big,m-mid,m-big_response,m-mid_response\n"What is 3+4?",True,False,"It is 7","8"\n')
    pool = load_pool(write_pool(tmp_path / "pool.yaml", [p]))
    res = asyncio.run(PoolCore(pool, PoolRuntimeConfig(ledger_dir=None, cache=False)).call("Big", "What is 3+4?"))
    assert res.ok and res.text == "It is 7"
    assert res.cost_usd == pytest.approx(call_cost(pool["Big"], res.prompt_tokens, res.completion_tokens))
    assert res.cost_usd > 0


def test_split_is_deterministic_and_disjoint(tmp_path):
    t = ReplayTable.from_files([write_routerbench(tmp_path / "tiny.csv")])
    tr, va = split_samples(t.samples, "train", 0.5), split_samples(t.samples, "val", 0.5)
    assert {s.sample_id for s in tr} | {s.sample_id for s in va} == {"t.1", "t.2", "t.3", "t.4"}
    assert not {s.sample_id for s in tr} & {s.sample_id for s in va}
    assert [s.sample_id for s in split_samples(list(reversed(t.samples)), "val", 0.5)] == \
        [s.sample_id for s in reversed(va)]
    with pytest.raises(ValueError, match="unknown split"):
        split_samples(t.samples, "test")


def test_adoption_rule(tmp_path):
    pool = load_pool(write_pool(tmp_path / "pool.yaml", [tmp_path / "x.csv"]))
    replies = [("Big", "The answer is B) 4."), ("Small", "A")]
    assert adopted_call("m-big", replies, pool) == 0  # names a called model (alias)
    assert adopted_call("Mid", replies, pool) is None  # names a model it did not call
    assert adopted_call("A", replies, pool) == 1  # reproduces a reply (articles kept: 'A' is no article)
    assert adopted_call("b 4", replies, pool) == 0  # contained in a reply, whole tokens
    assert adopted_call("the answer is b) 4", replies, pool) == 0  # normalised equality
    assert adopted_call("Paris", replies, pool) is None
    assert adopted_call(None, replies, pool) is None and adopted_call("A", [], pool) is None
    assert adopted_outcome("A", replies, [1.0, 0.0], pool) == (0.0, 1)
    assert adopted_outcome("m-big", replies, [1.0, 0.0], pool) == (1.0, 0)
    long = [("Big", "def prime(n): return sieve(n)[n] # uses a sieve of eratosthenes")]
    assert adopted_call("def prime(n): return sieve(n)[n]", long, pool) == 0  # containment
    assert adopted_call("sieve of primes", long, pool) is None  # token F1 .27 < .5
    assert adopted_call("capital France Paris city", [("Mid", "The capital of France is Paris")], pool) == 0


def test_real_routerbench_tables(shared_data_dir):
    t = ReplayTable.from_files(sorted((shared_data_dir / "routerbench").glob("*.csv")))
    assert len(t) == 1039 + 299 + 887 and len(t.models) == 11
    pool = load_pool(Path(__file__).parents[1] / "configs" / "pool_routerbench.yaml")
    from router_r1.worlds.replay.tables import model_ids

    assert set(model_ids(pool, t.models).values()) == set(t.models)
    va = split_samples(t.samples, "val")
    assert 0.15 < len(va) / len(t) < 0.25


def test_real_routerbench_through_the_pool(shared_data_dir):
    from pipelines.evaluate import load_dataset, pool_target, run_policy
    from router_r1.evaluation.baselines import make_direct_baseline

    pool = load_pool(Path(__file__).parents[1] / "configs" / "pool_routerbench.yaml")
    name, items, table = load_dataset([shared_data_dir / "routerbench" / "mbpp_train.csv"], "val", 0.2, 0, 12)
    assert name == "mbpp_train[val]" and len(items) == 12
    runs = asyncio.run(run_policy(make_direct_baseline("single:gpt-4-1106-preview", pool), items,
                                  pool_target(pool, table, False, "real"), True))
    for it, r in zip(items, runs):
        rec = it.sample.answers["gpt-4-1106-preview"]
        assert r.answer == rec.response and r.calls[0].cost_usd == pytest.approx(rec.cost)
