"""The Router-R1 Serve app over real HTTP: the official `openai` client for what it can send,
raw HTTP for what it cannot (malformed JSON, wrong types, missing keys).

One app serves the module: a scripted tiny router (benchmarks.tiny_router: always routes once
to Echo-Model, then answers) over a ModelPool whose candidates are a fake OpenAI server in this
process; each test sets how the fake server misbehaves. Ray-free checks of the request logic
come first.
"""
from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

from router_r1.serving.openai_api import APIError, parse_request  # noqa: E402
from deployments.router import parse_api_keys, tenant_for  # noqa: E402

openai = pytest.importorskip("openai")

ECHO_PRICE = 1.0  # USD per 1M tokens, both directions
TIMEOUT_S = 6.0  # serve.request_timeout_s of the test app
KEYS = {"sk-rich": "rich", "sk-poor": "poor", "sk-capped": "capped"}
CAPPED_USD = 3e-4  # the "capped" tenant's budget: ~10 of the echo calls, ~1 reservation of 256 tokens


# -- Ray-free ------------------------------------------------------------------------------------
def test_api_keys_from_env_format():
    assert parse_api_keys("k1:tenantA, k2:tenantB") == {"k1": "tenantA", "k2": "tenantB"}
    assert parse_api_keys("") == {}
    with pytest.raises(ValueError, match="key:tenant"):
        parse_api_keys("just-a-key")
    assert tenant_for("Bearer k1", {"k1": "A"}) == "A"
    assert tenant_for(None, {}) == "default"
    for header in (None, "Bearer nope", "Basic k1", "Bearer "):
        with pytest.raises(APIError) as e:
            tenant_for(header, {"k1": "A"})
        assert e.value.status == 401


@pytest.mark.parametrize("raw, param", [
    (b"{not json", None), (b"[1, 2]", None),
    (b'{"model": "router-r1", "messages": "hi"}', "messages"),
    (b'{"model": "router-r1", "messages": []}', "messages"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "max_turns": "many"}',
     "max_turns"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "max_cost_usd": -1}',
     "max_cost_usd"),
    (b'{"messages": [{"role": "user", "content": "q"}]}', "model"),
])
def test_parse_request_refuses_with_400(raw, param):
    with pytest.raises(APIError) as e:
        parse_request(raw)
    assert e.value.status == 400
    assert e.value.param == param
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def _outcome(*calls):
    from types import SimpleNamespace
    return SimpleNamespace(calls=list(calls), plan=SimpleNamespace(tenant="t"))


def test_failed_calls_map_to_429_or_503_only_when_none_succeeded():
    from router_r1.serving.service import REQUEST_CAP, check_calls
    from router_r1.pool.types import CallResult
    from router_r1.pool.types import CallStatus as S

    ok = CallResult("A", "fine")
    broke = CallResult.failure("A", S.HTTP_ERROR, "500")
    broke_b = CallResult.failure("B", S.TIMEOUT, "slow")
    broke_pool = CallResult.failure("A", S.BUDGET_EXCEEDED, "budget cap reached")
    capped = CallResult.failure("A", S.BUDGET_EXCEEDED, "cap", meta={"budget_scope": REQUEST_CAP})
    invented = CallResult.failure("Z", S.UNKNOWN_MODEL, "no model named Z")
    for fine in ([], [broke, ok], [capped], [invented], [broke_pool, ok]):
        check_calls(_outcome(*fine))  # the router answered with what it had: 200
    with pytest.raises(APIError) as e:
        check_calls(_outcome(broke, broke_b, invented))
    assert e.value.status == 503 and "A" in e.value.message and "B" in e.value.message
    with pytest.raises(APIError) as e:
        check_calls(_outcome(broke_pool, capped))
    assert e.value.status == 429 and e.value.code == "insufficient_quota"


