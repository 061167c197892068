"""The served router from Python and MLflow, without Ray (issue 28 E): `router_r1.Router` runs the
Serve app's request logic in process; the MLflow pyfunc model is built on it, carries its code
and signature, and loads and predicts in a fresh virtualenv made from its own requirements."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIM_POOL = ROOT / "configs" / "pool_simulated.yaml"
QUESTIONS = ["Who founded Zelix Corp?", "Where was Tomas Velik born?"]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    """A scripted tiny router (benchmarks.tiny_router) over the simulated pool: routes once to the
    pool's first model, then answers."""
    from benchmarks.tiny_router import build_scripted_router
    from router_r1.pool.descriptors import load_pool

    pool = load_pool(SIM_POOL)
    tmp = tmp_path_factory.mktemp("router")
    ckpt = build_scripted_router(tmp / "policy", pool, pool.names[0], steps=120)
    return ckpt, pool


@pytest.fixture(scope="module")
def router(scripted):
    import router_r1

    ckpt, _ = scripted
    r = router_r1.Router.load(ckpt, pool=SIM_POOL, **{"episode.max_turns": 2, "episode.max_new_tokens": 48})
    yield r
    r.close()


def test_route_plays_the_episode_in_process(router, scripted):
    _, pool = scripted
    out = router.route(QUESTIONS[0])
    assert out["answer"] and out["models"] == [pool.names[0]] and out["cost_usd"] > 0
    assert out["format_ok"] and "<search>" in out["response"] and out["trace"][0]["status"] == "ok"


def test_chat_answers_as_serve_does(router):
    from openai.types.chat import ChatCompletion

    from router_r1.serving.openai_api import APIError

    body = router.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": QUESTIONS[1]}],
                       max_tokens=1)
    c = ChatCompletion.model_validate(body)
    assert c.choices[0].message.content and c.choices[0].finish_reason == "length"
    assert body["router_r1"]["trace"] and body["usage"]["total_tokens"] > 0
    with pytest.raises(APIError) as e:
        router.chat([{"role": "user", "content": "q"}], logprobs=True)
    assert e.value.status == 400 and e.value.code == "unsupported_parameter"


def test_many_questions_share_generation_batches(router):
    before = (router.batcher.batches, router.batcher.turns)
    rows = router.route_many([f"question number {i}?" for i in range(8)])
    assert all(r["answer"] for r in rows)
    batches, turns = router.batcher.batches - before[0], router.batcher.turns - before[1]
    assert turns >= 16 and batches < turns / 2, (batches, turns)


def log_model(ckpt: Path, tmp: Path) -> str:
    """Log the router as the train driver does; returns the model's local folder."""
    import mlflow

    from router_r1.infra.config import MlflowConfig
    from router_r1.infra.tracking import MlflowTracker
    from router_r1.serving.mlflow_model import log_router

    tracker = MlflowTracker(MlflowConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="e28"))
    run_id = tracker.start(run_name="router")
    log_router(tracker, ckpt, SIM_POOL, {"episode": {"max_turns": 2, "max_new_tokens": 48}})
    tracker.end()
    return mlflow.artifacts.download_artifacts(f"runs:/{run_id}/router", dst_path=str(tmp / "model"))


@pytest.fixture(scope="module")
def logged(scripted, tmp_path_factory):
    ckpt, _ = scripted
    return Path(log_model(ckpt, tmp_path_factory.mktemp("mlflow")))


def test_the_mlflow_model_carries_code_signature_and_pinned_requirements(logged, scripted):
    import mlflow
    import pandas as pd

    assert (logged / "code" / "router_r1" / "serving" / "router.py").is_file()
    reqs = (logged / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in reqs) and any(r.startswith("mlflow") for r in reqs)
    assert not any(r.startswith("router-r1") for r in reqs)  # the code travels with the model
    model = mlflow.pyfunc.load_model(str(logged))
    assert model.metadata.get_input_schema().input_names() == ["question"]
    out = model.predict(pd.DataFrame({"question": QUESTIONS}))
    assert list(out["question"]) == QUESTIONS and all(out["answer"]) and all(out["format_ok"])
    assert {"models", "cost_usd", "response"} <= set(out.columns)


@pytest.mark.slow
def test_the_mlflow_model_loads_and_predicts_in_a_fresh_virtualenv(logged, tmp_path):
    """A virtualenv made from nothing but the model's requirements.txt (pip's cache reused; torch
    comes from the local CPU wheel), then load and predict there, in a subprocess whose working
    directory and path hold no copy of this repository."""
    venv = tmp_path / "venv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(logged / "requirements.txt")],
                         capture_output=True, text=True, env=env, timeout=1500)
    assert pip.returncode == 0, pip.stderr[-3000:]
    script = ("import json, sys, mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "out = m.predict(pd.DataFrame({'question': json.loads(sys.argv[2])}))\n"
              "print(json.dumps({'rows': out[['question', 'answer', 'models', 'cost_usd']].to_dict('records'),"
              " 'router_r1': __import__('router_r1').__file__}, default=str))\n")
    run = subprocess.run([str(py), "-c", script, str(logged), json.dumps(QUESTIONS)], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert [r["question"] for r in got["rows"]] == QUESTIONS and all(r["answer"] for r in got["rows"])
    assert str(logged) in got["router_r1"] or "/code/" in got["router_r1"]  # the model's own code
    print(f"fresh virtualenv: install + predict in {time.monotonic() - t0:.0f} s")


def test_first_calls_from_many_threads_share_one_event_loop(scripted):
    """`Router.chat`/`route` called from many threads at once (a thread pool of requests) run on
    one event loop: two loops would split the pool core's state and hand the turn batcher's lock
    to a loop it is not bound to ("... is bound to a different event loop")."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import router_r1

    ckpt, _ = scripted
    r = router_r1.Router.load(ckpt, pool=SIM_POOL, **{"episode.max_turns": 2, "episode.max_new_tokens": 48})
    before = {t.ident for t in threading.enumerate() if t.name == "router-r1"}
    start = threading.Barrier(12)

    def ask(i: int) -> dict:
        start.wait()
        return r.route(f"question number {i}?")

    try:
        with ThreadPoolExecutor(12) as pool:
            rows = list(pool.map(ask, range(12)))
        loops = {t.ident for t in threading.enumerate() if t.name == "router-r1"} - before
        assert all(row["answer"] for row in rows)
        assert len(loops) == 1, f"{len(loops)} event-loop threads for one router"
    finally:
        r.close()
    assert r.route(QUESTIONS[0])["answer"]  # usable again after close: a new loop, the batcher follows it
    r.close()
