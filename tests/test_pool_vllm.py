"""The vLLM backend: a typed error where vLLM is absent; a real tiny run where it is (GPU)."""
from __future__ import annotations

import asyncio
import importlib.util

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