def test_serve_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    from pipelines.serve import main
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"pool: {Path(__file__).resolve().parents[1] / 'configs' / 'pool_simulated.yaml'}\n")
    assert main(["--checkpoint", str(tmp_path / "nope"), "--config", str(cfg)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# -- the app -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def app_files(fake, tmp_path_factory):
    """(folder, checkpoint) of the module's apps: the pool file, the two configs, the router."""
    from benchmarks.tiny_router import build_scripted_router
    from router_r1.pool.descriptors import load_pool

    tmp = tmp_path_factory.mktemp("serve")
    limits = {"max_attempts": 1, "timeout_s": 30, "circuit_failures": 1000}
    # The pool actor (made by the replica) sends the key planted by conftest: the leak test makes
    # the fake provider echo it back.
    backend = {"kind": "openai", "base_url": fake.url, "api_key_env": "ROUTER_R1_TEST_PLANTED_KEY"}
    (tmp / "pool.yaml").write_text(yaml.safe_dump({"name": "fake", "models": [
        {"name": "Echo-Model", "price": ECHO_PRICE, "description": "Echoes the question.",
         "backend": backend, "limits": limits},
        {"name": "Other-Model", "price": 3.0, "description": "Also echoes.", "backend": backend,
         "limits": limits}]}))
    config = {
        "name": "serve-test", "pool": "pool.yaml",
        "pool_runtime": {"actor_name": f"serve_test_pool_{_free_port()}", "ledger_dir": str(tmp / "ledger"),
                         "cache": False, "tenant_budgets_usd": {"poor": 0.0, "rich": 100.0, "capped": CAPPED_USD}, "num_cpus": 0},
        "episode": {"max_turns": 2, "max_new_tokens": 48},
        "serve": {"api_keys": KEYS, "request_timeout_s": TIMEOUT_S, "max_prompt_chars": 2000,
                  "num_cpus": 0, "max_batch_size": 16, "batch_wait_timeout_s": 0.05}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    # The lenient app (fixture `lenient`, same pool actor): drops unsupported fields, has a fallback.
    config["serve"].update(drop_params=True, fallback_model="Other-Model", max_prompt_chars=8000, conversation="on",
                           max_history_tokens=200)
    (tmp / "lenient.yaml").write_text(yaml.safe_dump(config))
    ckpt = build_scripted_router(tmp / "router", load_pool(tmp / "pool.yaml"), "Echo-Model", steps=120)
    return tmp, ckpt


def wait_healthy(base: str) -> None:
    deadline = time.time() + 60
    while True:  # serve.run returns once RUNNING; the proxy may lag a moment behind
        try:
            urllib.request.urlopen(base + "/healthz", timeout=5).read()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def served(ray_local, fake, app_files):
    """Deploy the app once for the module; yields (base_url, fake server, ledger folder)."""
    import ray
    from ray import serve

    from deployments.router import build_app

    tmp, ckpt = app_files
    port = _free_port()
    serve.shutdown()  # a Serve left by another module would keep its own HTTP options
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"checkpoint": str(ckpt), "config": str(tmp / "config.yaml")}),
              name="router_r1_test", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    yield base, fake, tmp / "ledger"
    serve.shutdown()
    try:
        actor = yaml.safe_load((tmp / "config.yaml").read_text())["pool_runtime"]["actor_name"]
        ray.kill(ray.get_actor(actor, namespace="router_r1"))
    except ValueError:
        pass


@pytest.fixture(scope="module")
def lenient(served, app_files):
    """A second app beside the first, under /lenient: serve.drop_params and a fallback model."""
    from ray import serve

    from deployments.router import build_app

    tmp, ckpt = app_files
    serve.run(build_app({"checkpoint": str(ckpt), "config": str(tmp / "lenient.yaml")}),
              name="router_r1_lenient", route_prefix="/lenient", blocking=False)
    url = served[0] + "/lenient"
    wait_healthy(url)
    yield url
    serve.delete("router_r1_lenient")


@pytest.fixture
def base(served):
    base_url, fake, _ = served
    fake.reset()
    yield base_url
    fake.reset()


def client(base: str, key: str | None = "sk-rich"):
    return openai.OpenAI(base_url=base + "/v1", api_key=key or "none", max_retries=0, timeout=30)


def post(base: str, body: bytes | dict, key: str | None = "sk-rich") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + "/v1/chat/completions", data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ask(question: str = "Who wrote the book Zelix?", **extra) -> dict:
    return {"model": "router-r1", "messages": [{"role": "user", "content": question}], **extra}


def assert_error(status: int, body: dict, want_status: int, code: str | None = None) -> dict:
    assert status == want_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def check_accounting(usage: dict, extra: dict) -> None:
    """usage = router tokens + every call's tokens; cost = the calls' costs."""
    trace = extra["trace"]
    router = extra["router_usage"]
    assert usage["prompt_tokens"] == router["prompt_tokens"] + sum(s["prompt_tokens"] for s in trace)
    assert usage["completion_tokens"] == router["completion_tokens"] + sum(s["completion_tokens"] for s in trace)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert extra["cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in trace))
    assert router["prompt_tokens"] > 0 and router["completion_tokens"] > 0


def test_completion_with_trace_usage_and_cost(fake, base):
    r = client(base).chat.completions.create(
        model="router-r1", messages=[{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": "Who wrote the book Zelix?"}])
    extra = r.model_extra["router_r1"]
    trace = extra["trace"]
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert len(trace) >= 1 and trace[0]["model"] == "Echo-Model" and trace[0]["status"] == "ok"
    assert trace[0]["query"] and trace[0]["prompt_tokens"] > 0 and trace[0]["completion_tokens"] > 0
    step = trace[0]
    assert step["cost_usd"] == pytest.approx(
        (step["prompt_tokens"] + step["completion_tokens"]) * ECHO_PRICE / 1e6)
    check_accounting(r.usage.model_dump(), extra)
    # The content is the router's own <answer>, whatever it says.
    from router_r1.env.protocol import extract_answer
    assert r.choices[0].message.content == (extract_answer(extra["router_text"]) or "")
    assert r.choices[0].finish_reason in ("stop", "length")
    assert fake.count("Echo-Model") == len(trace)


def test_trace_can_be_left_out(base):
    status, body = post(base, ask(return_trace=False))
    assert status == 200, body
    assert "trace" not in body["router_r1"] and body["router_r1"]["cost_usd"] > 0


def test_streamed_completion_emits_route_steps_then_answer(base):
    stream = client(base).chat.completions.create(
        model="router-r1", messages=[{"role": "user", "content": "Where was Tomas Velik born?"}],
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    events = [c.model_extra["router_r1"]["event"] for c in chunks
              if c.model_extra.get("router_r1", {}).get("event")]
    assert [e["type"] for e in events[:2]] == ["route", "call_result"]
    assert events[0]["model"] == "Echo-Model" and events[1]["status"] == "ok"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    extra = finish[0].model_extra["router_r1"]
    from router_r1.env.protocol import extract_answer
    assert content == (extract_answer(extra["router_text"]) or "")
    # Route events arrive before the answer's content chunk.
    first_content = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    first_event = next(i for i, c in enumerate(chunks) if c.model_extra.get("router_r1", {}).get("event"))
    assert first_event < first_content
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    check_accounting(usage.model_dump(), extra)


def test_raw_stream_ends_with_done(base):
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(ask(stream=True)).encode(),
                                 headers={"Authorization": "Bearer sk-rich", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = [ln for ln in r.read().decode().splitlines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_models_and_health(base):
    models = client(base).models.list()
    assert [m.id for m in models.data] == ["router-r1"]
    health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=10).read())  # no key needed
    assert health["status"] == "ok" and health["candidates"] == ["Echo-Model", "Other-Model"]
    assert "/" not in json.dumps(health), health  # no filesystem paths
    card = client(base).models.retrieve("router-r1")
    assert card.id == "router-r1" and card.model_extra["candidates"] == ["Echo-Model", "Other-Model"]
    with pytest.raises(openai.NotFoundError) as e:
        client(base).models.retrieve("gpt-4o")
    assert e.value.body["code"] == "model_not_found"


def test_missing_or_wrong_key_is_401(fake, base):
    with pytest.raises(openai.AuthenticationError) as e:
        client(base, key="sk-wrong").chat.completions.create(**ask())
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    assert_error(*post(base, ask(), key=None), 401, "invalid_api_key")
    assert fake.count() == 0  # nothing was routed or billed


@pytest.mark.parametrize("body, status, param", [
    (b'{"model": "router-r1", "messages": [', 400, None),
    (b'{"model": "router-r1", "messages": "What is 2+2?"}', 400, "messages"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "stream": "yes"}', 400, "stream"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": 42}]}', 400, "messages.0.content.str"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "max_turns": "many"}', 400,
     "max_turns"),
    (b'{"model": "router-r1", "messages": []}', 400, "messages"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "   "}]}', 400, "messages"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "max_turns": 99}', 400,
     "max_turns"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "temperature": "0.5"}', 400,
     "temperature"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "n": 2}', 400, "n"),
    (b'{"model": "router-r1", "messages": [{"role": "user", "content": "who \\ud800?"}]}', 400,
     "messages.0.content"),
    (b"[" * 100_000 + b"]" * 100_000, 400, None),
])
def test_bad_requests_get_openai_errors(fake, base, body, status, param):
    err = assert_error(*post(base, body), status)
    assert err["param"] == param
    assert fake.count() == 0


