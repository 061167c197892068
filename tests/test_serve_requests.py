"""The Serve request boundary without Ray: what a client can send is refused per request, with a
400 in OpenAI's error shape, before it reaches a shared batch or a tokenizer (issue 14)."""
from __future__ import annotations

import json

import pytest

from router_r1.serving.openai_api import MAX_DEPTH, APIError, ChatCompletionRequest, parse_request, request_schema

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
    (body(n="1"), "n"),
    (body(n=1.5), "n"),
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
    roles = [alt["properties"]["role"]["const"] for alt in props["messages"]["items"]["oneOf"]]
    assert roles == ["system", "developer", "user", "assistant", "tool"]
    assert props["logprobs"]["enum"] == [None, False] and s["additionalProperties"] is False
    ChatCompletionRequest.model_validate({"model": "m", "messages": Q})


# -- per-request isolation in the batched generation ---------------------------------------------
def test_a_failing_batch_is_retried_item_by_item_so_only_the_bad_item_fails():
    import asyncio

    from router_r1.serving.generation import generate_isolated
    from router_r1.env.generation import Generation

    calls = []

    def generate(contexts, max_new_tokens, temperature, top_p):
        calls.append(len(contexts))
        if any(-1 in c for c in contexts):
            raise ValueError("token id -1 out of range")
        return [Generation(ids=[len(c)], text="ok") for c in contexts]

    g = (0.0, 1.0, 8, None)
    items = [([1, 2], g), ([3, -1], g), ([4], g), ([5], (0.7, 1.0, 8, None))]
    out = asyncio.run(generate_isolated(generate, items))
    assert [type(x).__name__ for x in out] == ["Generation", "ValueError", "Generation", "Generation"]
    assert out[0].ids == [2] and out[2].ids == [1] and out[3].ids == [1]
    assert calls == [3, 1, 1, 1, 1]  # the greedy group failed once, then went one by one


def test_a_prompt_longer_than_the_context_window_is_400_from_token_counts():
    from router_r1.serving.service import RouterService
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
    assert e.value.status == 400 and e.value.code == "context_length_exceeded" and "tokens" in e.value.message


# -- issue 28 A: every OpenAI field honoured or refused -------------------------------------------
def test_every_sdk_request_field_has_a_rule():
    """The field list is the installed openai SDK's; each field is honoured or refused by rule."""
    from router_r1.serving.openai_api import FIELDS, ROUTER_FIELDS, SDK_FIELDS

    assert {"messages", "model", "logprobs", "tools", "seed", "stop", "user", "stream"} <= SDK_FIELDS
    assert SDK_FIELDS <= set(FIELDS), sorted(SDK_FIELDS - set(FIELDS))
    assert not set(ROUTER_FIELDS) & SDK_FIELDS


@pytest.mark.parametrize("field, value", [
    ("logprobs", True), ("top_logprobs", 2), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "auto"), ("response_format", {"type": "json_object"}), ("presence_penalty", 0.5),
    ("frequency_penalty", 1), ("logit_bias", {"12": 3}), ("n", 2), ("store", True),
    ("modalities", ["text", "audio"]), ("reasoning_effort", "high"), ("parallel_tool_calls", True),
])
def test_unsupported_fields_are_refused_or_dropped(field, value):
    with pytest.raises(APIError) as e:
        parse_request(body(**{field: value}))
    assert e.value.status == 400 and e.value.code == "unsupported_parameter" and e.value.param == field
    assert field in e.value.message
    req = parse_request(body(**{field: value}), drop_params=True)
    assert req.dropped == [field]


@pytest.mark.parametrize("field, value", [
    ("logprobs", False), ("response_format", {"type": "text"}), ("presence_penalty", 0), ("n", 1),
    ("tool_choice", "none"), ("store", False), ("logit_bias", {}), ("modalities", ["text"]),
    ("service_tier", "auto"), ("tools", None),
])
def test_do_nothing_values_of_refused_fields_are_accepted(field, value):
    assert parse_request(body(**{field: value})).dropped == []


def test_unknown_fields_and_non_text_parts_are_refused():
    with pytest.raises(APIError) as e:
        parse_request(body(temprature=0.5))
    assert e.value.code == "unknown_parameter" and e.value.param == "temprature"
    assert parse_request(body(temprature=0.5), drop_params=True).dropped == ["temprature"]
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    raw = json.dumps({"model": "router-r1", "messages": image}).encode()
    with pytest.raises(APIError) as e:
        parse_request(raw)
    assert e.value.code == "unsupported_parameter" and e.value.param == "messages.0.content.1.type"
    req = parse_request(raw, drop_params=True)
    assert req.dropped == ["messages.0.content.1"] and req.question() == "what is this?"


