"""PoolCore in-process, against a scripted test-double backend (no Ray, no HTTP)."""
from __future__ import annotations

import asyncio
import time

import pytest
from pool_doubles import ScriptedBackend, make_pool

from router_r1.pool.backends.base import BackendError
from router_r1.pool.core import PoolCore
from router_r1.pool.cost import call_cost
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.ledger import read_records
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus


def make_core(backend, tmp_path=None, pool=None, **runtime):
    rt = PoolRuntimeConfig(ledger_dir=str(tmp_path) if tmp_path else None, **runtime)
    return PoolCore(pool or make_pool(), rt, "run-1", {"simulated": backend})


def run(coro):
    return asyncio.run(coro)


def test_ok_call_priced_from_descriptor_and_recorded(tmp_path):
    be = ScriptedBackend()
    core = make_core(be, tmp_path)
    r = run(core.call("a-alias", "what?", {"temperature": 0.5}, {"episode_id": "e1", "tenant": "acme"}))
    assert r.ok and r.model == "A" and r.attempts == 1
    assert be.log[0][1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what?"}]
    assert r.cost_usd == pytest.approx(call_cost(core.pool["A"], 10, 5)) == pytest.approx(20e-6)
    core.flush()
    (rec,) = read_records(tmp_path)
    assert rec["record_id"] == r.meta["record_id"]
    assert (rec["run_id"], rec["episode_id"], rec["tenant"], rec["model"], rec["requested_model"]) == \
        ("run-1", "e1", "acme", "A", "a-alias")
    assert (rec["price_in"], rec["price_out"], rec["status"], rec["cache_hit"]) == (1.0, 2.0, "ok", False)


@pytest.mark.parametrize("model,mq,params,context,status", [
    ("Nope", "q", None, None, CallStatus.UNKNOWN_MODEL),
    ("A", "q", None, {"allowed_models": ["B"]}, CallStatus.NOT_ALLOWED),
    ("", "q", None, None, CallStatus.INVALID_REQUEST),
    (None, "q", None, None, CallStatus.INVALID_REQUEST),
    ("A", "   ", None, None, CallStatus.INVALID_REQUEST),
    ("A", [{"role": "robot", "content": "x"}], None, None, CallStatus.INVALID_REQUEST),
    ("A", 42, None, None, CallStatus.INVALID_REQUEST),
    ("A", "q", {"stream": True}, None, CallStatus.INVALID_REQUEST),
    ("A", "q", {"temperature": -1}, None, CallStatus.INVALID_REQUEST),
    ("A", "q", {"max_tokens": 0}, None, CallStatus.INVALID_REQUEST),
    ("A", "q", "hot", None, CallStatus.INVALID_REQUEST),
    ("A", "q", None, {"api_key": "x"}, CallStatus.INVALID_REQUEST),
    ("A", "q", None, {"deadline_s": time.time() - 1}, CallStatus.CANCELLED),
])
def test_bad_input_is_a_typed_result_and_recorded(model, mq, params, context, status):
    be = ScriptedBackend()
    core = make_core(be)
    r = run(core.call(model, mq, params, context))
    assert r.status is status and r.error and r.cost_usd == 0
    assert not be.log
    assert sum(t["calls"] for t in core.totals("run_id").values()) == 1


def test_retries_honour_retry_after_then_succeed():
    be = ScriptedBackend({"B": [BackendError(CallStatus.RATE_LIMITED, "429", retryable=True, retry_after=0.2),
                                BackendError(CallStatus.HTTP_ERROR, "503", retryable=True)]})
    core = make_core(be)
    t0 = time.perf_counter()
    r = run(core.call("B", "q"))
    assert r.ok and r.attempts == 3 and time.perf_counter() - t0 >= 0.2
    assert core.metrics()["B"]["retries"] == 2


def test_non_retryable_error_is_not_retried():
    be = ScriptedBackend({"C": [BackendError(CallStatus.HTTP_ERROR, "400 bad", retryable=False, http_status=400)]})
    r = run(make_core(be).call("C", "q"))
    assert r.status is CallStatus.HTTP_ERROR and r.attempts == 1 and len(be.log) == 1


def test_retry_after_longer_than_allowed_gives_up():
    be = ScriptedBackend({"C": [BackendError(CallStatus.RATE_LIMITED, "429", retryable=True, retry_after=60)]})
    r = run(make_core(be).call("C", "q"))
    assert r.status is CallStatus.RATE_LIMITED and r.attempts == 1


def test_timeouts_and_crashing_backends_end_typed():
    be = ScriptedBackend({"C": [5.0, 5.0], "B": [RuntimeError("boom"), "bad"]})
    core = make_core(be, pool=make_pool(timeout_s=0.05, max_attempts=2))
    r = run(core.call("C", "q"))
    assert r.status is CallStatus.TIMEOUT and r.attempts == 2
    r = run(core.call("B", "q"))
    assert r.status is CallStatus.BAD_RESPONSE and "boom" in r.error
    r = run(core.call("B", "q"))
    assert r.status is CallStatus.BAD_RESPONSE and "invalid reply" in r.error


def test_fallback_answers_and_bills_the_fallback():
    err = BackendError(CallStatus.HTTP_ERROR, "500", retryable=True)
    be = ScriptedBackend({"A": [err, err]})
    core = make_core(be, pool=make_pool(max_attempts=2))
    r = run(core.call("A", "q"))
    assert r.ok and r.model == "A" and r.served_by == "B"
    assert r.cost_usd == pytest.approx(call_cost(core.pool["B"], 10, 5))
    assert core.totals("model")["B"]["cost_usd"] == pytest.approx(r.cost_usd)
    assert "A: http_error" in r.meta["fallback_from"][0]
    # A fallback the caller has not allowed is not used.
    be.scripts["A"] = [err, err]
    r = run(core.call("A", "q", context={"allowed_models": ["A"]}))
    assert r.status is CallStatus.HTTP_ERROR and r.served_by is None


def test_circuit_opens_and_fails_fast():
    err = BackendError(CallStatus.CONNECTION_ERROR, "refused", retryable=True)
    be = ScriptedBackend({"C": [err] * 10})
    core = make_core(be, pool=make_pool(max_attempts=1, circuit_failures=3, circuit_cooldown_s=60))

    async def main():
        return [await core.call("C", "q") for _ in range(5)]

    rs = run(main())
    assert [r.status for r in rs] == [CallStatus.CONNECTION_ERROR] * 3 + [CallStatus.CIRCUIT_OPEN] * 2
    assert len(be.log) == 3 and core.metrics()["C"]["circuit"] == "open"


def test_billed_failed_attempts_are_recorded_and_charged(tmp_path):
    billed = BackendError(CallStatus.TIMEOUT, "cut off", retryable=True, billed_tokens=(10, 3))
    be = ScriptedBackend({"C": [billed]})
    core = make_core(be, tmp_path)
    r = run(core.call("C", "q"))
    assert r.ok and r.attempts == 2
    core.flush()
    recs = read_records(tmp_path)
    assert sorted(x["kind"] for x in recs) == ["attempt", "call"]
    assert sum(x["cost_usd"] for x in recs) == pytest.approx(r.cost_usd)
    assert r.cost_usd == pytest.approx(call_cost(core.pool["C"], 20, 8))


def test_cache_hits_are_free_and_single_flight(tmp_path):
    be = ScriptedBackend(delay_s=0.05)
    core = make_core(be, tmp_path)

    async def main():
        first = await asyncio.gather(*(core.call("B", "same question") for _ in range(10)))
        later = await core.call("B", "same question")
        sampled = await core.call("B", "same question", {"temperature": 0.7})
        return first, later, sampled

    first, later, sampled = run(main())
    assert len(be.log) == 2  # one for the ten identical calls, one for the sampled call
    assert sum(not r.cache_hit for r in first) == 1 and later.cache_hit and not sampled.cache_hit
    hits = [r for r in first + [later] if r.cache_hit]
    assert all(r.ok and r.cost_usd == 0 and r.text == first[0].text for r in hits)
    assert core.totals("model")["B"]["cost_usd"] == pytest.approx(2 * call_cost(core.pool["B"], 10, 5))
    assert core.metrics()["B"]["cache_hits"] == 10


def test_cache_off_by_config():
    be = ScriptedBackend()
    core = make_core(be, cache=False)

    async def main():
        for _ in range(3):
            await core.call("B", "q")

    run(main())
    assert len(be.log) == 3


def test_deadline_cancels_a_hanging_call():
    be = ScriptedBackend({"C": [30.0]})
    core = make_core(be, pool=make_pool(timeout_s=60))
    t0 = time.perf_counter()
    r = run(core.call("C", "q", context={"deadline_s": time.time() + 0.1}))
    assert r.status is CallStatus.CANCELLED and time.perf_counter() - t0 < 1.0


def test_budget_refusal_and_restart_keeps_spend(tmp_path):
    one = call_cost(make_pool()["C"], 10, 5)
    # The reservation estimate is above the real cost, so cap at a bit more than 2 real calls
    # plus one estimate: after 2 calls, a third estimate no longer fits.
    core = make_core(ScriptedBackend(), tmp_path, run_budget_usd=2.5 * one, default_params={"max_tokens": 5})

    async def main(c):
        return [await c.call("C", "short q") for _ in range(4)]

    rs = run(main(core))
    assert [r.status for r in rs] == [CallStatus.OK] * 2 + [CallStatus.BUDGET_EXCEEDED] * 2
    run(core.close())
    again = make_core(ScriptedBackend(), tmp_path, run_budget_usd=2.5 * one, default_params={"max_tokens": 5})
    assert again.totals("run_id")["run-1"]["cost_usd"] == pytest.approx(2 * one)
    assert run(again.call("C", "short q")).status is CallStatus.BUDGET_EXCEEDED


def test_call_batch_mixes_good_and_bad():
    core = make_core(ScriptedBackend())
    rs = run(core.call_batch([{"model": "B", "query": "q"}, {"model": "Zed", "query": "q"}, "junk",
                              {"model": "C", "messages": [{"role": "user", "content": "hi"}]}]))
    assert [r.status for r in rs] == [CallStatus.OK, CallStatus.UNKNOWN_MODEL,
                                      CallStatus.INVALID_REQUEST, CallStatus.OK]


def test_calls_queued_behind_a_failing_model_fail_fast_once_the_circuit_opens():
    err = BackendError(CallStatus.CONNECTION_ERROR, "refused", retryable=True)
    be = ScriptedBackend({"C": [0.02, err, err, err] + [err] * 50})
    # One slot: 20 calls queue; the circuit opens after 3 failures and the rest never reach
    # the backend, although they were already waiting for the slot when it opened.
    core = make_core(be, pool=make_pool(max_attempts=1, circuit_failures=3, circuit_cooldown_s=60,
                                        max_concurrency=1))

    async def main():
        return await asyncio.gather(*(core.call("C", f"q{i}", {"temperature": 0.7}) for i in range(20)))

    rs = run(main())
    assert sum(r.status is CallStatus.CIRCUIT_OPEN for r in rs) == 16
    assert len(be.log) == 4


def test_simulated_pool_from_the_registry():
    """The pool file of training and the demo, backends built from the registry."""
    from pathlib import Path

    from router_r1.pool.descriptors import load_pool

    pool = load_pool(Path(__file__).resolve().parents[1] / "configs" / "pool_simulated.yaml")
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=None), "run")

    async def main():
        return await asyncio.gather(*(core.call(m, "What is the capital of Vorland?") for m in pool.names))

    rs = run(main())
    assert all(r.ok and r.text and r.cost_usd > 0 for r in rs)
    assert {r.model for r in rs} == set(pool.names)