def test_prompt_over_the_limit_is_400_context_length_exceeded(base):
    err = assert_error(*post(base, ask("x" * 2001)), 400, "context_length_exceeded")
    assert "2000" in err["message"]


def test_unknown_model_is_404(base):
    with pytest.raises(openai.NotFoundError) as e:
        client(base).chat.completions.create(model="gpt-4o", messages=ask()["messages"])
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    err = assert_error(*post(base, ask(models=["Echo-Model", "No-Such-Model"])), 404, "model_not_found")
    assert err["param"] == "models" and "No-Such-Model" in err["message"]
    req = urllib.request.Request(base + "/v1/nothing-here")
    with pytest.raises(urllib.error.HTTPError) as h:
        urllib.request.urlopen(req, timeout=10)
    assert h.value.code == 404 and set(json.loads(h.value.read())["error"]) == {"message", "type", "param", "code"}


def test_tenant_budget_exhausted_is_429_insufficient_quota(fake, base):
    with pytest.raises(openai.RateLimitError) as e:
        client(base, key="sk-poor").chat.completions.create(**ask())
    assert e.value.status_code == 429 and e.value.body["code"] == "insufficient_quota"
    status, body = post(base, ask(), key="sk-poor")
    err = assert_error(status, body, 429, "insufficient_quota")
    assert "poor" in err["message"]
    assert fake.count("Echo-Model") == 0  # refused before anything was sent