def test_tool_message_needs_content_and_call_id():
    for msg in ({"role": "tool", "content": "", "tool_call_id": "c1"}, {"role": "tool", "content": "r"}):
        raw = json.dumps({"model": "router-r1", "messages": [msg, Q[0]]}).encode()
        with pytest.raises(APIError) as e:
            parse_request(raw)
        assert e.value.status == 400 and e.value.param.startswith("messages.0."), e.value.param
    parse_request(json.dumps({"model": "router-r1", "messages": [
        {"role": "tool", "content": "r", "tool_call_id": "c1"}, Q[0]]}).encode())


def test_honoured_fields_parse():
    r = parse_request(body(stop=["\n", "END"], seed=7, user="alice", max_completion_tokens=5,
                           max_tokens=9, stream_options=None, prompt_cache_key="k"))
    assert r.stops == ["\n", "END"] and r.seed == 7 and r.end_user == "alice" and r.answer_max_tokens == 5
    assert parse_request(body(stop="x")).stops == ["x"]
    for bad in ({"stop": ["a"] * 5}, {"stop": [""]}, {"user": 3}):
        with pytest.raises(APIError):
            parse_request(body(**bad))


class ScriptedRouter:
    """A generate_one that writes, turn by turn, the texts it is given (the last one repeats),
    recording the sampling parameters and contexts it was asked with."""

    def __init__(self, tok, texts):
        self.tok, self.texts, self.seen = tok, list(texts), []

    async def __call__(self, context, gen):
        from router_r1.env.generation import Generation

        self.seen.append((list(context), gen))
        text = self.texts[min(len(self.seen) - 1, len(self.texts) - 1)]
        ids = self.tok.encode(text, add_special_tokens=False)
        return Generation(ids=ids, logprobs=[0.0] * len(ids), text=self.tok.decode(ids, skip_special_tokens=True))


ROUTE = "<think> ask </think><search> A: who wrote zelix </search>"
ANSWER = "<think> got it </think><answer> the book zelix was written by kestrel velik </answer>"


def make_service(texts, **serve):
    from router_r1.serving.service import RouterService
    from router_r1.engines.model import train_tokenizer
    from router_r1.infra.config import RunConfig
    from router_r1.pool.descriptors import PoolSpec
    from router_r1.pool.types import CallResult

    tok = train_tokenizer([ROUTE + ANSWER + " <answer> </answer> <information> </information> who wrote the book "
                           "zelix and when"] * 20, vocab_size=300)
    pool = PoolSpec.model_validate({"models": [{"name": "A", "price": 1.0, "backend": {"kind": "simulated"}}]})
    cfg = RunConfig.model_validate({"serve": serve, "episode": {"max_turns": 2, "max_new_tokens": 48}})
    router = ScriptedRouter(tok, texts)
    calls = []

    async def call(model, query, **context):
        calls.append((model, query, context))
        return CallResult(model, "kestrel velik", prompt_tokens=5, completion_tokens=3, cost_usd=8e-6)

    service = RouterService(pool, cfg.serve, cfg.episode, tok, router, call)
    return service, router, calls, tok


def run(service, **extra):
    import asyncio

    req = parse_request(body(**extra), drop_params=service.cfg.drop_params)
    return asyncio.run(service.run(service.plan(req, "t")))


def test_max_tokens_bounds_the_answer_not_each_turn():
    service, router, _, tok = make_service([ROUTE, ANSWER])
    full = run(service)
    assert full.answer == "the book zelix was written by kestrel velik" and full.finish_reason == "stop"
    service, router, _, tok = make_service([ROUTE, ANSWER])
    one = run(service, max_tokens=1)
    assert one.answer and one.finish_reason == "length"
    assert len(tok.encode(one.answer, add_special_tokens=False)) == 1 and full.answer.startswith(one.answer)
    assert all(gen[2] == 48 for _, gen in router.seen)  # router turns keep their own budget
    service, *_ = make_service([ROUTE, ANSWER])
    assert run(service, max_completion_tokens=3, max_tokens=50).finish_reason == "length"