def test_warm_backends_reports_failures_instead_of_raising(tmp_path):
    pool = PoolSpec.model_validate({"models": [
        {"name": "S", "price": 1, "backend": {"kind": "simulated"}},
        {"name": "V", "price": 1, "backend": {"kind": "vllm", "checkpoint": str(tmp_path)}}]})
    core = PoolCore(pool.model_copy(update={"backends": {"vllm": {"no_such_option": 1}}}),
                    PoolRuntimeConfig(ledger_dir=None), "run")
    failed = core.warm_backends()
    assert set(failed) == {"vllm"} and "no_such_option" in failed["vllm"]
    r = run(core.call("V", "q"))
    assert r.status is CallStatus.CONNECTION_ERROR and "unavailable" in r.error


def test_fallback_that_also_fails_reports_no_server_and_bills_both():
    err = BackendError(CallStatus.HTTP_ERROR, "503", retryable=True, billed_tokens=(10, 0))
    be = ScriptedBackend({"A": [err], "B": [err]})
    core = make_core(be, pool=make_pool(max_attempts=1))
    r = run(core.call("A", "q"))
    assert r.status is CallStatus.HTTP_ERROR and r.served_by is None and r.model == "A"
    assert r.cost_usd == pytest.approx(call_cost(core.pool["A"], 10, 0) + call_cost(core.pool["B"], 10, 0))
    assert sum(t["cost_usd"] for t in core.totals("model").values()) == pytest.approx(r.cost_usd)


