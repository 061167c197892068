"""The OpenAI-compatible HTTP backend against the fake server, one attempt at a time."""
from __future__ import annotations

import asyncio

import pytest
from fake_openai_server import fake_openai, fake_openai_session  # noqa: F401  (fixtures)

from router_r1.pool.backends import make_backend
from router_r1.pool.backends.base import BackendError
from router_r1.pool.backends.openai_http import OpenAIBackend, expand_env, parse_retry_after
from router_r1.pool.core import PoolCore
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.ledger import read_records
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus

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


def test_missing_key_variable_is_reported_once_at_load_not_per_call(fake_openai, monkeypatch, tmp_path):
    monkeypatch.delenv("RR1_ABSENT_KEY", raising=False)
    with pytest.raises(BackendError) as e:
        attempt(pool_at(fake_openai.url, api_key_env="RR1_ABSENT_KEY"))
    assert not e.value.retryable and e.value.status is CallStatus.NOT_CONFIGURED
    pool = pool_at(fake_openai.url, api_key_env="RR1_ABSENT_KEY")
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=str(tmp_path)), "run")
    assert core.config_errors == {"Display": "API key variable RR1_ABSENT_KEY is not set"}
    r = asyncio.run(core.call("Display", "hello"))
    assert r.status is CallStatus.NOT_CONFIGURED and r.attempts == 0 and "RR1_ABSENT_KEY" not in r.error
    assert fake_openai.count() == 0


def test_unset_url_variable_is_refused_at_load_and_never_retried(fake_openai, monkeypatch):
    monkeypatch.delenv("RR1_NO_SUCH_URL", raising=False)
    with pytest.raises(ValueError, match=r"\$\{RR1_NO_SUCH_URL\}.*not set"):
        pool_at("${RR1_NO_SUCH_URL}/v1")
    monkeypatch.setenv("RR1_NO_SUCH_URL", fake_openai.url)
    pool = pool_at("${RR1_NO_SUCH_URL}")
    monkeypatch.delenv("RR1_NO_SUCH_URL")  # unset after load (another process's environment)
    core = PoolCore(pool, PoolRuntimeConfig(), "run")
    r = asyncio.run(core.call("Display", "hello"))
    assert r.status is CallStatus.NOT_CONFIGURED and r.attempts == 1


def call_keyed_once(fake_openai, ledger_dir):
    """One call through a pool whose key is RR1_FAKE_KEY, the core closed after it (ledger flushed)."""
    core = PoolCore(pool_at(fake_openai.url, api_key_env="RR1_FAKE_KEY"),
                    PoolRuntimeConfig(ledger_dir=str(ledger_dir)), "run")

    async def main():
        r = await core.call("Display", "hello")
        await core.close()
        return r

    return asyncio.run(main())


def test_provider_echoing_the_key_across_byte_200_leaks_no_part_of_it(fake_openai, monkeypatch, tmp_path):
    from router_r1.env.episode import error_information
    from router_r1.util.redact import leaks

    secret = "sk-PROBE-SECRET-0123456789abcdef"
    monkeypatch.setenv("RR1_FAKE_KEY", secret)
    fake_openai.set("org/model-x", "echo_key")
    r = call_keyed_once(fake_openai, tmp_path)
    assert r.status is CallStatus.HTTP_ERROR and r.meta["http_status"] == 401
    # The router's context gets the status, never the provider's body.
    info = error_information(r)
    assert "Incorrect API key" not in info and leaks(info, secret) == []
    assert leaks(repr(r), secret) == []
    (rec,) = read_records(tmp_path)
    assert "Incorrect API key provided" in rec["error"] and leaks(repr(rec), secret) == []
    for p in tmp_path.iterdir():
        assert leaks(p.read_bytes().decode("latin-1"), secret) == []


def test_reported_usage_is_capped_flagged_and_budget_holds(fake_openai, tmp_path):
    pool = pool_at(fake_openai.url, max_tokens=16)
    cap = 1e-3
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=str(tmp_path), run_budget_usd=cap, cache=False), "run")
    fake_openai.set("org/model-x", "huge_usage")

    async def main():
        rs = await asyncio.gather(*(core.call("Display", f"question {i}") for i in range(50)))
        fake_openai.set("org/model-x", "overlong")
        rs.append(await core.call("Display", "one more", context={"run_id": "other"}))
        await core.close()
        return rs

    rs = asyncio.run(main())
    worst = max(r.cost_usd for r in rs)
    assert worst < 1e-3  # not $2,000,000: at most the sent bytes and max_tokens are billed
    big = rs[0]
    assert big.ok and big.completion_tokens == 16 and big.prompt_tokens < 100
    assert big.meta["anomaly"].startswith("usage capped")
    assert rs[-1].completion_tokens == 16 and "completion_tokens 160 > max_tokens 16" in rs[-1].meta["anomaly"]
    recs = [r for r in read_records(tmp_path) if r["run_id"] == "run"]
    assert sum(r["cost_usd"] for r in recs) <= cap + worst
    assert any(r.status is CallStatus.BUDGET_EXCEEDED for r in rs[:50])  # the cap did bind
    assert all(r["anomaly"] for r in recs if r["status"] == "ok")


