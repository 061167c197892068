"""The prompt-only router over an OpenAI-compatible completions endpoint: a scripted local
server routes once, then answers; the episode machine plays it through the replay pool."""
from __future__ import annotations

import asyncio

from aiohttp import web

from routerbench_tiny import ROWS, response, write_pool, write_routerbench
from router_r1.descriptors import load_pool
from router_r1.endpoint_generator import CompletionsGenerator, restore_stop
from router_r1.episode import EpisodeConfig


def test_restore_stop():
    assert restore_stop("<think>x</think><search>Big: q", {"finish_reason": "stop"}).endswith("</search>")
    assert restore_stop("<answer> 4", {"finish_reason": "stop"}) == "<answer> 4</answer>"
    assert restore_stop("<answer> 4", {"finish_reason": "stop", "stop_reason": "</answer>"}) == "<answer> 4</answer>"
    assert restore_stop("<answer> 4", {"finish_reason": "length"}) == "<answer> 4"
    assert restore_stop("plain", {"finish_reason": "stop"}) == "plain"


def test_prompt_only_router_over_http(tmp_path):
    from pipelines.evaluate import _pool_target, load_dataset, run_policy
    from router_r1.baselines import EpisodePolicy
    from router_r1.evaluation import score_run

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
            runs = await run_policy(policy, items, _pool_target(pool, table, False, "ep"), True)
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