def test_call_stream_yields_each_result_as_it_ends_and_finishes_abandoned_calls(tmp_path):
    be = ScriptedBackend({"A": [0.3], "B": [0.05]})
    core = make_core(be, tmp_path, default_params={"temperature": 0.7})
    reqs = [{"model": "A", "query": "slow"}, {"model": "B", "query": "fast"}, "not a mapping"]

    async def consume_all():
        return [item async for chunk in core.call_stream(reqs) for item in chunk]

    items = run(consume_all())
    assert sorted(i for i, _ in items) == [0, 1, 2]
    assert [i for i, _ in items][-1] == 0  # the slow call comes last, the others do not wait for it
    by_index = dict(items)
    assert by_index[0].ok and by_index[1].ok and by_index[2].status is CallStatus.INVALID_REQUEST

    async def stop_after_first():
        stream = core.call_stream([{"model": "A", "query": "slow"}, {"model": "B", "query": "fast"}])
        (first,) = await anext(stream)
        await stream.aclose()  # the consumer goes away; the slow call was sent, so it still ends
        await asyncio.sleep(0.5)
        return first

    be.scripts = {"A": [0.3], "B": [0.05]}
    assert run(stop_after_first())[0] == 1
    core.flush()
    assert len(read_records(tmp_path)) == 5  # every call recorded once, abandoned one included


