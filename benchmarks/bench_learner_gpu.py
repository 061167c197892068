"""Learner throughput on the GPU path: `python -m benchmarks.bench_learner_gpu [--tiny]`.

A Qwen2-architecture model built from config at the Qwen2-0.5B shape (24 layers, hidden 896,
14 heads / 2 KV heads, MLP 4864, vocabulary 151,936, tied embeddings: ~494M parameters) is
saved as a local checkpoint and trained by the project's own learner (`actors.learner.Learner`,
in-process, `learner.bf16` on CUDA): GRPO updates on a realistic batch (default 64 sequences of
1,024 tokens: 256 prompt + 768 response, groups of 4). Reported: tokens/s (every token the update
processes) and model FLOPs utilisation against a matmul peak measured on the same device in the learner's compute dtype (bf16 on CUDA, float32 on CPU).

FLOPs per update, per token, with N the matmul parameters (all of them, as embeddings are tied
and the LM head is a matmul): scoring forwards of the policy and the reference, 2 x 2N, and
`ppo_epochs` training passes of 6N (forward + backward); plus attention, 2 x 2 x L x d x s per
forward token (QK^T and AV at sequence length s, causal mask not discounted), x3 for training.
`--tiny` runs the same code on a small model and batch, on CPU in seconds (a smoke test); the
full run is for a CUDA machine, unchanged.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QWEN2_0_5B = {"architecture": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "intermediate_size": 4864, "max_position_embeddings": 4096,
              "vocab_size": 151936, "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6}
TINY = {"architecture": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "max_position_embeddings": 512, "vocab_size": 2048}


def build_checkpoint(shape: dict, path: Path) -> Path:
    """A randomly initialised model of `shape` with a small locally trained tokenizer. The model's
    vocabulary is the full `vocab_size` (as Qwen2's exceeds its tokenizer's), so the LM head costs
    what it costs in the real model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from router_r1.engines.model import save_policy, train_tokenizer

    tok = train_tokenizer([f"question {i} answer {i * 7}" for i in range(200)], vocab_size=300)
    kw = dict(shape)
    arch = kw.pop("architecture")
    cfg = AutoConfig.for_model(arch, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.eos_token_id, tie_word_embeddings=True, **kw)
    torch.manual_seed(0)
    return save_policy(AutoModelForCausalLM.from_config(cfg), tok, path)


