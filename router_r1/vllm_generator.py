"""A vLLM generation engine with the same `generate` / `load_state_dict` as `HFGenerator`.

Used by rollout actors that hold a GPU (`rollout.engine: vllm`). vLLM is imported lazily: it is
the optional `gpu` extra and pins its own torch. The engine follows vLLM's documented offline API:
`LLM(model=dir)` + `LLM.generate(prompts, [SamplingParams])` with stop strings kept in the output,
and new weights are pushed into the running engine through `LLM.collective_rpc` and a worker
extension class that calls the model's own `load_weights` (vLLM's RLHF weight-sync pattern).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_r1.protocol import STOP_STRINGS


class WeightLoaderExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); runs inside the worker process."""

    def load_hf_state_dict(self, state: dict[str, Any]) -> None:
        self.model_runner.model.load_weights(weights=list(state.items()))  # type: ignore[attr-defined]


class VLLMGenerator:
    """Batched generation on vLLM. `model_dir` is a transformers checkpoint folder (with tokenizer)."""

    def __init__(self, model_dir: str | Path, seed: int = 0, gpu_memory_utilization: float = 0.4,
                 dtype: str = "auto", max_model_len: int | None = None):
        try:
            from vllm import LLM
        except ImportError as e:  # the optional `gpu` extra
            raise ImportError("rollout.engine 'vllm' needs vLLM: pip install 'router-r1[gpu]'") from e
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), seed=seed, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_prefix_caching=True,
                       worker_extension_cls=f"{__name__}.WeightLoaderExtension")

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 128, temperature: float = 1.0,
                 top_p: float = 1.0, stop: Sequence[str] = STOP_STRINGS, seed: int | None = None) -> list[str]:
        from vllm import SamplingParams

        if not prompts:
            return []
        # One seed per prompt: identical prompts (a GRPO group) must still sample differently.
        params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                 stop=list(stop), include_stop_str_in_output=True,
                                 seed=None if seed is None else seed + i)
                  for i in range(len(prompts))]
        outs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [o.outputs[0].text for o in outs]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.llm.collective_rpc("load_hf_state_dict", args=(state,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