# -- trust boundaries (issue 14) -------------------------------------------------------------------
@pytest.mark.parametrize("limits", [{"requests_per_minute": 0}, {"tokens_per_minute": -5},
                                    {"max_attempts": 0}, {"timeout_s": -1}, {"max_concurrency": 0}])
def test_out_of_range_limits_are_refused_at_load(limits):
    with pytest.raises(ValueError, match=next(iter(limits))):
        make_pool(**limits)


def test_a_model_that_breaks_the_pipeline_fails_only_its_own_calls(tmp_path):
    """A limit that slipped past validation (here set after load) makes building that model's
    limiter raise: its call ends typed and recorded, and the 20 healthy calls of the same batch
    and stream are untouched."""
    pool = make_pool()
    pool["C"].limits.requests_per_minute = 0
    reqs = [{"model": "B", "query": f"q{i}"} for i in range(20)] + [{"model": "C", "query": "q"}]
    core = make_core(ScriptedBackend(), tmp_path, pool=pool)
    rs = run(core.call_batch(reqs))
    assert [r.ok for r in rs] == [True] * 20 + [False]
    assert rs[-1].status is CallStatus.BAD_RESPONSE and "internal pool error" in rs[-1].error

    async def stream():
        return dict([item async for chunk in core.call_stream(reqs) for item in chunk])

    by_index = run(stream())
    assert all(by_index[i].ok for i in range(20)) and not by_index[20].ok
    core.flush()
    recs = read_records(tmp_path)
    assert len(recs) == 42 and sum(r["status"] == "ok" for r in recs) == 40


class HonestCJKBackend(ScriptedBackend):
    """Bills what a real tokenizer would: ~1.3 tokens per CJK character."""

    async def complete(self, model, messages, params):
        from router_r1.pool.backends.base import BackendReply
        await asyncio.sleep(0.001)
        pt = sum(int(len(m["content"]) * 1.3) for m in messages)
        return BackendReply(text="好", prompt_tokens=pt, completion_tokens=params["max_tokens"])


