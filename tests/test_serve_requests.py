"""The Serve request boundary without Ray: what a client can send is refused per request, with a
400 in OpenAI's error shape, before it reaches a shared batch or a tokenizer (issue 14)."""
from __future__ import annotations

import json

import pytest

from deployments.openai_api import MAX_DEPTH, APIError, ChatCompletionRequest, parse_request, request_schema

Q = [{"role": "user", "content": "q"}]


def body(**extra) -> bytes:
    return json.dumps({"model": "router-r1", "messages": Q, **extra}).encode()


@pytest.mark.parametrize("raw, param", [
    (b"[" * 100_000 + b"]" * 100_000, None),  # 100,000 deep: was a 500 RecursionError
    (b'{"a":' * (MAX_DEPTH + 5) + b"1" + b"}" * (MAX_DEPTH + 5), "a." * MAX_DEPTH + "a"),
    (json.dumps({"model": "router-r1", "messages": [{"role": "user", "content": "who \ud800?"}]}).encode(),
     "messages.0.content"),
    (json.dumps({"model": "router-r1", "messages": Q, "user": {"\udfff": 1}}).encode(), "user.?"),
    (body(temperature="0.5"), "temperature"),
    (body(top_p="1"), "top_p"),
    (body(max_tokens="16"), "max_tokens"),
    (body(max_tokens=16.5), "max_tokens"),
    (body(max_tokens=True), "max_tokens"),
    (body(max_turns="2"), "max_turns"),
    (body(max_cost_usd="0.01"), "max_cost_usd"),
    (body(seed="7"), "seed"),
    (body(n=2), "n"),
    (body(n="1"), "n"),
])
def test_bad_bodies_are_400_naming_the_field(raw, param):
    with pytest.raises(APIError) as e:
        parse_request(raw)
    assert e.value.status == 400 and e.value.param == param
    json.dumps(e.value.body(), ensure_ascii=False).encode("utf-8")  # the reply itself can be sent


def test_numbers_as_numbers_and_n_1_are_fine():
    r = parse_request(body(temperature=1, top_p=0.5, max_tokens=16, n=1, max_cost_usd=0, seed=3))
    assert r.temperature == 1.0 and r.n == 1 and r.max_tokens == 16
    assert parse_request(json.dumps({"model": "router-r1", "messages": [
        {"role": "user", "content": "emoji \U0001F600 and 北京"}]}).encode()).question() == "emoji \U0001F600 and 北京"


def test_request_schema_is_published_self_contained():
    s = request_schema()
    assert "$ref" not in json.dumps(s) and "$defs" not in s
    props = s["properties"]
    assert {"model", "messages", "temperature", "max_turns", "models", "max_cost_usd", "n"} <= set(props)
    assert set(s["required"]) == {"model", "messages"}
    assert props["messages"]["items"]["properties"]["role"]["enum"][:3] == ["system", "developer", "user"]
    ChatCompletionRequest.model_validate({"model": "m", "messages": Q})


# -- per-request isolation in the batched generation ---------------------------------------------
def test_a_failing_batch_is_retried_item_by_item_so_only_the_bad_item_fails():
    import asyncio

    from deployments.router import generate_isolated
    from router_r1.env.generation import Generation

    calls = []

    def generate(contexts, max_new_tokens, temperature, top_p):
        calls.append(len(contexts))
        if any(-1 in c for c in contexts):
            raise ValueError("token id -1 out of range")
        return [Generation(ids=[len(c)], text="ok") for c in contexts]

    g = (0.0, 1.0, 8)
    items = [([1, 2], g), ([3, -1], g), ([4], g), ([5], (0.7, 1.0, 8))]
    out = asyncio.run(generate_isolated(generate, items))
    assert [type(x).__name__ for x in out] == ["Generation", "ValueError", "Generation", "Generation"]
    assert out[0].ids == [2] and out[2].ids == [1] and out[3].ids == [1]
    assert calls == [3, 1, 1, 1, 1]  # the greedy group failed once, then went one by one


def test_a_prompt_longer_than_the_context_window_is_413_from_token_counts():
    from deployments.service import RouterService
    from router_r1.engines.model import train_tokenizer
    from router_r1.infra.config import RunConfig
    from router_r1.pool.descriptors import PoolSpec

    async def unused(*a, **k):
        raise AssertionError("planning generates nothing")

    tok = train_tokenizer(["who wrote the book zelix and when"] * 20, vocab_size=120)
    pool = PoolSpec.model_validate({"models": [{"name": "A", "price": 1.0, "backend": {"kind": "simulated"}}]})
    cfg = RunConfig()
    service = RouterService(pool, cfg.serve, cfg.episode, tok, unused, unused)
    short = ChatCompletionRequest(model=cfg.serve.model_name, messages=Q)
    need = len(service.plan(short, "t").prompt_ids) + cfg.episode.max_new_tokens
    service.max_context = need + 20  # the short question fits, with 20 tokens to spare
    service.plan(short, "t")
    # Well under serve.max_prompt_chars, but more tokens than the window holds.
    long = ChatCompletionRequest(model=cfg.serve.model_name,
                                 messages=[{"role": "user", "content": "zq " * 400}])
    assert len(long.question()) < cfg.serve.max_prompt_chars
    with pytest.raises(APIError) as e:
        service.plan(long, "t")
    assert e.value.status == 413 and e.value.code == "context_length_exceeded" and "tokens" in e.value.message


@pytest.mark.parametrize("value", [b"Infinity", b"-Infinity", b"NaN", b"1e999"])
def test_max_cost_usd_must_be_finite(value):
    raw = b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "max_cost_usd": ' + value + b"}"
    with pytest.raises(APIError) as e:
        parse_request(raw)
    assert e.value.status == 400 and e.value.param == "max_cost_usd"
