"""A vLLM generation engine with the same `generate` / `load_state_dict` as `HFGenerator`.

Used by rollout actors that hold a GPU (`rollout.engine: vllm`) and by Serve on GPU. vLLM is
imported lazily: it is the optional `gpu` extra and pins its own torch. Token in, token out
(router_r1.env.generation): prompts go in as `TokensPrompt`s, and each turn comes back as the sampled
token ids with the sampler's log-probs. Two engine settings make those the learner's numbers:

- `logprobs_mode="processed_logprobs"`: log-probs after temperature scaling (vLLM's default,
  raw_logprobs, reports the untempered distribution);
- `generation_config="vllm"`: the checkpoint's generation_config.json (a Qwen-style repetition
  penalty, top-k, top-p) is not merged into the sampling parameters; only what is asked here is.

New weights are pushed into the running engine through `LLM.collective_rpc` and a worker
extension class that calls the model's own `load_weights` (vLLM's RLHF weight-sync pattern).
`collective_rpc` sends its arguments to vLLM's engine-core process as msgpack, which turns a
tensor into a bare `[dtype, shape, buffer index]` list whose data is lost; so buckets travel as
`(dtype, shape, bytes)` (`pack_bucket`) and the extension rebuilds the tensors (`unpack_bucket`).

Every vLLM name used here is checked against the pinned vLLM (the `gpu` extra) by
`benchmarks/vllm_api_check.py`; `tests/test_vllm_api_check.py` keeps that list complete.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from router_r1.env.generation import Generation, cut_generation, eos_ids
from router_r1.env.protocol import STOP_STRINGS


def pack_bucket(state: dict[str, Any]) -> dict[str, tuple[str, list[int], bytes]]:
    """Tensors as (dtype name, shape, raw bytes): what survives `collective_rpc`'s msgpack hop."""
    import torch

    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        out[name] = (str(t.dtype).removeprefix("torch."), list(t.shape),
                     t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return out


def unpack_bucket(wire: dict[str, Any]) -> dict[str, Any]:
    """`pack_bucket`'s inverse, in the worker (tuples may arrive as lists)."""
    import torch

    out = {}
    for name, (dtype, shape, data) in wire.items():
        dt = getattr(torch, dtype)
        if not data:
            out[name] = torch.empty(shape, dtype=dt)
        else:
            out[name] = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dt).reshape(shape)
    return out


class WeightLoaderExtension:
    """Mixed into every vLLM worker (`worker_extension_cls`); runs inside the worker process.
    vLLM refuses an extension whose attribute names the worker already has."""

    def load_hf_state_dict(self, state: dict[str, Any]) -> None:
        """`state`: a `pack_bucket` bucket."""
        weights = list(unpack_bucket(state).items())
        self.model_runner.get_model().load_weights(weights=weights)  # type: ignore[attr-defined]


_SEED_BITS = 63  # vLLM keeps per-request seeds in an int64 tensor
_MIX = 0x5851F42D4C957F2D  # odd: multiplying by it permutes the integers mod 2**63


def row_seeds(seed: int | Sequence[int] | None, n: int) -> list[int | None]:
    """The per-request sampling seed of each of `n` prompts.

    A sequence is taken as given (one seed per prompt). An int `seed` is the batch's seed: row
    i gets a bijective mix of `(seed mod 2**31) * 2**32 + i`, so two rows of one batch never
    share a seed, and neither do two batches whose seeds differ (mod 2**31). The old `seed + i`
    made row i of the batch seeded `s + 1` (the next turn of a rollout) replay row i + 1 of the
    batch seeded `s`: correlated samples. vLLM draws each token from (seed, position) hashes,
    so a shared seed means shared noise."""
    if seed is None:
        return [None] * n
    if not isinstance(seed, int):
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts")
        return seeds
    if n > 1 << 32:
        raise ValueError("at most 2**32 prompts per seeded batch")
    base = (seed % (1 << 31)) << 32
    return [_mix63(base | i) for i in range(n)]


def _mix63(x: int) -> int:
    """A permutation of [0, 2**63) that scatters neighbouring integers (xorshift and odd multiply)."""
    mask = (1 << _SEED_BITS) - 1
    x ^= x >> 31
    x = (x * _MIX) & mask
    x ^= x >> 29
    return x


