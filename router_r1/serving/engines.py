"""The router policy's generator for serving: transformers on CPU, vLLM on GPU, one interface.

Both expose `generate(prompt_ids, max_new_tokens, temperature, top_p) -> [Generation]`
(router_r1.env.generation: sampled ids, log-probs, text), stopping at </search> or </answer>, so the
deployment batches turns the same way whichever runs. With continuous batching
(`make_continuous`) both expose `async generate_turn(ids, ...)` instead, one turn per call, and
batch the turns in flight themselves. vLLM is imported only when chosen (it is the `gpu` extra,
absent on CPU machines).
"""
from __future__ import annotations

import copy
from pathlib import Path

from router_r1.engines.hf import HFGenerator
from router_r1.engines.model import load_policy


def make_generator(engine: str, checkpoint: str | Path, device: str = "cpu", dtype: str = "auto",
                   gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1):
    """(generator, tokenizer) for `engine` ("transformers" or "vllm") over a local checkpoint.

    The tokenizer returned is a private copy for the event loop (counting, truncating replies):
    a fast tokenizer's padding/truncation state is switched per call, so sharing one instance
    with the generation thread lets a plain `encode` un-pad a batch mid-call. `dtype` is the
    policy's (policy.dtype; "auto": the checkpoint's own, passed to vLLM by name so that a
    float32 checkpoint is not silently served in float16)."""
    from router_r1.engines.model import dtype_name, resolve_dtype

    torch_dtype = resolve_dtype(dtype, checkpoint)
    if engine == "vllm":  # the rollout engine (router_r1.engines.vllm), lazily imported
        from router_r1.engines.vllm import VLLMGenerator

        gen = VLLMGenerator(checkpoint, dtype=dtype_name(torch_dtype), gpu_memory_utilization=gpu_memory_utilization,
                            tensor_parallel_size=tensor_parallel_size)
        return gen, copy.deepcopy(gen.llm.get_tokenizer())
    if engine != "transformers":
        raise ValueError(f"unknown serve engine {engine!r}; use 'transformers' or 'vllm'")
    model, tokenizer = load_policy(checkpoint, device=device, dtype=torch_dtype)
    model.eval()
    return HFGenerator(model, tokenizer, device=device), copy.deepcopy(tokenizer)


def make_continuous(engine: str, checkpoint: str | Path, device: str = "cpu", dtype: str = "auto",
                    gpu_memory_utilization: float = 0.5, max_batch_size: int = 32,
                    kv_cache_tokens: int | None = None):
    """(turn engine, tokenizer) for continuous batching: transformers' continuous batching over
    an `HFGenerator` (router_r1.engines.continuous), or vLLM's async engine
    (router_r1.engines.vllm_async). Both have `async generate_turn(ids, max_new_tokens,
    temperature, top_p, seed=, on_token=)` and `max_context`; the tokenizer is a private copy
    for the event loop, as `make_generator`'s."""
    from router_r1.engines.model import dtype_name, resolve_dtype

    torch_dtype = resolve_dtype(dtype, checkpoint)
    if engine == "vllm":
        from router_r1.engines.vllm_async import AsyncVLLMEngine

        eng = AsyncVLLMEngine(checkpoint, dtype=dtype_name(torch_dtype), gpu_memory_utilization=gpu_memory_utilization)
        return eng, copy.deepcopy(eng.tokenizer)
    from router_r1.engines.continuous import ContinuousHFEngine

    generator, tokenizer = make_generator(engine, checkpoint, device, dtype=dtype)
    return ContinuousHFEngine(generator, max_batch_size, kv_cache_tokens), tokenizer