def test_request_cost_cap_refuses_calls_but_answers(fake, base):
    status, body = post(base, ask(max_cost_usd=0.0))
    assert status == 200, body
    trace = body["router_r1"]["trace"]
    assert trace and all(s["status"] == "budget_exceeded" for s in trace)
    assert "max_cost_usd" in trace[0]["error"] and body["router_r1"]["cost_usd"] == 0
    assert fake.count("Echo-Model") == 0


def test_allowed_models_subset_is_enforced(fake, base):
    # The scripted router always asks Echo-Model; with only Other-Model allowed it must not reach it.
    status, body = post(base, ask(models=["Other-Model"]))
    assert status == 200, body
    trace = body["router_r1"]["trace"]
    assert trace and trace[0]["model"] == "Echo-Model" and trace[0]["status"] == "unknown_model"
    assert "Other-Model" in trace[0]["error"]
    assert fake.count() == 0


def test_all_candidates_down_is_503_naming_them(fake, base):
    fake.set("Echo-Model", "500")
    err = assert_error(*post(base, ask()), 503, "models_unavailable")
    assert "Echo-Model" in err["message"] and "http_error" in err["message"]


def test_hung_candidate_is_bounded_by_the_deadline(fake, base):
    # Past the call deadline, yet finished before the module ends (the fake server waits for it).
    fake.set("Echo-Model", "slow", delay_s=TIMEOUT_S + 1.0)
    t0 = time.monotonic()
    err = assert_error(*post(base, ask()), 503, "models_unavailable")
    elapsed = time.monotonic() - t0
    assert "Echo-Model" in err["message"] and "cancelled" in err["message"]
    assert elapsed < TIMEOUT_S + 1.0, elapsed
    assert fake.count("Echo-Model") == 1  # the call was made, and cut


