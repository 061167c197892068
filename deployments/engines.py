"""The router policy's generator for serving: transformers on CPU, vLLM on GPU, one interface.

Both expose `generate(prompts, max_new_tokens, temperature, top_p) -> texts`, stopping at
</search> or </answer>, so the deployment batches turns the same way whichever runs. vLLM is
imported only when chosen (it is the `gpu` extra, absent on CPU machines).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from router_r1.policy import HFGenerator, load_policy


def make_generator(engine: str, checkpoint: str | Path, device: str = "cpu"):
    """(generator, tokenizer) for `engine` ("transformers" or "vllm") over a local checkpoint.

    The tokenizer returned is a private copy for the event loop (counting, truncating replies):
    a fast tokenizer's padding/truncation state is switched per call, so sharing one instance
    with the generation thread lets a plain `encode` un-pad a batch mid-call."""
    if engine == "vllm":  # the rollout engine (router_r1.vllm_generator), lazily imported
        from router_r1.vllm_generator import VLLMGenerator

        gen = VLLMGenerator(checkpoint, gpu_memory_utilization=0.5)
        return gen, copy.deepcopy(gen.llm.get_tokenizer())
    if engine != "transformers":
        raise ValueError(f"unknown serve engine {engine!r}; use 'transformers' or 'vllm'")
    model, tokenizer = load_policy(checkpoint, device=device)
    return HFGenerator(model, tokenizer, device=device), copy.deepcopy(tokenizer)


def prompt_options(checkpoint: str | Path, cfg: Any = None) -> dict[str, Any]:
    """`render_prompt` options the checkpoint's router was trained with, so serving renders exactly
    that prompt: the "prompt" mapping of router_r1.json (written at save time), else the config's
    `policy.compact_prompt` when it has one, else the full prompt."""
    meta = Path(checkpoint) / "router_r1.json"
    try:
        extra = json.loads(meta.read_text()) if meta.exists() else {}
    except (OSError, json.JSONDecodeError):
        extra = {}
    opts = extra.get("prompt") if isinstance(extra, dict) else None
    if isinstance(opts, dict):
        return dict(opts)
    compact = getattr(getattr(cfg, "policy", None), "compact_prompt", None)
    return {"compact": bool(compact)} if compact is not None else {}
