"""Deploy the Router-R1 Serve app on loopback for a bounded fuzz run: the scripted tiny router,
candidates on the fake OpenAI server (sent a planted key), tenant key `sk-fuzz-key`. Prints
`READY <url> <tmp dir> <Ray session dir>` and serves until MAX_S passes or <tmp dir>/STOP exists.

    RAY_ADDRESS=local python -m benchmarks.fuzz_serve [MAX_S=600] &
    schemathesis run <url>/openapi.json -H "Authorization: Bearer sk-fuzz-key" --checks all --max-examples 200
"""
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ["ROUTER_R1_TEST_PLANTED_KEY"] = "sk-PLNT-7Qx9Lm2Vb8Nc4Zr1Kd5"  # before ray.init: workers inherit it
import ray  # noqa: E402
import yaml  # noqa: E402
from ray import serve  # noqa: E402
from benchmarks.tiny_router import build_scripted_router  # noqa: E402
from deployments.router import build_app  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from router_r1.pool.descriptors import load_pool  # noqa: E402

MAX_S = float(sys.argv[1]) if len(sys.argv) > 1 else 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


fake = FakeOpenAIServer().start()
tmp = Path(tempfile.mkdtemp())
backend = {"kind": "openai", "base_url": fake.url, "api_key_env": "ROUTER_R1_TEST_PLANTED_KEY"}
lim = {"max_attempts": 1, "timeout_s": 5}
(tmp / "pool.yaml").write_text(yaml.safe_dump({"name": "fake", "models": [
    {"name": "Echo-Model", "price": 1.0, "backend": backend, "limits": lim},
    {"name": "Other-Model", "price": 3.0, "backend": backend, "limits": lim}]}))
(tmp / "config.yaml").write_text(yaml.safe_dump({
    "name": "fuzz", "pool": "pool.yaml",
    "pool_runtime": {"actor_name": "fuzz_pool", "ledger_dir": str(tmp / "ledger"), "cache": False, "num_cpus": 0},
    "episode": {"max_turns": 2, "max_new_tokens": 48},
    "serve": {"api_keys": {"sk-fuzz-key": "fuzz"}, "request_timeout_s": 10, "max_prompt_chars": 2000,
              "num_cpus": 0, "max_batch_size": 16, "batch_wait_timeout_s": 0.02}}))
ckpt = build_scripted_router(tmp / "router", load_pool(tmp / "pool.yaml"), "Echo-Model", steps=120)
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
port = free_port()
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(build_app({"checkpoint": str(ckpt), "config": str(tmp / "config.yaml")}), name="fuzz", route_prefix="/")
print(f"READY http://127.0.0.1:{port} {tmp} {ray._private.worker._global_node.get_session_dir_path()}", flush=True)
t0 = time.time()
while time.time() - t0 < MAX_S and not Path(tmp / "STOP").exists():
    time.sleep(1)
serve.shutdown()
ray.shutdown()
fake.stop()