def test_every_attempt_carries_the_calls_idempotency_key(fake_openai, tmp_path):
    fake_openai.set("org/model-x", "500", times=2)
    core = PoolCore(pool_at(fake_openai.url), PoolRuntimeConfig(ledger_dir=str(tmp_path), cache=False), "run")

    async def main():
        a = await core.call("Display", "hello")
        b = await core.call("Display", "hello")
        await core.close()
        return a, b

    a, b = asyncio.run(main())
    assert a.ok and a.attempts == 3
    keys = [r["idempotency_key"] for r in fake_openai.log]
    assert keys[0] and keys[:3] == [keys[0]] * 3 and keys[3] != keys[0]  # retries share, calls differ
    recs = read_records(tmp_path)
    assert [r["idempotency_key"] for r in recs] == [keys[0], keys[3]]
    assert a.meta["idempotency_key"] == keys[0]


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


def test_a_reply_with_a_lone_surrogate_becomes_valid_unicode(fake_openai):
    async def main():
        be = make_backend("openai", pool_at(fake_openai.url))
        try:
            return await be.complete(pool_at(fake_openai.url)["Display"],
                                     [{"role": "user", "content": "who \ud800 is"}], {"max_tokens": 16})
        finally:
            await be.close()

    reply = asyncio.run(main())
    assert reply.text == "org/model-x answers: who \ufffd is"
    reply.text.encode("utf-8")  # a tokenizer can take it


# -- issue 24: bounded and same-origin; a key in a 200 reply --------------------------------------
async def _call_and_close(core, *args):
    try:
        return await core.call(*args)
    finally:
        await core.close()


def test_a_redirect_to_another_origin_is_refused_before_the_prompt_goes_there(fake_openai, tmp_path):
    from fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as other:  # another port on 127.0.0.1: another origin
        fake_openai.set("org/model-x", "redirect", location=other.url + "/chat/completions")
        with pytest.raises(BackendError) as e:
            attempt(pool_at(fake_openai.url))
        assert e.value.status is CallStatus.HTTP_ERROR and not e.value.retryable
        assert e.value.http_status == 307 and "another origin" in str(e.value)
        core = PoolCore(pool_at(fake_openai.url), PoolRuntimeConfig(ledger_dir=str(tmp_path), cache=False), "run")
        r = asyncio.run(_call_and_close(core, "Display", "hello"))
        assert r.status is CallStatus.HTTP_ERROR and r.cost_usd == 0 and r.attempts == 1
        assert other.count() == 0  # the prompt (and a key) never reached it
    # A 307 to the same origin keeps the method and body: followed.
    fake_openai.set("org/model-x", "redirect", location=fake_openai.url + "/chat/completions?moved=1", times=1)
    assert attempt(pool_at(fake_openai.url)).text.startswith("org/model-x answers")


def test_a_20_mb_reply_is_not_read_whole_and_is_billed_at_its_cap(fake_openai, tmp_path):
    fake_openai.set("org/model-x", "huge_reply", size_bytes=20_000_000)
    with pytest.raises(BackendError) as e:
        attempt(pool_at(fake_openai.url))
    assert e.value.status is CallStatus.BAD_RESPONSE and e.value.bill_at_cap and "larger than" in str(e.value)
    core = PoolCore(pool_at(fake_openai.url, max_tokens=16),
                    PoolRuntimeConfig(ledger_dir=str(tmp_path), cache=False), "run")
    r = asyncio.run(_call_and_close(core, "Display", "hello"))
    assert r.status is CallStatus.BAD_RESPONSE and r.cost_usd > 0 and r.completion_tokens == 16
    (att, call) = sorted(read_records(tmp_path), key=lambda x: x["kind"])
    assert att["kind"] == "attempt" and "capped cost" in att["anomaly"] and att["cost_usd"] == r.cost_usd
    # The bound is the pool's to set, per backend kind.
    small = pool_at(fake_openai.url).model_copy(update={"backends": {"openai": {"max_reply_bytes": 100}}})
    fake_openai.set("org/model-x", "ok")
    with pytest.raises(BackendError, match="larger than 100 bytes"):
        attempt(small)


def test_a_key_echoed_in_a_200_reply_never_leaves_the_pool(fake_openai, monkeypatch, tmp_path):
    from router_r1.util.redact import leaks

    secret = "sk-PROBE-OK200-0123456789abcdef"
    monkeypatch.setenv("RR1_FAKE_KEY", secret)
    fake_openai.set("org/model-x", "echo_key_ok")
    r = call_keyed_once(fake_openai, tmp_path)
    assert r.ok and r.text.startswith("key *** .") and leaks(repr(r), secret) == []
    for p in tmp_path.iterdir():
        assert leaks(p.read_bytes().decode("latin-1"), secret) == []