def test_concurrent_requests_share_generation_batches(base):
    before = json.loads(urllib.request.urlopen(base + "/healthz", timeout=10).read())
    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda i: post(base, ask(f"question number {i}?")), range(16)))
    assert all(s == 200 for s, _ in results), results
    after = json.loads(urllib.request.urlopen(base + "/healthz", timeout=10).read())
    turns = after["batched_turns"] - before["batched_turns"]
    assert turns >= 16 * 2  # route turn + answer turn per request
    if after["batching"] == "continuous":  # (the default) turns shared the engine's forward steps
        steps = after["forward_steps"] - before["forward_steps"]
        tokens = after["sampled_tokens"] - before["sampled_tokens"]
        assert 0 < steps < tokens / 2, (steps, tokens)  # on average more than two rows per step
    else:
        batches = after["generation_batches"] - before["generation_batches"]
        assert batches < turns / 2, (batches, turns)  # on average more than two turns per generation


# -- trust boundaries (issue 14) -------------------------------------------------------------------
def test_a_poisoned_request_fails_alone_and_its_batch_mates_succeed(base):
    """A lone surrogate used to make the shared batch's tokenizer raise: 15 of 24 normal requests
    batched with it got 500. Now it is refused on its own (400) and the others all answer."""
    poisoned = b'{"model": "router-r1", "messages": [{"role": "user", "content": "who \\ud800?"}]}'
    bodies = [poisoned if i == 12 else ask(f"question number {i}?") for i in range(25)]
    with ThreadPoolExecutor(25) as ex:
        results = list(ex.map(lambda b: post(base, b), bodies))
    assert_error(*results[12], 400, "invalid_value")
    assert [s for i, (s, _) in enumerate(results) if i != 12] == [200] * 24


def test_wrong_method_is_405_with_allow(base):
    req = urllib.request.Request(base + "/v1/chat/completions", method="GET")
    with pytest.raises(urllib.error.HTTPError) as h:
        urllib.request.urlopen(req, timeout=10)
    assert h.value.code == 405 and h.value.headers["Allow"] == "POST"
    assert set(json.loads(h.value.read())["error"]) == {"message", "type", "param", "code"}


def test_openapi_publishes_the_request_body(base):
    doc = json.loads(urllib.request.urlopen(base + "/openapi.json", timeout=10).read())
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] and {"model", "messages"} <= set(schema["required"])
    assert schema["properties"]["temperature"]["anyOf"][0]["type"] == "number"
    text = json.dumps(doc)
    assert '"ge"' not in text and '"le"' not in text  # JSON Schema's minimum/maximum only
    assert schema["properties"]["max_tokens"]["anyOf"][0]["minimum"] == 1
    assert schema["properties"]["max_turns"]["anyOf"][0]["maximum"] == 8  # this server's own limit
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    assert doc["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearer": []}]
    responses = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "413", "429", "502", "503", "504"} <= set(responses)
    # A tool message with empty content: refused by the schema, and so by the server.
    tool = next(alt for alt in schema["properties"]["messages"]["items"]["oneOf"]
                if alt["properties"]["role"]["const"] == "tool")
    assert tool["properties"]["content"]["anyOf"][0]["minLength"] == 1
    status, err = post(base, {"model": "router-r1", "messages": [
        {"role": "tool", "content": "", "tool_call_id": "c1"}, {"role": "user", "content": "q"}]})
    assert status == 400 and err["error"]["param"].startswith("messages.0.content")


