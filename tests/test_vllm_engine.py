"""The vLLM rollout engine from the learner's weights (issue #16): built in the policy dtype from
config and tokenizer only (dummy weights), then loaded in memory, bucket by bucket, through the
worker extension; no weight file, no temp folder left behind.

vLLM is replaced only at its import boundary: a fake `vllm` package (LLM, SamplingParams,
vllm.inputs.TokensPrompt) whose LLM does what vLLM's documented offline API does with the
arguments we pass: reads config.json and the tokenizer from `model`, builds the model in
`dtype`, mixes `worker_extension_cls` into its worker and runs `collective_rpc` methods on it.
Everything of ours (make_vllm_engine, VLLMGenerator, WeightLoaderExtension, the learner's
buckets) is real. The last test runs real vLLM and skips without it (or without CUDA)."""
from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from actors.learner import Learner
from router_r1.engines import weights
from router_r1.engines.model import build_tiny_policy
from tests.tiny_learner import CORPUS, TINY, fixed_batch, tiny_config


class _FakeModel:
    """The worker's model: a transformers model from the folder's config, in `dtype`, with the
    `load_weights(iterable of (name, tensor))` vLLM models have."""

    def __init__(self, folder: str, dtype: torch.dtype):
        from transformers import AutoConfig, AutoModelForCausalLM

        self.lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=dtype)
        self.loaded: list[list[str]] = []

    def load_weights(self, weights):
        weights = list(weights)
        self.loaded.append([k for k, _ in weights])
        own = self.lm.state_dict()
        with torch.no_grad():
            for k, v in weights:
                own[k].copy_(v)


def _msgpack_hop(x):
    """What vLLM's engine-core hop (msgpack, untyped) does to collective_rpc arguments: a tensor
    arrives as a bare [dtype, shape, buffer index] list with its data gone, tuples as lists
    (benchmarks/vllm_api_check.py checks this against the real encoder and decoder)."""
    if isinstance(x, torch.Tensor):
        return [str(x.dtype).removeprefix("torch."), list(x.shape), 1]
    if isinstance(x, dict):
        return {k: _msgpack_hop(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_msgpack_hop(v) for v in x]
    return x


class _FakeLLM:
    instances: list[_FakeLLM] = []

    def __init__(self, model: str, tokenizer: str, dtype: str, load_format: str, worker_extension_cls: str, **kw):
        from transformers import AutoTokenizer

        self.kwargs = dict(model=model, tokenizer=tokenizer, dtype=dtype, load_format=load_format,
                           worker_extension_cls=worker_extension_cls, **kw)
        self.files = sorted(p.name for p in Path(model).iterdir())
        self.config = json.loads((Path(model) / "config.json").read_text())
        self._tok = AutoTokenizer.from_pretrained(tokenizer)
        mod, cls = worker_extension_cls.rsplit(".", 1)
        worker_cls = type("Worker", (getattr(importlib.import_module(mod), cls),), {})
        self.worker = worker_cls()
        fake_model = _FakeModel(model, getattr(torch, dtype))
        self.worker.model_runner = types.SimpleNamespace(model=fake_model, get_model=lambda: fake_model)
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=kw.get("max_model_len") or 512))
        self.rpcs: list[str] = []
        self.requests: list[dict] = []
        self.prefix_resets = 0
        _FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm=True):
        """Scripted sampling, one SamplingParams per prompt: a row with an even seed answers, one
        with an odd seed routes (so episodes end at different turns). Every request is kept."""
        self.requests.extend(sampling_params)
        outs = []
        for prompt, sp in zip(prompts, sampling_params):
            text = (" <answer> Marlow </answer>" if (sp.get("seed") or 0) % 2 == 0 else
                    " <search> Sim-Geo-Small: capital of Veloria? </search>")
            ids = self._tok.encode(text, add_special_tokens=False)
            done = types.SimpleNamespace(token_ids=ids, logprobs=[{t: -0.5} for t in ids], text=text)
            outs.append(types.SimpleNamespace(outputs=[done], prompt_token_ids=prompt["prompt_token_ids"]))
        return outs

    def get_tokenizer(self):
        return self._tok

    def collective_rpc(self, method: str, args=()):
        self.rpcs.append(method)
        return [getattr(self.worker, method)(*_msgpack_hop(args))]

    def reset_prefix_cache(self):  # vLLM answers whether it could reset
        self.prefix_resets += 1
        return True


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = _FakeLLM
    vllm.SamplingParams = lambda **kw: kw
    inputs = types.ModuleType("vllm.inputs")
    inputs.TokensPrompt = lambda **kw: kw
    vllm.inputs = inputs
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.inputs", inputs)
    _FakeLLM.instances.clear()
    return vllm


