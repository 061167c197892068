"""The prompt-only router over an OpenAI-compatible completions endpoint: a scripted local
server routes once, then answers; the episode machine plays it through the replay pool."""
from __future__ import annotations

import asyncio

from aiohttp import web

from routerbench_tiny import ROWS, response, write_pool, write_routerbench
from router_r1.engines.endpoint import CompletionsGenerator, restore_stop
from router_r1.env.episode import EpisodeConfig
from router_r1.pool.descriptors import load_pool


def test_restore_stop():
    assert restore_stop("<think>x</think><search>Big: q", {"finish_reason": "stop"}).endswith("</search>")
    assert restore_stop("<answer> 4", {"finish_reason": "stop"}) == "<answer> 4</answer>"
    assert restore_stop("<answer> 4", {"finish_reason": "stop", "stop_reason": "</answer>"}) == "<answer> 4</answer>"
    assert restore_stop("<answer> 4", {"finish_reason": "length"}) == "<answer> 4"
    assert restore_stop("plain", {"finish_reason": "stop"}) == "plain"


def test_prompt_only_router_over_http(tmp_path):
    from pipelines.evaluate import pool_target, load_dataset, run_policy
    from router_r1.evaluation.baselines import EpisodePolicy
    from router_r1.evaluation.report import score_run

    seen: list[dict] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if body["prompt"].count("<information>") < 2:  # the instructions mention the tag once
            text = "<think>ask the big one</think>\n<search> Big: what is it? "
        else:
            text = "<think>it answered</think>\n<answer> m-big "
        return web.json_response({"choices": [{"text": text, "finish_reason": "stop"}]})

    async def go():
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            csv = write_routerbench(tmp_path / "tiny.csv")
            pool = load_pool(write_pool(tmp_path / "pool.yaml", [csv]))
            _, items, table = load_dataset([csv], "all", 0.2, 0, None)
            gen = CompletionsGenerator(f"http://127.0.0.1:{port}/v1", "router", EpisodeConfig(max_turns=2))
            policy = EpisodePolicy("prompt:router", gen.generate, pool, EpisodeConfig(max_turns=2))
            runs = await run_policy(policy, items, pool_target(pool, table, False, "ep"), True)
            return pool, items, table, runs
        finally:
            await runner.cleanup()

    pool, items, table, runs = asyncio.run(go())
    rows = [score_run(i, r, pool, table.models) for i, r in zip(items, runs)]
    # It always asks Big (the sub-question is replaced by the sample's question in the replay
    # world) and answers by naming it: Big's labels are 1, 1, 0, 1.
    assert [r["accuracy"] for r in rows] == [1.0, 1.0, 0.0, 1.0]
    assert all(r["format_ok"] and r["models"] == ["Big"] for r in rows)
    assert runs[1].calls[0].text == response("m-big", "t.2")
    assert seen[0]["stop"] == ["</search>", "</answer>"] and ROWS[0][1] in seen[0]["prompt"]


def test_token_mode_sends_ids_and_keeps_the_returned_ids(bpe_checkpoint):
    """Against a vLLM-like completions server: the context goes out as token ids, the sampled ids
    and log-probs come back ('token_id:N'), and the episode keeps them as they are."""
    import pytest

    from router_r1.engines.endpoint import EndpointError
    from router_r1.engines.model import load_policy
    from router_r1.env.episode import Episode, run_episodes
    from router_r1.pool.types import CallResult

    _, tok = load_policy(bpe_checkpoint)
    sent: list[list[int]] = []
    returned: list[list[int]] = []
    server = {"ids": True}  # False: answer as a server that returns no token ids

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        assert body["logprobs"] == 1 and body["return_tokens_as_token_ids"] is True
        sent.append(body["prompt"])
        routed = tok.decode(body["prompt"]).count("<information>") > 0
        text = ("<think> it said </think>\n<answer> Paris </answer>" if routed else
                "<think> ask </think>\n<search> Qwen-Small: who? </search>\n")
        ids = tok.encode(text, add_special_tokens=False)
        returned.append(ids)
        if not server["ids"]:
            return web.json_response({"choices": [{"text": text, "finish_reason": "stop"}]})
        return web.json_response({"choices": [{"text": text, "finish_reason": "stop", "logprobs": {
            "tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-0.25] * len(ids)}}]})

    async def reply(model, query):
        return CallResult(model=model, text="Paris.", prompt_tokens=1, completion_tokens=1)

    async def go():
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            cfg = EpisodeConfig(max_turns=2)
            gen = CompletionsGenerator(f"http://127.0.0.1:{port}/v1", "router", cfg, tokenizer=tok)
            p = tok.encode("Question: who?\n", add_special_tokens=False)
            e = Episode("x", "who?", ["Paris"], tok.decode(p), prompt_ids=p)
            await run_episodes([e], gen.generate, reply, cfg, tokenizer=tok)
            return e
        finally:
            await runner.cleanup()

    e = asyncio.run(go())
    policy = [s for s in e.segments if s.origin == "policy"]
    # "</search>\n": the ids after the stop token are cut, log-probs alongside.
    assert policy[0].ids == returned[0][:len(policy[0].ids)] and policy[1].ids == returned[1]
    assert tok.decode(policy[0].ids).endswith("</search>") and policy[0].logprobs == [-0.25] * len(policy[0].ids)
    assert sent[0] == e.prompt_ids and sent[1] == e.prompt_ids + policy[0].ids + e.segments[1].ids
    assert e.parsed().answer == "Paris"
    server["ids"] = False
    with pytest.raises(EndpointError, match="no token ids"):
        asyncio.run(go())