def make_batch(n_seqs: int, prompt_len: int, response_len: int, vocab: int, group: int, seed: int = 0):
    """Random token ids of the given lengths; policy tokens are the response minus two inserted
    information blocks of 10% of it each (as a two-call episode has)."""
    from router_r1.rl.batch import TrajectoryBatch

    rng = random.Random(seed)
    info = max(1, response_len // 10)
    mask = [1] * response_len
    for start in (response_len // 4, response_len // 2):
        mask[start:start + info] = [0] * info
    return TrajectoryBatch(
        prompt_ids=[[rng.randrange(3, vocab) for _ in range(prompt_len)] for _ in range(n_seqs)],
        response_ids=[[rng.randrange(3, vocab) for _ in range(response_len)] for _ in range(n_seqs)],
        loss_mask=[list(mask) for _ in range(n_seqs)], rewards=[rng.choice([-1.0, 0.0, 0.7, 1.0]) for _ in range(n_seqs)],
        group_ids=[i // group for i in range(n_seqs)], policy_version=[0] * n_seqs)


def matmul_peak_tflops(device: torch.device, n: int, dtype: torch.dtype | None = None, iters: int = 10,
                       rounds: int = 3) -> float:
    """Measured dense matmul throughput (TFLOP/s) of an n x n x n product, the best of `rounds`
    timings (a loaded machine only ever makes a round slower). `dtype`: the learner's compute
    dtype, bf16 on CUDA and float32 on CPU (where bf16 matmuls are slower than the float32 the
    CPU learner runs, and would put MFU above 1)."""
    dtype = dtype or peak_dtype(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 * iters / best / 1e12


def peak_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def update_flops(n_params: int, layers: int, hidden: int, seq_len: int, tokens: int, ppo_epochs: int) -> float:
    """Model FLOPs of one learner update (see the module docstring)."""
    dense = (2 * 2 + 6 * ppo_epochs) * n_params * tokens
    attention = (2 + 3 * ppo_epochs) * 4 * layers * hidden * seq_len * tokens
    return float(dense + attention)


def run(shape: dict, n_seqs: int, prompt_len: int, response_len: int, micro_batch: int, steps: int,
        peak_n: int, checkpointing: bool) -> dict:
    from actors.learner import Learner
    from router_r1.infra.config import load_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = build_checkpoint(shape, Path(tempfile.mkdtemp(prefix="bench_learner_")) / "policy")
    cfg = load_config(None, {"policy.checkpoint": str(ckpt), "pool": str(ROOT / "configs" / "pool_simulated.yaml"),
                             "learner": {"algorithm": "grpo", "group_size": 4, "lr": 1e-6,
                                         "micro_batch_size": micro_batch, "bf16": device.type == "cuda",
                                         "gradient_checkpointing": checkpointing},
                             "train.steps": steps + 1})
    learner = Learner(cfg)
    n_params = sum(p.numel() for p in learner.model.lm.parameters())
    batch = make_batch(n_seqs, prompt_len, response_len, len(learner.tokenizer), group=4)
    learner.update(batch)  # warm-up: kernels, allocator, the frozen reference copy
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        m = learner.update(batch)
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = min(times)
    tokens = n_seqs * (prompt_len + response_len)
    flops = update_flops(n_params, shape["num_hidden_layers"], shape["hidden_size"], prompt_len + response_len,
                         tokens, cfg.learner.ppo_epochs)
    peak = matmul_peak_tflops(device, peak_n)
    achieved = flops / step_s / 1e12
    return {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "params": n_params, "shape": shape, "sequences": n_seqs,
            "seq_len": prompt_len + response_len, "micro_batch": micro_batch, "bf16": cfg.learner.bf16,
            "gradient_checkpointing": checkpointing, "step_s": step_s, "all_step_s": times,
            "tokens_per_s": tokens / step_s, "policy_tokens_per_s": float(m["actor/policy_tokens"]) * n_seqs / step_s,
            "model_tflops_per_update": flops / 1e12, "achieved_tflops": achieved,
            "matmul_peak_tflops": peak, "peak_dtype": str(peak_dtype(device)), "mfu": achieved / peak,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None,
            "learner_loss": m["learner/loss"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="small model and batch: a CPU smoke run")
    p.add_argument("--seqs", type=int, help="sequences per update (default 64; tiny 8)")
    p.add_argument("--prompt-len", type=int, help="prompt tokens (default 256; tiny 32)")
    p.add_argument("--response-len", type=int, help="response tokens (default 768; tiny 96)")
    p.add_argument("--micro-batch", type=int, help="learner.micro_batch_size (default 8; tiny 4)")
    p.add_argument("--steps", type=int, default=None, help="timed updates (default 3; tiny 1)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--out", default=None, help="JSON output (default outputs/bench_learner_gpu[_tiny].json)")
    a = p.parse_args(argv)
    d = (dict(shape=TINY, seqs=8, prompt_len=32, response_len=96, micro_batch=4, steps=1, peak_n=512) if a.tiny
         else dict(shape=QWEN2_0_5B, seqs=64, prompt_len=256, response_len=768, micro_batch=8, steps=3, peak_n=8192))
    res = run(d["shape"], a.seqs or d["seqs"], a.prompt_len or d["prompt_len"], a.response_len or d["response_len"],
              a.micro_batch or d["micro_batch"], a.steps or d["steps"], d["peak_n"], a.gradient_checkpointing)
    print(f"device {res['device']}  params {res['params'] / 1e6:.1f}M  batch {res['sequences']} x {res['seq_len']} "
          f"tokens  micro-batch {res['micro_batch']}  bf16 {res['bf16']}")
    print(f"update {res['step_s']:.2f} s  {res['tokens_per_s']:,.0f} tokens/s  "
          f"{res['achieved_tflops']:.2f} TFLOP/s of {res['matmul_peak_tflops']:.2f} measured {res['peak_dtype']} peak  "
          f"MFU {100 * res['mfu']:.1f}%" + (f"  peak memory {res['max_memory_gib']:.1f} GiB" if res["max_memory_gib"] else ""))
    out = Path(a.out or ROOT / "outputs" / f"bench_learner_gpu{'_tiny' if a.tiny else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
