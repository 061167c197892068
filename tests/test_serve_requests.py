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
    (body(max_tokens=16.0), "max_tokens"),
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
