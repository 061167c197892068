"""The OpenAI-compatible HTTP backend against the fake server, one attempt at a time."""
from __future__ import annotations

import asyncio

import pytest

from fake_openai_server import fake_openai, fake_openai_session  # noqa: F401  (fixtures)
from router_r1.backends import make_backend
from router_r1.backends.base import BackendError
from router_r1.backends.openai_http import OpenAIBackend, expand_env, parse_retry_after
from router_r1.config import PoolRuntimeConfig
from router_r1.descriptors import PoolSpec
from router_r1.pool import PoolCore
from router_r1.pool.ledger import read_records
from router_r1.types import CallStatus

MSG = [{"role": "user", "content": "what is two plus two"}]


def pool_at(base_url: str, **backend) -> PoolSpec:
    return PoolSpec.model_validate({"models": [
        {"name": "Display", "price": 1.0, "limits": {"backoff_base_s": 0.01},
         "backend": {"kind": "openai", "base_url": base_url, "api_model": "org/model-x", **backend}}]})


def attempt(pool: PoolSpec, **options):
    async def main():
        be = make_backend("openai", pool, **options)
        try:
            return await be.complete(pool["Display"], MSG, {"max_tokens": 16})
        finally:
            await be.close()
    return asyncio.run(main())


def test_env_expansion(monkeypatch):
    monkeypatch.delenv("RR1_TEST_URL", raising=False)
    assert expand_env("${RR1_TEST_URL:-http://x/v1}/y") == "http://x/v1/y"
    monkeypatch.setenv("RR1_TEST_URL", "http://h:1/v1")
    assert expand_env("${RR1_TEST_URL:-http://x/v1}") == "http://h:1/v1"
    assert expand_env("${RR1_TEST_URL}") == "http://h:1/v1"


def test_retry_after_parsing():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_reply_usage_and_api_model_and_key(fake_openai, monkeypatch):
    monkeypatch.setenv("RR1_FAKE_KEY", "sk-secret-123")
    monkeypatch.setenv("RR1_FAKE_URL", fake_openai.url)
    reply = attempt(pool_at("${RR1_FAKE_URL:-http://127.0.0.1:9/v1}", api_key_env="RR1_FAKE_KEY"))
    assert reply.text == "org/model-x answers: what is two plus two"
    assert (reply.prompt_tokens, reply.completion_tokens) == (5, 7)
    assert fake_openai.count("org/model-x") == 1 and fake_openai.log[0]["bearer"]


def test_missing_key_variable_is_a_clear_non_retryable_error(fake_openai, monkeypatch):
    monkeypatch.delenv("RR1_ABSENT_KEY", raising=False)
    with pytest.raises(BackendError) as e:
        attempt(pool_at(fake_openai.url, api_key_env="RR1_ABSENT_KEY"))
    assert not e.value.retryable and "RR1_ABSENT_KEY" in str(e.value)
    assert fake_openai.count() == 0


@pytest.mark.parametrize("mode,status,retryable", [
    ("429", CallStatus.RATE_LIMITED, True), ("500", CallStatus.HTTP_ERROR, True),
    ("malformed", CallStatus.BAD_RESPONSE, False), ("incomplete", CallStatus.BAD_RESPONSE, False),
    ("drop", CallStatus.CONNECTION_ERROR, True)])
def test_failures_map_to_typed_backend_errors(fake_openai, mode, status, retryable):
    fake_openai.set("org/model-x", mode, retry_after=7)
    with pytest.raises(BackendError) as e:
        attempt(pool_at(fake_openai.url))
    assert e.value.status is status and e.value.retryable is retryable
    if mode == "429":
        assert e.value.retry_after == 7 and e.value.http_status == 429


def test_connection_refused_is_retryable():
    with pytest.raises(BackendError) as e:
        attempt(pool_at("http://127.0.0.1:9/v1"))  # nothing listens on the discard port
    assert e.value.status is CallStatus.CONNECTION_ERROR and e.value.retryable


def test_missing_usage_is_estimated_and_flagged(fake_openai):
    fake_openai.set("org/model-x", "no_usage")
    reply = attempt(pool_at(fake_openai.url))
    assert reply.meta["usage_estimated"] and reply.prompt_tokens > 0 and reply.completion_tokens > 0


def test_api_key_never_reaches_errors_or_the_ledger(fake_openai, monkeypatch, tmp_path):
    secret = "sk-do-not-leak-42"
    monkeypatch.setenv("RR1_FAKE_KEY", secret)
    pool = pool_at(fake_openai.url, api_key_env="RR1_FAKE_KEY")
    fake_openai.set("org/model-x", "500")
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=str(tmp_path)), "run")

    async def main():
        r = await core.call("Display", "hello")
        await core.close()
        return r

    r = asyncio.run(main())
    assert r.status is CallStatus.HTTP_ERROR
    assert secret not in repr(r)
    assert all(secret not in repr(rec) for rec in read_records(tmp_path))
    assert all(secret not in p.read_bytes().decode("latin-1") for p in tmp_path.iterdir())


def test_one_shared_session_for_all_calls(fake_openai):
    pool = pool_at(fake_openai.url)

    async def main():
        be = OpenAIBackend(pool)
        await asyncio.gather(*(be.complete(pool["Display"], MSG, {}) for _ in range(5)))
        s = be._session
        await be.complete(pool["Display"], MSG, {})
        same = be._session is s
        await be.close()
        return same

    assert asyncio.run(main())