def sampled_logprobs(token_ids: Sequence[int], logprobs: Sequence[dict] | None) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position {token_id: Logprob} dicts."""
    if not logprobs:
        return []
    out = []
    for t, d in zip(token_ids, logprobs):
        lp = d.get(t) if d else None
        out.append(float(getattr(lp, "logprob", lp)) if lp is not None else float("nan"))
    return out


def sampling_params(temperature: float, top_p: float, max_tokens: int, stop: Sequence[str],
                    seed: int | None) -> Any:
    """One request's `vllm.SamplingParams`, as the learner scores it. top_k=0: no top-k (vLLM >=
    0.8; older versions wanted -1). logprobs=0: the sampled token's log-prob only. Stop strings
    are detected by vLLM; the token that completes one is kept (cut_generation checks the cut
    on ids). No repetition penalty (the checkpoint's generation_config is ignored anyway)."""
    from vllm import SamplingParams

    return SamplingParams(temperature=temperature, top_p=top_p, top_k=0, max_tokens=max_tokens,
                          stop=list(stop), include_stop_str_in_output=True, logprobs=0,
                          repetition_penalty=1.0, seed=seed)


def completion_generation(c: Any, tokenizer, stops: Sequence[str], eos: set[int]) -> Generation:
    """A vLLM `CompletionOutput` as a `Generation`, cut after its first stop."""
    ids = list(c.token_ids)
    g = Generation(ids, sampled_logprobs(ids, c.logprobs), tokenizer.decode(ids, skip_special_tokens=True))
    return cut_generation(g, tokenizer, tuple(stops or ()), eos)


class VLLMGenerator:
    """Batched generation on vLLM. `model_dir` is a transformers checkpoint folder (with tokenizer)."""

    def __init__(self, model_dir: str | Path, seed: int = 0, gpu_memory_utilization: float = 0.4,
                 dtype: str = "auto", max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 load_format: str = "auto"):
        """`load_format="dummy"`: vLLM reads only config and tokenizer from `model_dir` and starts
        with random weights, for weights that arrive in memory (`load_buckets`) instead."""
        try:
            from vllm import LLM
        except ImportError as e:  # the optional `gpu` extra
            raise ImportError("rollout.engine 'vllm' needs vLLM: pip install 'router-r1[gpu]'") from e
        self.llm = LLM(model=str(model_dir), tokenizer=str(model_dir), seed=seed, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=True,
                       load_format=load_format,
                       logprobs_mode="processed_logprobs", generation_config="vllm",
                       worker_extension_cls=f"{__name__}.WeightLoaderExtension")
        self.tokenizer = self.llm.get_tokenizer()
        self.max_context = self.llm.llm_engine.model_config.max_model_len
        self.eos = eos_ids(self.tokenizer)

    def generate(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int = 128,
                 temperature: float = 1.0, top_p: float = 1.0, stop: Sequence[str] = STOP_STRINGS,
                 seed: int | Sequence[int] | None = None) -> list[Generation]:
        """`seed`: the batch's seed (every row gets its own, `row_seeds`) or one seed per prompt."""
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        rows = [self.tokenizer.encode(p, add_special_tokens=False) if isinstance(p, str) else list(p)
                for p in prompts]
        # One seed per prompt: identical prompts (a GRPO group) must still sample differently.
        params = [sampling_params(temperature, top_p, max_new_tokens, stop, s) for s in row_seeds(seed, len(rows))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
        return [completion_generation(o.outputs[0], self.tokenizer, stop, self.eos) for o in outs]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.load_buckets([state])

    def load_buckets(self, buckets: Iterable[dict[str, Any]]) -> None:
        """Published weight buckets (router_r1.engines.weights), one `collective_rpc` each: every
        worker's model loads them in place with its own `load_weights` (which also fuses qkv /
        gate-up and shards for tensor parallelism), so no message holds the whole model."""
        for bucket in buckets:
            self.llm.collective_rpc("load_hf_state_dict", args=(pack_bucket(bucket),))
        # Cached KV blocks were computed with the old weights. vLLM answers False when it could
        # not reset (requests running): sampling on would mix old and new weights.
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM did not reset its prefix cache after a weight update")
