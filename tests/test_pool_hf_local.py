"""The transformers backend on a tiny checkpoint built here (config + a locally trained tokenizer)."""
from __future__ import annotations

import asyncio

import pytest

from router_r1.pool.backends import make_backend
from router_r1.pool.core import PoolCore
from router_r1.pool.descriptors import PoolSpec
from router_r1.pool.runtime import PoolRuntimeConfig
from router_r1.pool.types import CallStatus

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from tiny_checkpoint import build_tiny_checkpoint
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"))


def pool_for(path) -> PoolSpec:
    return PoolSpec.model_validate({"models": [
        {"name": "tiny", "price": 0.1, "backend": {"kind": "transformers", "checkpoint": str(path), "max_tokens": 6}},
        {"name": "missing", "price": 0.1, "backend": {"kind": "transformers", "checkpoint": "/nonexistent/ckpt"}}]})


def test_concurrent_calls_are_batched_and_greedy_is_deterministic(tiny_checkpoint):
    pool = pool_for(tiny_checkpoint)

    async def main():
        be = make_backend("transformers", pool, device="cpu", batch_wait_s=0.05)
        msgs = [[{"role": "user", "content": q}] for q in ("the capital of france", "two plus two", "who wrote hamlet?")]
        replies = await asyncio.gather(*(be.complete(pool["tiny"], m, {"temperature": 0.0}) for m in msgs * 2))
        engine = await be.engine(pool["tiny"])
        await be.close()
        return replies, engine

    replies, engine = asyncio.run(main())
    assert engine.batches_run == 1  # six concurrent calls, one generate
    assert all(isinstance(r.text, str) and 0 < r.completion_tokens <= 6 and r.prompt_tokens > 0 for r in replies)
    assert [r.text for r in replies[:3]] == [r.text for r in replies[3:]]
    assert replies[0].prompt_tokens == len(engine.tok(engine.render(
        [{"role": "user", "content": "the capital of france"}]), add_special_tokens=False)["input_ids"])


def test_through_the_pool_billed_and_typed_when_missing(tiny_checkpoint):
    core = PoolCore(pool_for(tiny_checkpoint), PoolRuntimeConfig(ledger_dir=None), "run")

    async def main():
        ok = await core.call("tiny", "two plus two", {"temperature": 0.8, "seed": 1})
        missing = await core.call("missing", "two plus two")
        await core.close()
        return ok, missing

    ok, missing = asyncio.run(main())
    assert ok.ok and ok.cost_usd > 0 and ok.completion_tokens <= 6
    assert missing.status is CallStatus.CONNECTION_ERROR and "not found" in missing.error
