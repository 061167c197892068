"""The vLLM backend: a typed error where vLLM is absent; the backend through a fake vLLM with
the installed API's shapes (benchmarks/vllm_api_check.py checks them against the real one); a
real tiny run where vLLM and a GPU are."""
from __future__ import annotations

import asyncio
import importlib.util
import sys
import types

import pytest

from router_r1.pool.core import PoolCore
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def vllm_pool(ckpt: str) -> PoolSpec:
    return PoolSpec.model_validate({"models": [
        {"name": "tiny-vllm", "price": 0.1,
         "backend": {"kind": "vllm", "checkpoint": ckpt, "max_tokens": 8}}]})


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_a_clear_typed_failure(tmp_path):
    core = PoolCore(vllm_pool(str(tmp_path)), PoolRuntimeConfig(ledger_dir=None), "run")
    r = asyncio.run(core.call("tiny-vllm", "hello"))
    assert r.status is CallStatus.CONNECTION_ERROR and "needs vLLM" in r.error


class _FakeAsyncLLM:
    """vLLM's AsyncLLM (alias AsyncLLMEngine) as of 0.33/0.34: `get_tokenizer` is a plain method,
    `generate(prompt, sampling_params, request_id)` an async generator, `abort` a coroutine."""

    built: list[dict] = []

    def __init__(self, args):
        self.args, self.seen = args, []

    @classmethod
    def from_engine_args(cls, engine_args):
        cls.built.append(dict(engine_args))
        return cls(engine_args)

    def get_tokenizer(self):
        return types.SimpleNamespace(chat_template=None)

    async def generate(self, prompt, sampling_params, request_id):
        self.seen.append((prompt, sampling_params))
        for n in (1, 2):  # cumulative outputs, the last one final
            yield types.SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[types.SimpleNamespace(
                text="four"[: 2 * n], token_ids=[7] * n, finish_reason="stop" if n == 2 else None)])

    async def abort(self, request_id):
        pass


def test_backend_through_the_installed_api_shape(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.AsyncLLMEngine, vllm.SamplingParams = _FakeAsyncLLM, lambda **kw: kw
    engine = types.ModuleType("vllm.engine")
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.AsyncEngineArgs = lambda **kw: kw
    for name, mod in (("vllm", vllm), ("vllm.engine", engine), ("vllm.engine.arg_utils", arg_utils)):
        monkeypatch.setitem(sys.modules, name, mod)
    from router_r1.pool.backends.vllm_engine import VLLMBackend

    pool = vllm_pool("/ckpt")
    backend = VLLMBackend(pool, in_process=True, engine_args={"gpu_memory_utilization": 0.2})
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=None, cache=False), "run", {"vllm": backend})
    r = asyncio.run(core.call("tiny-vllm", "two plus two"))
    assert r.ok and r.text == "four" and (r.prompt_tokens, r.completion_tokens) == (3, 2), r
    (eng,) = backend._engines.values()
    (prompt, sampling), = eng.engine.seen
    assert prompt.startswith("user: two plus two") and sampling["max_tokens"] == 8
    assert _FakeAsyncLLM.built[-1]["gpu_memory_utilization"] == 0.2


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (gpu extra)")
def test_vllm_engine_answers_in_process(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from tiny_checkpoint import build_tiny_checkpoint

    ckpt = build_tiny_checkpoint(tmp_path / "ckpt")
    pool = vllm_pool(str(ckpt))
    from router_r1.pool.backends.vllm_engine import VLLMBackend
    backend = VLLMBackend(pool, in_process=True,
                          engine_args={"gpu_memory_utilization": 0.2, "enforce_eager": True})
    core = PoolCore(pool, PoolRuntimeConfig(ledger_dir=None), "run", {"vllm": backend})

    async def main():
        return await asyncio.gather(*(core.call("tiny-vllm", "two plus two") for _ in range(4)))

    rs = asyncio.run(main())
    assert all(r.ok and 0 < r.completion_tokens <= 8 for r in rs)
