"""One GPU check of the whole GPU path: `bash benchmarks/gpu_check.sh` (<= 8 minutes on one
H100/H200), or `python -m benchmarks.gpu_check --cpu-smoke` (the same code on CPU, in seconds).

On one device, in one process, with the project's own pieces:
1. a Qwen2-0.5B-shaped policy built from config (benchmarks.bench_learner_gpu.QWEN2_0_5B; its
   tokenizer covers the whole 151,936-id vocabulary, so every sampled id decodes), saved as a
   checkpoint, trained by `actors.learner.Learner` in bf16 (`policy.dtype: bfloat16`, float32
   master weights on GPU), rolled out by the vLLM engine `actors.rollout.make_vllm_engine`
   builds (dummy weights in bf16, the learner's loaded in memory);
2. a weight sync: the learner's weights in the policy dtype, in `learner.sync_bucket_mb`
   buckets (router_r1.engines.weights), loaded into the engine in place (bytes, seconds; the
   object-store hop of a cluster is not in it);
3. rollouts: groups of 4 samples per random prompt at temperature 1 (tokens/s);
4. one GRPO update on those rollouts (tokens/s, MFU against the measured bf16 matmul peak, peak
   memory), whose `rollout/logp_diff_mean/max` is the distance between vLLM's sampler log-probs
   and the learner's at the same weights;
5. one served request: a chat prompt rendered as Serve renders it, answered greedily by the
   same engine after the sync (latency, tokens).
Writes one JSON of figures. `--cpu-smoke`: a tiny model, the transformers engine, a small batch.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_learner_gpu import QWEN2_0_5B, TINY, _sync, matmul_peak_tflops, update_flops

ROOT = Path(__file__).resolve().parents[1]


def full_vocab_tokenizer(vocab_size: int):
    """A word-level tokenizer with one token per model id ("t0".."tN", specials and the
    protocol tags among them): a random model's samples all decode, as vLLM needs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from router_r1.engines.model import EOS, PAD, TAG_TOKENS

    specials = [PAD, EOS] + TAG_TOKENS
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"t{i}": i for i in range(len(specials), vocab_size)})
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=PAD, eos_token=EOS)
    tok.add_special_tokens({"additional_special_tokens": TAG_TOKENS})
    return tok


def build_policy(shape: dict, path: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from router_r1.engines.model import save_policy

    kw = dict(shape)
    arch = kw.pop("architecture")
    tok = full_vocab_tokenizer(kw["vocab_size"])
    cfg = AutoConfig.for_model(arch, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.eos_token_id, tie_word_embeddings=True, **kw)
    torch.manual_seed(0)
    return save_policy(AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16), tok, path)