def test_stop_is_applied_to_the_answer():
    service, *_ = make_service([ROUTE, ANSWER])
    out = run(service, stop=["written", "zzz"])
    assert out.answer == "the book zelix was " and out.finish_reason == "stop"


def test_seed_seeds_each_router_turn():
    seeds = []
    for _ in range(2):
        service, router, *_ = make_service([ROUTE, ANSWER])
        run(service, seed=11, temperature=0.8)
        seeds.append([gen[3] for _, gen in router.seen])
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 2 and None not in seeds[0]
    service, router, *_ = make_service([ROUTE, ANSWER])
    run(service, seed=12, temperature=0.8)
    assert [gen[3] for _, gen in router.seen] != seeds[0]
    service, router, *_ = make_service([ROUTE, ANSWER])
    run(service, seed=11)  # greedy: nothing to seed
    assert [gen[3] for _, gen in router.seen] == [None, None]


def test_user_is_the_end_user_of_every_call():
    service, _, calls, _ = make_service([ROUTE, ANSWER])
    out = run(service, user="alice@example.com")
    assert calls and all(ctx["end_user"] == "alice@example.com" for _, _, ctx in calls)
    assert out.extra()["end_user"] == "alice@example.com"


def test_max_turns_0_forces_the_final_answer():
    # The router routes on its only turn; the server appends <answer> and it answers.
    service, router, calls, _ = make_service([ROUTE, "kestrel velik </answer>"])
    out = run(service, max_turns=0)
    assert calls == [] and out.answer == "kestrel velik" and out.forced_answer
    assert router.seen[-1][0][-3:] != router.seen[0][0][-3:]  # the forced turn's context ends with <answer>
    assert out.extra()["forced_answer"] and not out.extra()["format_ok"]


def test_a_seeded_sampled_turn_is_generated_alone():
    import asyncio

    from router_r1.serving.generation import generate_isolated
    from router_r1.env.generation import Generation

    calls = []

    def generate(contexts, max_new_tokens, temperature, top_p, seed=None):
        calls.append((len(contexts), seed))
        return [Generation(ids=[1], text="x") for _ in contexts]

    plain, seeded = (0.7, 1.0, 8, None), (0.7, 1.0, 8, 5)
    asyncio.run(generate_isolated(generate, [([1], plain), ([2], seeded), ([3], plain), ([4], seeded)]))
    assert sorted(calls, key=str) == sorted([(2, None), (1, 5), (1, 5)], key=str)


# -- issue 28 B: no silent failure ---------------------------------------------------------------
def test_no_answer_without_a_fallback_is_a_502():
    import asyncio

    service, *_ = make_service([ROUTE])  # routes on every turn, and again when forced to answer
    req = parse_request(body())
    with pytest.raises(APIError) as e:
        asyncio.run(service.run(service.plan(req, "t")))
    assert e.value.status == 502 and e.value.code == "router_no_answer"
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


def test_no_answer_runs_the_fallback_model_on_the_conversation():
    service, router, calls, _ = make_service([ROUTE], fallback_model="A")
    convo = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "who wrote zelix"},
             {"role": "assistant", "content": "a man"}, {"role": "user", "content": "which man?"}]
    req = parse_request(json.dumps({"model": "router-r1", "messages": convo}).encode())
    import asyncio
    out = asyncio.run(service.run(service.plan(req, "t")))
    extra = out.extra()
    assert out.answer == "kestrel velik" and extra["fallback"] and not extra["format_ok"]
    model, sent, _ = calls[-1]
    assert model == "A" and sent == [{"role": "system", "content": "be brief"}, *convo[1:]]
    assert extra["trace"][-1]["fallback"] and extra["cost_usd"] == pytest.approx(8e-6 * len(calls))
    assert out.usage()["prompt_tokens"] >= 5 * len(calls)


def test_markup_is_never_an_answer():
    from router_r1.serving.service import valid_answer

    assert valid_answer("Paris") == "Paris" and valid_answer(" x </think> more") == "x"
    assert valid_answer("a < b") == "a < b"  # not a tag
    for bad in (None, "", "   ", "<search> A: q </search>", " <think> x"):
        assert valid_answer(bad) is None


# -- issue 28 F: the answer streams as the router writes it ----------------------------------------
class StreamingRouter(ScriptedRouter):
    """A ScriptedRouter whose engine samples in a thread, one token every few ms, telling on_token."""

    async def __call__(self, context, gen, on_token=None):
        import time as _time

        out = await super().__call__(context, gen)

        def sample():
            for t in out.ids:
                if on_token is not None:
                    on_token(t)
                _time.sleep(0.005)
            self.turn_ends.append(_time.perf_counter())
        await asyncio.to_thread(sample)
        return out