def _vllm_cfg(**rollout):
    cfg = tiny_config(kl_coef=0.0, sync_bucket_mb=0.02)
    r = {"engine": "vllm", "num_gpus": 2, "gpu_memory_utilization": 0.3, "tensor_parallel_size": 2, **rollout}
    root = Path(__file__).resolve().parents[1]
    return cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"dtype": "bfloat16"}),
                                  "rollout": cfg.rollout.model_copy(update=r),
                                  "pool": str(root / "configs" / "pool_simulated.yaml")})


def test_vllm_engine_for_a_tiny_policy_starts_from_in_memory_weights(fake_vllm, tmp_path):
    from actors.rollout import RolloutWorker

    cfg = _vllm_cfg()
    learner = Learner(cfg, CORPUS)
    worker = RolloutWorker(cfg, learner.tokenizer)
    (llm,) = _FakeLLM.instances
    kw = llm.kwargs
    assert kw["dtype"] == "bfloat16" and kw["load_format"] == "dummy"
    assert kw["gpu_memory_utilization"] == 0.3 and kw["tensor_parallel_size"] == 2
    assert kw["worker_extension_cls"] == "router_r1.engines.vllm.WeightLoaderExtension"
    assert llm.config["dtype"] == "bfloat16" and llm.config["model_type"] == "qwen2"
    assert not any(f.endswith((".safetensors", ".bin", ".pt")) for f in llm.files), llm.files  # no weights on disk
    assert not Path(kw["model"]).exists(), "the temp folder was left behind"
    served = llm.worker.model_runner.model.lm.state_dict()
    init = learner.state_dict()  # the learner's weights before any update: the same tiny init
    assert all(served[k].dtype == torch.bfloat16 and torch.equal(served[k], init[k]) for k in init)

    learner.update(fixed_batch(learner.tokenizer))  # new weights, published in buckets
    refs = [{k: v for k, v in b.items()} for b in weights.bucket_state_dict(
        weights.unique_tensors(learner.state_dict()), int(cfg.learner.sync_bucket_mb * weights.MB))]
    before = len(llm.rpcs)
    worker.set_weights(refs, version=3)
    assert llm.rpcs[before:] == ["load_hf_state_dict"] * len(refs) and len(refs) > 3  # one RPC per bucket
    assert llm.prefix_resets >= 2  # after the initial load and after the sync
    served, now = llm.worker.model_runner.model.lm.state_dict(), learner.state_dict()
    assert all(torch.equal(served[k], now[k]) for k in now) and worker.get_version() == 3


def test_vllm_engine_for_a_checkpoint_reads_only_its_config_and_tokenizer(fake_vllm, tmp_path):
    from actors.rollout import RolloutWorker
    from router_r1.engines.model import save_policy, train_tokenizer

    tok = train_tokenizer(CORPUS, 320)
    ckpt = save_policy(build_tiny_policy(TINY, tok, seed=5, dtype=torch.bfloat16), tok, tmp_path / "ckpt")
    cfg = _vllm_cfg(tensor_parallel_size=1, num_gpus=1)
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"checkpoint": str(ckpt), "dtype": "auto"})})
    worker = RolloutWorker(cfg)
    (llm,) = _FakeLLM.instances
    assert llm.kwargs["model"] == str(ckpt) and llm.kwargs["dtype"] == "bfloat16"  # the checkpoint's own
    assert llm.kwargs["load_format"] == "dummy"  # the learner's weights come with the first sync
    assert worker.tokenizer.get_vocab() == tok.get_vocab()
    assert ckpt.exists()


def test_weight_buckets_survive_the_rpc_hop_bit_exact():
    from router_r1.engines.vllm import pack_bucket, unpack_bucket

    state = {"bf16": torch.randn(7, 5).to(torch.bfloat16), "f32": torch.randn(3), "scalar": torch.tensor(2.5),
             "empty": torch.zeros(0, 4, dtype=torch.bfloat16), "strided": torch.randn(4, 6).t()}
    back = unpack_bucket(_msgpack_hop(pack_bucket(state)))
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k


