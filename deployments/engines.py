"""The router policy's generator for serving: transformers on CPU, vLLM on GPU, one interface.

Both expose `generate(prompts, max_new_tokens, temperature, top_p) -> texts`, stopping at
</search> or </answer>, so the deployment batches turns the same way whichever runs. vLLM is
imported only when chosen (it is the `gpu` extra, absent on CPU machines).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_r1.policy import HFGenerator, load_policy
from router_r1.protocol import STOP_STRINGS


class VLLMGenerator:
    """Offline vLLM engine over a local checkpoint; the engine batches each call internally."""

    def __init__(self, checkpoint: str | Path, **engine_kw: Any):
        try:
            from vllm import LLM
        except ImportError as e:
            raise RuntimeError("serve.engine=vllm needs the `gpu` extra (pip install router-r1[gpu])") from e
        self.llm = LLM(model=str(checkpoint), **{"gpu_memory_utilization": 0.5, **engine_kw})
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 128, temperature: float = 1.0,
                 top_p: float = 1.0, stop: Sequence[str] = STOP_STRINGS, seed: int | None = None) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                stop=list(stop), include_stop_str_in_output=True, seed=seed)
        return [o.outputs[0].text for o in self.llm.generate(list(prompts), params, use_tqdm=False)]


def make_generator(engine: str, checkpoint: str | Path, device: str = "cpu"):
    """(generator, tokenizer) for `engine` ("transformers" or "vllm") over a local checkpoint.

    The tokenizer returned is a private copy for the event loop (counting, truncating replies):
    a fast tokenizer's padding/truncation state is switched per call, so sharing one instance
    with the generation thread lets a plain `encode` un-pad a batch mid-call."""
    if engine == "vllm":
        gen = VLLMGenerator(checkpoint)
        return gen, copy.deepcopy(gen.tokenizer)
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