import asyncio  # noqa: E402


def stream_run(texts, **extra):
    import time as _time

    service, _, _, tok = make_service(texts)
    router = StreamingRouter(tok, texts)
    router.turn_ends = []
    service._generate_one = router
    events = []
    req = parse_request(body(**extra))
    out = asyncio.run(service.run(service.plan(req, "t"),
                                  on_event=lambda e: events.append((_time.perf_counter(), e))))
    return out, events, router.turn_ends


def test_answer_deltas_arrive_while_the_router_writes_them():
    out, events, turn_ends = stream_run([ROUTE, ANSWER])
    deltas = [(t, e["text"]) for t, e in events if e["type"] == "answer_delta"]
    assert "".join(d for _, d in deltas) == out.answer == "the book zelix was written by kestrel velik"
    assert len(deltas) > 3 and deltas[0][0] < turn_ends[-1]  # the first words came before the turn ended
    kinds = [e["type"] for _, e in events]
    assert kinds.index("route") < kinds.index("call_result") < kinds.index("answer_delta")


@pytest.mark.parametrize("extra", [{"stop": ["written"]}, {"max_tokens": 3}, {"stop": ["kestrel v"], "max_tokens": 30}])
def test_streamed_deltas_add_up_to_the_bounded_answer(extra):
    out, events, _ = stream_run([ROUTE, ANSWER], **extra)
    deltas = "".join(e["text"] for _, e in events if e["type"] == "answer_delta")
    assert deltas == out.answer and out.answer and not any(e["type"] == "answer_replaced" for _, e in events)


def test_a_forced_answer_streams_too():
    out, events, _ = stream_run([ROUTE, "kestrel velik </answer>"], max_turns=0)
    assert out.forced_answer and "".join(e["text"] for _, e in events if e["type"] == "answer_delta") == out.answer


# -- issue 28 G: the conversation is the input ---------------------------------------------------
CONVO = [{"role": "system", "content": "answer in one word"},
         {"role": "user", "content": "who wrote the book zelix"},
         {"role": "assistant", "content": "kestrel velik"},
         {"role": "user", "content": "and when"}]


def plan_of(service, messages):
    return service.plan(parse_request(json.dumps({"model": "router-r1", "messages": messages}).encode()), "t")


def test_the_router_reads_the_system_prompt_and_earlier_turns():
    service, *_ = make_service([ROUTE, ANSWER])
    assert "Conversation so far" not in plan_of(service, CONVO).prompt  # "auto": trained on single questions
    service.prompt_options = service.prompt_options.model_copy(update={"conversation": True})  # trained on them
    plan = plan_of(service, CONVO)
    assert "Conversation so far:\nSystem: answer in one word\nUser: who wrote the book zelix\n" \
           "Assistant: kestrel velik\n\nQuestion: and when\n" in plan.prompt
    single = plan_of(service, CONVO[-1:])
    assert "Conversation so far" not in single.prompt  # no history: the single-question prompt, as trained
    from router_r1.env.prompt import render_prompt_ids
    assert (single.prompt, single.prompt_ids) == render_prompt_ids(service.tokenizer, service.pool, "and when",
                                                                   service.prompt_options)
    service.cfg = service.cfg.model_copy(update={"conversation": "off"})
    assert plan_of(service, CONVO).prompt == single.prompt


def test_the_oldest_turns_are_cut_first_and_the_system_prompt_last():
    service, *_ = make_service([ROUTE, ANSWER], conversation="on")
    long = [CONVO[0]] + [{"role": r, "content": f"turn {i} " + "zelix " * 20}
                         for i, r in enumerate(["user", "assistant"] * 4)] + [CONVO[-1]]
    service.cfg = service.cfg.model_copy(update={"max_history_tokens": 150})
    plan = plan_of(service, long)
    kept = [t["content"].split()[1] for t in plan.history if t["role"] != "system"]
    assert plan.history[0] == CONVO[0] and kept and kept == sorted(kept)[-len(kept):] and "7" in kept
    assert "turn 0" not in plan.prompt
    service.cfg = service.cfg.model_copy(update={"max_history_tokens": 0})
    assert plan_of(service, long).history == []