def test_no_part_of_a_provider_key_reaches_replies_ledger_or_serve_logs(served, base):
    """The fake provider echoes the pool's key (planted by conftest) in its 401 body, across byte
    200; a client also sends that key as its bearer. No 6+ character part of it may appear in a
    reply, the ledger, or any log of this Ray session (Serve controller, proxy, replicas, pool)."""
    import os

    import ray

    from router_r1.util.redact import leaks

    _, fake, ledger = served
    key = os.environ["ROUTER_R1_TEST_PLANTED_KEY"]
    fake.set("Echo-Model", "echo_key")
    fake.set("Other-Model", "echo_key")
    status, body = post(base, ask())
    assert status == 503 and leaks(json.dumps(body), key) == []
    assert fake.log and fake.log[-1]["bearer"]  # the key was sent, and echoed
    status, body = post(base, ask(), key=key)
    assert status == 401 and leaks(json.dumps(body), key) == []
    time.sleep(1.0)  # log lines flushed
    node = ray._private.worker._global_node
    roots = [Path(node.get_session_dir_path()) / "logs", ledger]
    found = {}
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and f.stat().st_size < 50_000_000:
                hits = leaks(f.read_bytes().decode("latin-1"), key)
                if hits:
                    found[str(f)] = hits
    assert found == {}


# -- issue 28 A: every OpenAI field honoured or refused -------------------------------------------
def test_max_tokens_bounds_the_answer_not_the_router_turns(base):
    c = client(base)
    full = c.chat.completions.create(**ask())
    one = c.chat.completions.create(**ask(), max_tokens=1)
    assert full.choices[0].message.content and full.choices[0].finish_reason == "stop"
    assert one.choices[0].message.content and one.choices[0].finish_reason == "length"
    assert full.choices[0].message.content.startswith(one.choices[0].message.content)
    assert one.model_extra["router_r1"]["trace"]  # the router still routed: its turns were not cut


def test_stop_is_applied_to_the_answer(base):
    full = client(base).chat.completions.create(**ask()).choices[0].message.content
    assert len(full) >= 2
    r = client(base).chat.completions.create(**ask(), stop=[full[1:]])
    assert r.choices[0].message.content == full[:1] and r.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(base):
    def once(seed):
        r = client(base).chat.completions.create(**ask(), temperature=1.0, seed=seed)
        return r.model_extra["router_r1"]["router_text"]
    assert once(5) == once(5)


def test_user_is_recorded_as_the_end_user(served, base):
    from router_r1.pool.ledger import read_records

    _, _, ledger = served
    r = client(base).chat.completions.create(**ask(), user="alice@example.com")
    assert r.model_extra["router_r1"]["end_user"] == "alice@example.com"
    recs = [x for x in read_records(ledger) if x.get("end_user") == "alice@example.com"]
    assert len(recs) == len(r.model_extra["router_r1"]["trace"]) >= 1


def test_max_turns_0_gives_the_forced_final_answer(fake, base):
    r = client(base).chat.completions.create(**ask(), extra_body={"max_turns": 0})
    extra = r.model_extra["router_r1"]
    assert r.choices[0].message.content and extra["forced_answer"] and extra["trace"] == []
    assert fake.count() == 0


@pytest.mark.parametrize("kw", [{"logprobs": True}, {"tools": [{"type": "function", "function": {"name": "f"}}]},
                                {"response_format": {"type": "json_object"}}, {"presence_penalty": 0.5}, {"n": 2}])
def test_unsupported_parameters_are_refused_naming_them(fake, base, kw):
    with pytest.raises(openai.BadRequestError) as e:
        client(base).chat.completions.create(**ask(), **kw)
    assert e.value.status_code == 400 and e.value.body["code"] == "unsupported_parameter"
    assert e.value.body["param"] == next(iter(kw))
    assert fake.count() == 0