def test_row_seeds_are_distinct_across_rows_and_batches():
    from router_r1.engines.vllm import row_seeds

    # The old rule, seed + row, gave row i of the batch seeded s + 1 the seed of row i + 1 of s.
    batches = {s: row_seeds(s, 64) for s in (*range(10), 2**31 - 1, 2**40 + 2**20, -5)}
    flat = [x for b in batches.values() for x in b]
    assert len(set(flat)) == len(flat) and all(0 <= x < 2**63 for x in flat)
    assert row_seeds(3, 4) == row_seeds(3, 4) and row_seeds(None, 2) == [None, None]
    assert row_seeds(2**31 + 3, 4) == row_seeds(3, 4)  # batch seeds count modulo 2**31
    assert row_seeds([5, 5, 9], 3) == [5, 5, 9]  # given per row: taken as they are
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        row_seeds([1, 2], 3)


def test_no_two_samples_of_a_step_share_a_seed(fake_vllm):
    """Every request of one training step (two workers, as RolloutGroup seeds them, three turns,
    episodes ending at different turns) goes to vLLM with a seed of its own."""
    from actors.rollout import RolloutWorker
    from router_r1.engines.model import train_tokenizer
    from router_r1.pool.core import PoolCore
    from router_r1.worlds.base import make_world

    cfg = _vllm_cfg(tensor_parallel_size=1, num_gpus=1, max_model_len=4096)
    cfg = cfg.model_copy(update={
        "episode": cfg.episode.model_copy(update={"max_turns": 2, "max_new_tokens": 24}),
        "policy": cfg.policy.model_copy(update={"compact_prompt": True}),
        "pool_runtime": cfg.pool_runtime.model_copy(update={"ledger_dir": None, "cache": False})})
    tok = train_tokenizer(CORPUS, 320)
    spec = cfg.load_pool()
    items = make_world(cfg, spec).questions("val")[:4]
    core = PoolCore(spec, cfg.pool_runtime, "t")
    step_seed = cfg.seed * 100_003 + 7 * 101  # what the trainer hands step 7 (pipelines/train.py)
    workers = [RolloutWorker(cfg, tok, core, worker_index=i) for i in range(2)]
    episodes = [e for i, w in enumerate(workers) for e in w.rollout(items[i::2], n_samples=4, seed=step_seed + i)]

    seeds = [r["seed"] for llm in _FakeLLM.instances for r in llm.requests]
    assert len(seeds) == sum(e.turns for e in episodes)  # one request per policy turn
    assert {e.turns for e in episodes} >= {1, 2}, "the live batch never shrank: the test lost its edge"
    assert max(e.turns for e in episodes) == 3
    assert None not in seeds and len(set(seeds)) == len(seeds), "two samples of one step share a seed"


def test_a_prefix_cache_that_was_not_reset_is_an_error(fake_vllm, monkeypatch):
    from router_r1.engines.vllm import VLLMGenerator

    gen = VLLMGenerator.__new__(VLLMGenerator)
    gen.llm = types.SimpleNamespace(collective_rpc=lambda method, args=(): [None],
                                    reset_prefix_cache=lambda: False)
    with pytest.raises(RuntimeError, match="prefix cache"):
        gen.load_buckets([{}])


def test_tensor_parallel_needs_as_many_gpus():
    from router_r1.infra.config import RolloutConfig

    with pytest.raises(ValueError, match="tensor_parallel_size 2 needs rollout.num_gpus >= 2"):
        RolloutConfig(engine="vllm", num_gpus=1, tensor_parallel_size=2)


def test_real_vllm_engine_from_in_memory_weights():
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs CUDA")
    from actors.rollout import make_vllm_engine

    cfg = _vllm_cfg(tensor_parallel_size=1, num_gpus=1, gpu_memory_utilization=0.2)
    learner = Learner(cfg, CORPUS)
    engine = make_vllm_engine(cfg, learner.tokenizer)
    prompt = learner.tokenizer.encode("Question: what is the capital of Veloria?")
    a = engine.generate([prompt], max_new_tokens=8, temperature=0.0)
    learner.update(fixed_batch(learner.tokenizer))
    engine.load_buckets([weights.unique_tensors(learner.state_dict())])
    assert a[0].ids and engine.generate([prompt], max_new_tokens=8, temperature=0.0)[0].ids is not None