def test_a_candidate_sees_the_sub_question_or_the_conversation():
    import asyncio

    service, _, calls, _ = make_service([ROUTE, ANSWER], conversation="on")
    asyncio.run(service.run(plan_of(service, CONVO)))
    assert calls[0][1] == "who wrote zelix"  # default: the router's sub-question alone
    service, _, calls, _ = make_service([ROUTE, ANSWER], candidate_context="conversation", conversation="on")
    asyncio.run(service.run(plan_of(service, CONVO)))
    assert calls[0][1] == [{"role": "system", "content": "answer in one word"},
                           {"role": "user", "content": "who wrote the book zelix"},
                           {"role": "assistant", "content": "kestrel velik"},
                           {"role": "user", "content": "who wrote zelix"}]


# -- issue 28 H: the conformance table lists every field ------------------------------------------
def test_the_conformance_table_lists_every_sdk_field_with_its_rule():
    from pathlib import Path

    from router_r1.serving.openai_api import FIELDS, SDK_FIELDS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    table = doc[doc.index("## Conformance"):doc.index("## Tenants and keys")]
    rows = {ln.split("|")[1].strip().strip("`"): ln for ln in table.splitlines() if ln.startswith("| `")}
    assert set(rows) == set(SDK_FIELDS), sorted(set(rows) ^ set(SDK_FIELDS))
    for name, row in rows.items():
        assert ("**honoured**" in row) == FIELDS[name].honoured, row


@pytest.mark.parametrize("value", [b"Infinity", b"-Infinity", b"NaN", b"1e999"])
def test_max_cost_usd_must_be_finite(value):
    raw = b'{"model": "router-r1", "messages": [{"role": "user", "content": "q"}], "max_cost_usd": ' + value + b"}"
    with pytest.raises(APIError) as e:
        parse_request(raw)
    assert e.value.status == 400 and e.value.param == "max_cost_usd"


def test_the_in_process_batcher_answers_a_poisoned_turn_as_serve_does():
    """A turn that fails alone is this request's 400 (as Serve's batch answers it); the others
    batched with it are generated; an engine that fails every turn fails each request alone."""
    import asyncio

    from router_r1.env.generation import Generation
    from router_r1.serving.generation import TurnBatcher

    def generate(contexts, max_new_tokens, temperature, top_p, **kw):
        if any(c[0] == 666 for c in contexts):
            raise ValueError("poisoned context")
        return [Generation(ids=[c[0]], text=str(c[0])) for c in contexts]

    async def main(batcher):
        gen = (0.0, 1.0, 4, None)
        return await asyncio.gather(batcher([1], gen), batcher([666], gen), batcher([2], gen),
                                    return_exceptions=True)

    ok1, bad, ok2 = asyncio.run(main(TurnBatcher(generate)))
    assert ok1.text == "1" and ok2.text == "2"
    assert isinstance(bad, APIError) and bad.status == 400 and "poisoned context" in bad.message

    def broken(contexts, *a, **kw):
        raise RuntimeError("engine down")

    assert all(isinstance(r, APIError) and r.status == 400 and "engine down" in r.message
               for r in asyncio.run(main(TurnBatcher(broken))))


def test_continuous_turns_answer_a_turn_that_failed_alone_with_400():
    """Continuous batching: the engine says which turn failed alone (`TurnFailed`); that is its
    request's 400, as with turn batching. Its sink and parameters reach the engine as given."""
    import asyncio

    from router_r1.env.generation import Generation, TurnFailed
    from router_r1.serving.generation import ContinuousTurns

    seen = []

    class Engine:
        async def generate_turn(self, ids, max_new_tokens, temperature, top_p, seed=None, on_token=None):
            seen.append((ids, max_new_tokens, temperature, top_p, seed))
            if ids[0] == 666:
                raise TurnFailed(ValueError("poisoned context"))
            on_token(ids[0])
            return Generation(ids=[ids[0]], text=str(ids[0]))

    heard = []

    async def main():
        turns = ContinuousTurns(Engine())
        return await asyncio.gather(turns([1], (0.7, 0.9, 4, 5), heard.append),
                                    turns([666], (0.0, 1.0, 4, None), heard.append), return_exceptions=True)

    ok, bad = asyncio.run(main())
    assert ok.text == "1" and heard == [1] and seen[0] == ([1], 4, 0.7, 0.9, 5)
    assert isinstance(bad, APIError) and bad.status == 400 and "poisoned context" in bad.message