def test_the_wire_format_is_the_sdk_types(base):
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    status, body = post(base, ask(logprobs=False, response_format={"type": "text"}))
    assert status == 200, body
    assert ChatCompletion.model_validate(body).choices[0].message.role == "assistant"
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(ask(stream=True)).encode(),
                                 headers={"Authorization": "Bearer sk-rich", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        lines = [ln[6:] for ln in r.read().decode().splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    for ln in lines[:-1]:
        ChatCompletionChunk.model_validate(json.loads(ln))


# -- issue 28 B: no silent failure; A: drop_params ------------------------------------------------
def question_filling_the_context(ckpt: Path, pool_file: Path, turn_tokens: int) -> str:
    """A question whose prompt leaves room for the first router turn only (the tiny router's
    context is 1024 tokens): the route is made, and no answer turn fits after its reply."""
    from router_r1.engines.model import load_policy
    from router_r1.env.prompt import load_prompt_options, render_prompt_ids
    from router_r1.pool.descriptors import load_pool

    _, tok = load_policy(ckpt)
    pool, opts = load_pool(pool_file), load_prompt_options(ckpt)
    lo, hi = 1, 2000
    while lo < hi:  # the most words whose prompt still leaves one turn's room
        mid = (lo + hi + 1) // 2
        if len(render_prompt_ids(tok, pool, "zelix " * mid, opts)[1]) + turn_tokens <= 1024:
            lo = mid
        else:
            hi = mid - 1
    return "zelix " * lo


def test_no_valid_answer_is_a_502_without_a_fallback(app_files, base):
    tmp, ckpt = app_files
    q = question_filling_the_context(ckpt, tmp / "pool.yaml", 300)
    status, body = post(base, ask(q, max_turn_tokens=300))
    assert_error(status, body, 502, "router_no_answer")


def test_no_valid_answer_runs_the_fallback_model(fake, app_files, lenient):
    tmp, ckpt = app_files
    q = question_filling_the_context(ckpt, tmp / "pool.yaml", 300)
    before = fake.count("Other-Model")
    r = client(lenient).chat.completions.create(
        model="router-r1", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": q}],
        extra_body={"max_turn_tokens": 300})
    extra = r.model_extra["router_r1"]
    assert extra["fallback"] is True and extra["format_ok"] is False
    assert r.choices[0].message.content and "<" not in r.choices[0].message.content
    assert extra["trace"][-1]["fallback"] and extra["trace"][-1]["model"] == "Other-Model"
    assert fake.count("Other-Model") == before + 1


def test_drop_params_drops_and_says_so(lenient):
    raw = client(lenient).chat.completions.with_raw_response.create(
        **ask(), logprobs=True, tools=[{"type": "function", "function": {"name": "f"}}])
    assert raw.headers["x-router-r1-dropped-params"] == "logprobs,tools"
    assert raw.parse().choices[0].message.content


# -- issue 28 C: operations ----------------------------------------------------------------------
def test_cost_and_route_headers(base):
    raw = client(base).chat.completions.with_raw_response.create(**ask())
    r = raw.parse()
    extra = r.model_extra["router_r1"]
    assert float(raw.headers["x-router-r1-cost-usd"]) == pytest.approx(extra["cost_usd"])
    assert raw.headers["x-router-r1-models"] == ",".join(s["model"] for s in extra["trace"]) == "Echo-Model"
    assert raw.headers["x-router-r1-fallback"] == "false" and raw.headers["x-request-id"]


def post_large(base: str, size: int) -> tuple[int, dict]:
    """POST a `size`-byte JSON body as curl does (`Expect: 100-continue`): the body is sent only
    if the server asks for it; a server that refuses it first answers without reading it."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps(ask("x" * (size - 120))).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sk-rich\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n"
            "Connection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(head)
        reply = sock.recv(65536)
        if reply.startswith(b"HTTP/1.1 100"):
            try:
                sock.sendall(body)
            except OSError:  # refused mid-body: the answer is already on its way
                pass
            reply = reply.split(b"\r\n\r\n", 1)[1]
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers.lower():
        out, data = b"", payload
        while data:
            n, _, data = data.partition(b"\r\n")
            if int(n, 16) == 0:
                break
            out, data = out + data[:int(n, 16)], data[int(n, 16) + 2:]
        payload = out
    return int(status_line.split()[1]), json.loads(payload)


def test_a_50_mb_body_is_413(fake, base):
    err = assert_error(*post_large(base, 50_000_000), 413, "request_too_large")
    assert "max_body_bytes" in err["message"] and fake.count() == 0


def test_prometheus_metrics_through_ray(base):
    """Ray's own metrics export (ray.util.metrics in the replica), served at /metrics."""
    client(base).chat.completions.create(**ask())
    post(base, ask(), key="sk-poor")  # a budget refusal
    deadline, text = time.time() + 60, ""
    want = ("ray_router_r1_requests_total", "ray_router_r1_cost_usd_total", "ray_router_r1_budget_refusals_total",
            "ray_router_r1_request_latency_s_bucket", "ray_router_r1_tokens_total")
    while time.time() < deadline:  # Ray's agent exports every few seconds
        with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = r.read().decode()
        if all(w in text for w in want):
            break
        time.sleep(2)
    lines = text.splitlines()
    assert all(w in text for w in want), [w for w in want if w not in text]
    assert any(ln.startswith("ray_router_r1_requests_total{") and 'tenant="rich"' in ln and 'status="200"' in ln
               for ln in lines)
    assert any(ln.startswith("ray_router_r1_requests_total{") and 'tenant="poor"' in ln and 'status="429"' in ln
               for ln in lines)
    assert any(ln.startswith("ray_router_r1_cost_usd_total{") and 'model="Echo-Model"' in ln for ln in lines)
    assert "ray_serve_" in text  # Serve's own metrics, from the same exporter


# -- issue 28 D: reservations from observed completion lengths -----------------------------------
def test_a_capped_tenant_spends_up_to_its_cap(base):
    """Echo-Model answers in a few tokens but its backend allows 256: reserving 256 completion
    tokens per call refused a tenant after one call. Once the pool has seen Echo-Model answer,
    the tenant gets close to its cap, and never past it by more than one call's capped cost."""
    c = client(base)
    for i in range(8):  # the pool learns Echo-Model's completion lengths (any tenant's calls)
        c.chat.completions.create(**ask(f"warm up {i}?"))
    capped, spent, one = client(base, key="sk-capped"), 0.0, 0.0
    for i in range(40):
        try:
            r = capped.chat.completions.create(**ask(f"question {i}?"))
        except openai.RateLimitError as e:
            assert e.body["code"] == "insufficient_quota"
            break
        cost = r.model_extra["router_r1"]["cost_usd"]
        spent, one = spent + cost, max(one, cost)
    else:
        pytest.fail("the capped tenant was never refused")
    assert one > 0 and spent > CAPPED_USD - 3 * one, (spent, one)
    assert spent <= CAPPED_USD + 256 * ECHO_PRICE / 1e6 + one


# -- issue 28 G: the conversation is the input ---------------------------------------------------
def test_the_router_reads_the_conversation_within_its_budget(lenient, base):
    convo = [{"role": "system", "content": "answer in one word"},
             {"role": "user", "content": "Who wrote the book Zelix?"},
             {"role": "assistant", "content": "Kestrel Velik"},
             {"role": "user", "content": "And when?"}]
    r = client(lenient).chat.completions.create(model="router-r1", messages=convo)
    assert r.choices[0].message.content and r.model_extra["router_r1"]["history_turns"] == 3
    long = convo[:1] + [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "zelix " * 40}
                        for i in range(8)] + convo[-1:]
    r = client(lenient).chat.completions.create(model="router-r1", messages=long)
    kept = r.model_extra["router_r1"]["history_turns"]
    assert 1 <= kept < 9  # the oldest turns were cut to fit serve.max_history_tokens
    # The module's main app ("auto"): the scripted router was trained on single questions.
    r = client(base).chat.completions.create(model="router-r1", messages=convo)
    assert r.model_extra["router_r1"]["history_turns"] == 0
