"""The router policy on vLLM's async engine, for serving: each router turn is its own request.

vLLM's `AsyncLLMEngine` (AsyncLLM) schedules every step over the requests it holds: a turn
submitted while others decode joins them at the next step, and one that ends leaves at once
(continuous batching, with paged attention and prefix caching). So a Serve replica on vLLM with
`serve.batching: continuous` submits each turn as it comes, with no `@serve.batch` in front. The
sampling is `VLLMGenerator`'s (router_r1.engines.vllm): processed log-probs, the checkpoint's
generation_config.json ignored, top_k off, one seed per request (`row_seeds`), stop strings kept
in the output and the turn cut after the first (`cut_generation`). Tokens stream to `on_token`
as vLLM returns them.

vLLM is imported lazily (the `gpu` extra); every name used here is checked against the pinned
vLLM by `benchmarks/vllm_api_check.py`.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from router_r1.engines.vllm import completion_generation, row_seeds, sampling_params
from router_r1.env.generation import Generation, TurnFailed, eos_ids
from router_r1.env.protocol import STOP_STRINGS


class AsyncVLLMEngine:
    """`await engine.generate_turn(ids, ...)`: one router turn as one vLLM request."""

    def __init__(self, model_dir: str | Path, seed: int = 0, gpu_memory_utilization: float = 0.5,
                 dtype: str = "auto", max_model_len: int | None = None, tensor_parallel_size: int = 1):
        try:
            import vllm
            from vllm.engine.arg_utils import AsyncEngineArgs
        except ImportError as e:  # the optional `gpu` extra
            raise ImportError("serve.engine 'vllm' needs vLLM: pip install 'router-r1[gpu]'") from e
        from router_r1.engines.model import load_tokenizer

        args = AsyncEngineArgs(model=str(model_dir), tokenizer=str(model_dir), seed=seed, dtype=dtype,
                               gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                               tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=True,
                               logprobs_mode="processed_logprobs", generation_config="vllm")
        self.engine = vllm.AsyncLLMEngine.from_engine_args(args)
        self.max_context = self.engine.model_config.max_model_len
        self.tokenizer = load_tokenizer(model_dir)  # the checkpoint's own, as the engine's
        self.eos = eos_ids(self.tokenizer)

    async def generate_turn(self, ids: Sequence[int], max_new_tokens: int = 128, temperature: float = 0.0,
                            top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = STOP_STRINGS,
                            on_token: Callable[[int], None] | None = None) -> Generation:
        """One turn from context `ids` (as `ContinuousHFEngine.generate_turn`). A request vLLM
        refuses (ValueError: a prompt too long, an id outside the vocabulary) is `TurnFailed`."""
        from vllm.inputs import TokensPrompt

        ids, stops = list(ids), tuple(stop or ())
        budget = min(int(max_new_tokens), self.max_context - len(ids))
        if not ids or budget <= 0:
            return Generation()
        params = sampling_params(temperature, top_p, budget, stops, row_seeds(seed, 1)[0])
        request_id, final, sent = uuid.uuid4().hex, None, 0
        try:
            async for out in self.engine.generate(TokensPrompt(prompt_token_ids=ids), params, request_id):
                final = out
                token_ids = out.outputs[0].token_ids if out.outputs else ()
                if on_token is not None:
                    for t in token_ids[sent:]:
                        on_token(t)
                sent = len(token_ids)
        except asyncio.CancelledError:  # the request went away: free its slot
            await self.engine.abort(request_id)
            raise
        except ValueError as e:
            raise TurnFailed(e) from e
        if final is None or not final.outputs:
            raise RuntimeError("vLLM returned no output")
        return completion_generation(final.outputs[0], self.tokenizer, stops, self.eos)