def run(smoke: bool, out: Path) -> dict:
    from actors.learner import Learner
    from router_r1.engines import weights
    from router_r1.engines.model import load_policy
    from router_r1.env.prompt import render_prompt_ids
    from router_r1.infra.config import load_config
    from router_r1.rl.batch import TrajectoryBatch

    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda" if cuda else "cpu")
    shape = TINY if smoke else QWEN2_0_5B
    n_prompts, group, prompt_len, new_tokens = (4, 4, 24, 16) if smoke else (32, 4, 256, 512)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    t_start = time.perf_counter()
    ckpt = build_policy(shape, work / "policy")
    cfg = load_config(None, {
        "pool": str(ROOT / "configs" / "pool_simulated.yaml"),
        "policy": {"checkpoint": str(ckpt), "dtype": "bfloat16", "use_chat_template": False},
        "episode": {"temperature": 1.0, "max_new_tokens": new_tokens},
        "rollout": {"engine": "vllm" if cuda else "transformers", "num_gpus": 1 if cuda else 0,
                    "gpu_memory_utilization": 0.35},
        "learner": {"algorithm": "grpo", "group_size": group, "lr": 1e-6, "kl_coef": 0.001,
                    "micro_batch_size": 8 if cuda else 4, "master_dtype": "float32" if cuda else None,
                    "gradient_checkpointing": cuda, "num_gpus": 1 if cuda else 0},
        "train.steps": 2})
    figures: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                     "smoke": smoke, "shape": shape}

    t0 = time.perf_counter()
    learner = Learner(cfg)
    figures["learner_start_s"] = time.perf_counter() - t0
    figures["params"] = sum(p.numel() for p in learner.model.lm.parameters())
    t0 = time.perf_counter()
    if cuda:
        from actors.rollout import make_vllm_engine

        engine = make_vllm_engine(cfg, seed=0)
        figures["engine"] = "vllm"
    else:
        from router_r1.engines.hf import HFGenerator

        model, tok = load_policy(ckpt, dtype="bfloat16")
        engine = HFGenerator(model.eval(), tok)
        figures["engine"] = "transformers"
    figures["engine_start_s"] = time.perf_counter() - t0

    # -- weight sync: policy dtype, buckets, loaded in place
    _sync(device)
    t0 = time.perf_counter()
    state = {k: v.detach().to("cpu", dtype=learner.dtype) for k, v in
             weights.unique_tensors(learner.model.lm.state_dict()).items()}
    buckets = weights.bucket_state_dict(state, int(cfg.learner.sync_bucket_mb * weights.MB))
    t1 = time.perf_counter()
    engine.load_buckets(buckets)
    _sync(device)
    t2 = time.perf_counter()
    figures["sync"] = {"bytes": weights.nbytes(state), "buckets": len(buckets), "dtype": str(learner.dtype),
                       "publish_s": t1 - t0, "load_s": t2 - t1, "seconds": t2 - t0}
    del state, buckets

    # -- rollouts: groups of samples of random prompts at temperature 1
    rng = random.Random(0)
    vocab = len(learner.tokenizer)
    prompts = [[rng.randrange(64, vocab) for _ in range(prompt_len)] for _ in range(n_prompts)]
    rows = [p for p in prompts for _ in range(group)]
    t0 = time.perf_counter()
    gens = engine.generate(rows, max_new_tokens=new_tokens, temperature=1.0, seed=1)
    _sync(device)
    rollout_s = time.perf_counter() - t0
    gen_tokens = sum(len(g.ids) for g in gens)
    figures["rollout"] = {"sequences": len(rows), "prompt_len": prompt_len, "generated_tokens": gen_tokens,
                          "seconds": rollout_s, "tokens_per_s": gen_tokens / rollout_s}

    # -- one GRPO update on them; logp_diff = vLLM's sampler log-probs vs the learner's
    keep = [i for i, g in enumerate(gens) if g.ids]
    batch = TrajectoryBatch(
        prompt_ids=[rows[i] for i in keep], response_ids=[list(gens[i].ids) for i in keep],
        loss_mask=[[1] * len(gens[i].ids) for i in keep],
        rewards=[rng.choice([0.0, 1.0]) for _ in keep], group_ids=[i // group for i in keep],
        policy_version=[0] * len(keep), sampler_logprobs=[list(gens[i].logprobs) for i in keep])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    m = learner.update(batch)
    _sync(device)
    step_s = time.perf_counter() - t0
    tokens = sum(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids))
    seq = max(len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids))
    flops = update_flops(figures["params"], shape["num_hidden_layers"], shape["hidden_size"], seq, tokens,
                         cfg.learner.ppo_epochs)
    peak = matmul_peak_tflops(device, 512 if smoke else 8192)
    figures["grpo_step"] = {
        "sequences": len(keep), "tokens": tokens, "seconds": step_s, "tokens_per_s": tokens / step_s,
        "achieved_tflops": flops / step_s / 1e12, "matmul_peak_tflops": peak,
        "mfu": flops / step_s / 1e12 / peak,
        # this process's (the learner's): vLLM's engine runs in its own process
        "learner_peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
        "loss": m["learner/loss"], "actor_kl": m.get("actor/kl"),
        "logp_diff_mean": m.get("rollout/logp_diff_mean"), "logp_diff_max": m.get("rollout/logp_diff_max")}

    # -- weight sync after the update, then one served request on the same engine
    t0 = time.perf_counter()
    state = {k: v.detach().to("cpu", dtype=learner.dtype)
             for k, v in weights.unique_tensors(learner.model.lm.state_dict()).items()}
    engine.load_buckets(weights.bucket_state_dict(state, int(cfg.learner.sync_bucket_mb * weights.MB)))
    _sync(device)
    figures["sync"]["seconds_after_update"] = time.perf_counter() - t0
    spec = cfg.load_pool()
    _, ids = render_prompt_ids(learner.tokenizer, spec, "Who wrote Hamlet?", cfg.policy.prompt_options())
    t0 = time.perf_counter()
    (reply,) = engine.generate([ids], max_new_tokens=64, temperature=0.0)
    _sync(device)
    figures["served_request"] = {"prompt_tokens": len(ids), "reply_tokens": len(reply.ids),
                                 "latency_s": time.perf_counter() - t0}
    figures["total_s"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model, transformers engine, CPU: seconds")
    p.add_argument("--out", default=None, help="JSON of figures (default outputs/gpu_check[_smoke].json)")
    a = p.parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; run with --cpu-smoke for the CPU smoke test")
        return 2
    out = Path(a.out or ROOT / "outputs" / f"gpu_check{'_smoke' if a.cpu_smoke else ''}.json")
    f = run(a.cpu_smoke, out)
    g = f["grpo_step"]
    print(f"{f['device']} ({f['engine']}): {f['params'] / 1e6:.0f}M params; sync {f['sync']['bytes'] / 2 ** 20:.0f} MiB "
          f"in {f['sync']['seconds']:.2f} s; rollout {f['rollout']['tokens_per_s']:,.0f} tok/s; GRPO step "
          f"{g['tokens_per_s']:,.0f} tok/s, MFU {100 * g['mfu']:.1f}%; logp diff mean {g['logp_diff_mean']} "
          f"max {g['logp_diff_max']}; served reply {f['served_request']['latency_s']:.2f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