def test_budget_holds_under_concurrency_with_cjk_prompts():
    cap = 0.002
    core = make_core(HonestCJKBackend(), run_budget_usd=cap, cache=False, default_params={"max_tokens": 4})
    question = "北京大学的创始人是谁以及它在哪一年成立" * 20  # 380 characters, 1,140 UTF-8 bytes

    async def main():
        return await asyncio.gather(*(core.call("C", question + str(i)) for i in range(60)))

    rs = run(main())
    one = max(r.cost_usd for r in rs)
    spent = sum(r.cost_usd for r in rs)
    assert any(r.status is CallStatus.BUDGET_EXCEEDED for r in rs)
    assert spent <= cap + one  # at most one call's capped cost over the cap, never 62%


def test_estimate_counts_utf8_bytes():
    from router_r1.pool.cost import estimate_tokens, max_prompt_tokens

    assert estimate_tokens("abc" * 10) == 10  # ASCII: 3 bytes per token, as before
    assert estimate_tokens("北京" * 10) >= 20  # CJK: at least one token per character
    assert max_prompt_tokens([{"role": "user", "content": "北京"}]) >= 6


def test_exact_duplicates_and_bad_numbers_in_descriptors_are_refused():
    from router_r1.pool.descriptors import PoolSpec as PS

    bad = [{"models": []},
           {"models": [{"name": "A", "price": 1}, {"name": "A", "price": 1}]},
           {"models": [{"name": "A", "price": float("inf")}]},
           {"models": [{"name": "A", "price": float("nan")}]},
           {"models": [{"name": "A", "price": 1, "backend": {"max_tokens": 0}}]},
           {"models": [{"name": "  ", "price": 1}]}]
    for raw in bad:
        with pytest.raises(ValueError):
            PS.model_validate(raw)


def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(tmp_path):
    from router_r1.pool.descriptors import load_pool
    from router_r1.util.redact import leaks

    secret = "sk-PROBE-Zq8xK2-0123456789"
    f = tmp_path / "pool.yaml"
    f.write_text("models:\n  - {name: A, price: 1, backend: {kind: openai, base_url: 'http://x/v1', "
                 f"api_key_env: {secret}}}}}\n")
    with pytest.raises(ValueError) as e:
        load_pool(f)
    msg = str(e.value)
    assert "api_key_env must be the NAME" in msg and "\n" not in msg and leaks(msg, secret) == []
    f.write_text(f"models:\n  - {{name: A, api_key_env: {secret}\n")  # broken YAML on the key's line
    with pytest.raises(ValueError) as e:
        load_pool(f)
    assert "not valid YAML" in str(e.value) and "\n" not in str(e.value) and leaks(str(e.value), secret) == []


# -- issue 24: one call's exception is its own; replies are redacted ----------------------------
class CancellingBackend(ScriptedBackend):
    """Model C's engine aborts the request the way vLLM's does: it raises CancelledError."""

    async def complete(self, model, messages, params):
        if model.name == "C":
            self.log.append((model.name, messages))
            await asyncio.sleep(0)
            raise asyncio.CancelledError()
        return await super().complete(model, messages, params)


@pytest.mark.parametrize("how", ["batch", "stream", "gather"])
def test_a_backend_raising_cancelled_error_fails_only_its_own_call(tmp_path, how):
    core = make_core(CancellingBackend(delay_s=0.02), tmp_path, pool=make_pool(max_concurrency=64),
                     default_params={"temperature": 0.7})
    reqs = [{"model": "B", "query": f"q{i}"} for i in range(10)] + [{"model": "C", "query": "q"}] + \
        [{"model": "B", "query": f"r{i}"} for i in range(10)]

    async def main():
        if how == "batch":
            return await core.call_batch(reqs)
        if how == "stream":
            got = dict([item async for chunk in core.call_stream(reqs) for item in chunk])
            return [got[i] for i in range(len(reqs))]
        return await asyncio.gather(*(core.call(r["model"], r["query"]) for r in reqs))

    rs = run(main())
    bad = rs.pop(10)
    assert [r.status for r in rs] == [CallStatus.OK] * 20
    assert bad.status is CallStatus.BAD_RESPONSE and "cancelled" in bad.error and bad.attempts == 1
    core.flush()
    recs = read_records(tmp_path)
    assert len(recs) == 21 and len({r["record_id"] for r in recs}) == 21  # each call billed once
    assert sorted(r["record_id"] for r in recs) == sorted(r.meta["record_id"] for r in rs + [bad])
    assert sum(r["cost_usd"] for r in recs) == pytest.approx(sum(r.cost_usd for r in rs))


