"""The RLlib router's service (Ray-free) and its Serve app over real HTTP."""
from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request

import pytest
from routerbench_tiny import ROWS, response, write_pool, write_routerbench

from router_r1.pool.descriptors import load_pool


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    from pipelines import train_rllib

    d = tmp_path_factory.mktemp("rllib_serve")
    csv = write_routerbench(d / "tiny.csv")
    pool = write_pool(d / "pool.yaml", [csv])
    out = d / "router"
    train_rllib.train(train_rllib.build_parser().parse_args([
        "--pool", str(pool), "--data", str(csv), "--split", "all", "--iterations", "1", "--batch", "32",
        "--minibatch", "32", "--epochs", "1", "--hidden", "8", "--question-dim", "16", "--num-envs", "1",
        "--out", str(out), "--no-mlflow"]))
    return out, pool


def test_service_route_and_chat(trained):
    from actors.model_pool import PoolClient
    from router_r1.pool.core import PoolCore
    from router_r1.pool.runtime import PoolRuntimeConfig
    from router_r1.rl_router.router import RLlibRouter
    from router_r1.rl_router.service import RequestError, RLlibRouteService

    out, pool_path = trained
    pool = load_pool(pool_path)
    svc = RLlibRouteService(RLlibRouter.load(out, pool),
                            PoolClient(PoolCore(pool, PoolRuntimeConfig(ledger_dir=None))).call)
    q = ROWS[1][1]
    r = svc.route({"question": q})
    assert r["model"] in pool.names and r["decision_us"] > 0
    assert svc.route({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": q}]})["model"] \
        == r["model"]
    body = asyncio.run(svc.chat({"messages": [{"role": "user", "content": q}]}))
    chosen = body["router_r1"]["routed_to"]
    alias = {"Big": "m-big", "Mid": "m-mid", "Small": "m-small"}[chosen]
    assert body["choices"][0]["message"]["content"] == response(alias, "t.2")
    assert body["router_r1"]["cost_usd"] > 0
    for bad in ({}, {"question": "  "}, [], {"messages": [{"role": "assistant", "content": "hi"}]}):
        with pytest.raises(RequestError):
            svc.route(bad)
    with pytest.raises(RequestError) as e:
        asyncio.run(svc.chat({"question": "not in the replay tables"}))
    assert e.value.status == 502


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"error": {"message": raw.decode(errors="replace")}}


def test_serve_app_over_http(trained):
    from ray import serve

    from deployments.rllib_router import build_app

    out, pool = trained
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app({"router": str(out), "pool": str(pool), "pool_runtime.actor_name": "rllib_test_pool",
                     "pool_runtime.num_cpus": 0, "pool_runtime.ledger_dir": None, "num_cpus": 0})
    serve.run(app, name="rllib_test", route_prefix="/rllib")
    try:
        base = f"http://127.0.0.1:{port}/rllib"
        status, r = _post(f"{base}/v1/route", {"question": ROWS[0][1]})
        assert status == 200 and r["model"] in {"Big", "Mid", "Small"}
        status, r = _post(f"{base}/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": ROWS[0][1]}]})
        assert status == 200, r
        assert r["object"] == "chat.completion" and r["router_r1"]["cost_usd"] > 0
        status, r = _post(f"{base}/v1/route", {"nothing": 1})
        assert status == 400 and "question" in r["error"]["message"]
    finally:
        serve.shutdown()  # other modules start Serve with their own HTTP port
    with pytest.raises(ValueError, match="rllib_router.json"):
        build_app({"router": str(pool.parent)})