def test_a_callers_own_cancellation_still_propagates(tmp_path):
    core = make_core(ScriptedBackend({"C": [30.0]}), tmp_path)

    async def main():
        t = asyncio.ensure_future(core.call("C", "q"))
        await asyncio.sleep(0.1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(main())
    core.flush()
    (rec,) = read_records(tmp_path)
    assert rec["status"] == "cancelled"


class EchoingBackend(ScriptedBackend):
    """A provider that puts the caller's key into a successful reply and its finish reason."""

    def __init__(self, key):
        super().__init__()
        self.key = key

    async def complete(self, model, messages, params):
        from router_r1.pool.backends.base import BackendReply
        if model.name == "A":
            raise BackendError(CallStatus.HTTP_ERROR, f"500 for key {self.key}", retryable=False)
        return BackendReply(text=f"Sure. Your key is {self.key}; part {self.key[4:14]}.", prompt_tokens=3,
                            completion_tokens=4, meta={"finish_reason": f"stop {self.key}"})


def test_a_key_echoed_in_a_successful_reply_is_redacted_everywhere(tmp_path, monkeypatch):
    from router_r1.env.episode import Episode, EpisodeConfig, run_episodes
    from router_r1.util.redact import leaks

    key = "sk-ECHO-9Zq8xK2vN7Lm3Pd9Qr5"
    monkeypatch.setenv("RR1_ECHO_KEY", key)
    pool = make_pool()
    for m in pool.models:  # every model reads the key (the simulated kind ignores it)
        m.backend.api_key_env = "RR1_ECHO_KEY"
    core = make_core(EchoingBackend(key), tmp_path, pool=pool)

    async def main():
        a = await core.call("B", "q")
        b = await core.call("B", "q")  # a cache hit of the first
        c = await core.call("A", "q")  # fails with the key in its error, then falls back to B
        return a, b, c

    a, b, c = run(main())
    assert a.ok and b.cache_hit and c.ok and c.served_by == "B"
    for r in (a, b, c):
        assert leaks(repr(r), key) == [] and "Your key is ***" in r.text
    eps = [Episode(uid="e", question="q", golden_answers=["x"], prompt="P:")]
    turns = iter([["<search>B: what is my key?</search>"], ["<answer>x</answer>"]])
    from actors.model_pool import PoolClient
    run(run_episodes(eps, lambda prompts: next(turns), PoolClient(core).call, EpisodeConfig(max_turns=1),
                     pool=core.pool))
    assert "Your key is ***" in eps[0].response and leaks(eps[0].response, key) == []
    run(core.close())
    for p in tmp_path.iterdir():
        assert leaks(p.read_bytes().decode("latin-1"), key) == []


def test_a_key_that_passes_for_a_variable_name_is_refused_and_never_printed(tmp_path, caplog):
    from router_r1.util.redact import leaks
    from router_r1.pool.descriptors import load_pool

    secret = "AKIAIOSFODNN7EXAMPLE"  # matches [A-Z_][A-Z0-9_]*: it passes for a variable name
    f = tmp_path / "pool.yaml"
    f.write_text("models:\n  - {name: A, price: 1, backend: {kind: openai, base_url: 'http://127.0.0.1:9/v1', "
                 f"api_key_env: {secret}}}}}\n")
    with pytest.raises(ValueError) as e:
        load_pool(f)
    assert "looks like a key" in str(e.value) and leaks(str(e.value), secret) == []
    from router_r1.pool.descriptors import env_label

    assert leaks(env_label(secret), secret) == [] and env_label("ROUTER_R1_API_KEY") == "ROUTER_R1_API_KEY"
    # Even if one slipped past load (set afterwards), the pool's own report masks it.
    pool = make_pool()
    pool["C"].backend.kind = "openai"
    pool["C"].backend.api_key_env = secret
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=None), "run")
    assert leaks(repr(core.config_errors), secret) == [] and "not set" in core.config_errors["C"]
    assert leaks(caplog.text, secret) == []
