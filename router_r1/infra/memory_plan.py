"""Memory by plan: what one learner rank holds, in bytes, before the run starts (`router-r1 plan`).

Ray-free and torch-free: it reads the model's shapes (a checkpoint's config.json, `policy.tiny`, a
JSON file, or the built-in Qwen2.5 shapes below) and the run config, and adds up, per learner rank:

    weights         the trained weights in their dtype; with a float32 master (or `learner.bf16`)
                    the policy-dtype casts autocast makes of them (uncached: the LM head's and one
                    recomputed layer's with gradient checkpointing, else every linear layer's)
    master copy     the float32 weights the optimizer steps (learner.master_dtype: float32)
    grads           one per trained weight, in its dtype (DDP: views into its all-reduce buckets)
    FSDP2 gathered  (learner.sharding: fsdp2) the unsharded weights and gradients of the root unit
                    (embeddings, LM head, value head) and of two decoder layers in flight
    optimizer       AdamW's two moments, in the weights' dtype; the warm start's own AdamW too,
                    which the learner keeps once made
    reference       the frozen KL reference in the policy dtype (kl_coef > 0), whole on each rank
    activations     what the backward needs of the trunk: with gradient checkpointing each decoder
                    layer's input plus one layer recomputed, else every layer's saved tensors
    logits peak     the response positions' logits in the compute dtype and their gradient, plus
                    the float32 log-prob chunks (router_r1.rl.logprobs: `learner.logprob_chunk`)
    vLLM share      `rollout.gpu_memory_utilization` of the GPU, when vLLM rollouts share the
                    learner's GPU (both ask for a fraction of one GPU)
    CUDA context    the learner process's own CUDA context

Sharding over N learners (`learner.sharding`): "zero1" divides the optimizer by N; "fsdp2" the
master copy (or weights), grads and optimizer, each parameter padded to a multiple of N rows.

The rows add up as if every one peaked at once (the weight casts live in the forward, the logits'
gradient in the backward), so the total is an upper bound of the peak, not an average.

Parameter counts are exact for the decoder families counted here (qwen2, llama, mistral);
tests/test_memory_plan.py checks them, and the weights, grads and AdamW bytes, against a real
learner's tensors, and the weight casts, activation and logits rows against allocations measured
on CPU in one learner micro-step (`layer_activation_bytes` is a one-layer trace of what autograd
saves, counted tensor by tensor).

Sequence length: the prompt (estimated from the pool's rendered instructions and descriptors at
3 characters a token, plus the question and the chat template; `--prompt-tokens` sets it) plus the
episode's response cap, `EpisodeConfig.max_response_tokens` (every turn's generation and inserted
block; the trainer cuts responses there). Only response positions go through the LM head.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_r1.env.prompt import render_prompt
from router_r1.infra.config import RunConfig
from router_r1.pool.cost import estimate_tokens

GiB = 2 ** 30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_CONTEXT = GiB // 2  # a CUDA context and cuBLAS workspaces: ~0.3-0.6 GiB on A100/H100
FP32_CHUNK_TENSORS = 4  # float32 (chunk, V) tensors alive at once: the cast, logsumexp's or the
# entropy's temporaries, and the chunk's gradient (router_r1.rl.logprobs)
QUESTION_TOKENS = 128  # a QA question (NQ, HotpotQA) is well under this
CHAT_TEMPLATE_TOKENS = 64  # Qwen2.5's system turn and role markers


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a decoder-only transformer (a transformers config.json's keys)."""

    name: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    tie_word_embeddings: bool
    head_dim: int | None = None
    attention_bias: bool = False  # llama/mistral: q, k, v and o biases
    mlp_bias: bool = False
    dtype: str = "float32"  # the checkpoint's own ("torch_dtype" or "dtype")

    FAMILIES = ("qwen2", "llama", "mistral")

    @classmethod
    def from_config(cls, d: dict[str, Any], name: str) -> ModelShape:
        """From a config.json's dict; ValueError naming what is missing or not counted here."""
        model_type = d.get("model_type", "")
        if model_type not in cls.FAMILIES:
            raise ValueError(f"{name}: model_type {model_type!r}; the planner counts {', '.join(cls.FAMILIES)} "
                             "(router_r1/infra/memory_plan.py)")
        try:
            return cls(name=name, model_type=model_type, vocab_size=int(d["vocab_size"]),
                       hidden_size=int(d["hidden_size"]), num_hidden_layers=int(d["num_hidden_layers"]),
                       num_attention_heads=int(d["num_attention_heads"]),
                       num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
                       intermediate_size=int(d["intermediate_size"]),
                       tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                       head_dim=d.get("head_dim"), attention_bias=bool(d.get("attention_bias", False)),
                       mlp_bias=bool(d.get("mlp_bias", False)),
                       dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"))
        except KeyError as e:
            raise ValueError(f"{name}: config has no {e.args[0]!r}") from None

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.hd

    def layer_params(self) -> int:
        """One decoder layer: attention, MLP and its two RMSNorms."""
        H, I, q = self.hidden_size, self.intermediate_size, self.num_attention_heads * self.hd
        qkv_bias = self.model_type == "qwen2" or self.attention_bias  # Qwen2: q, k, v biases, none on o
        attn = H * q + 2 * H * self.kv_dim + q * H + (q + 2 * self.kv_dim if qkv_bias else 0)
        attn += H if self.attention_bias else 0
        mlp = 3 * H * I + (2 * I + H if self.mlp_bias else 0)
        return attn + mlp + 2 * H

    def params(self) -> int:
        """Every parameter of the causal LM (embeddings once when tied)."""
        embed = self.vocab_size * self.hidden_size
        return (embed * (1 if self.tie_word_embeddings else 2) + self.num_hidden_layers * self.layer_params()
                + self.hidden_size)

    def kv_cache_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_hidden_layers * self.kv_dim * dtype_bytes


def _qwen25(name: str, H: int, I: int, layers: int, heads: int, kv: int, vocab: int, tied: bool) -> ModelShape:
    return ModelShape(name=name, model_type="qwen2", vocab_size=vocab, hidden_size=H, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=I,
                      tie_word_embeddings=tied, dtype="bfloat16")


# The public config.json of each model, https://huggingface.co/Qwen/<name>/blob/main/config.json
# (values as published by the Qwen team; parameter counts from `ModelShape.params`: 494,032,768,
# 1,543,714,304, 3,085,938,688 and 7,615,616,512, the sizes the model cards state: 0.49B, 1.54B,
# 3.09B, 7.61B).
BUILTIN_SHAPES = {s.name: s for s in (
    _qwen25("Qwen2.5-0.5B-Instruct", 896, 4864, 24, 14, 2, 151936, True),
    _qwen25("Qwen2.5-1.5B-Instruct", 1536, 8960, 28, 12, 2, 151936, True),
    _qwen25("Qwen2.5-3B-Instruct", 2048, 11008, 36, 16, 2, 151936, True),
    _qwen25("Qwen2.5-7B-Instruct", 3584, 18944, 28, 28, 4, 152064, False),
)}


def builtin_shape(name: str) -> ModelShape | None:
    """A built-in shape by its name, case-insensitively (also a checkpoint folder of that name)."""
    return next((s for k, s in BUILTIN_SHAPES.items() if k.lower() == name.lower()), None)


def model_shape(cfg: RunConfig, model_config: str | None = None) -> tuple[ModelShape, str]:
    """(shape, where it came from): `model_config` (a config.json path or a built-in name), else
    `policy.checkpoint`'s config.json, else a built-in shape named like the checkpoint's folder
    (a cluster path not mounted here), else `policy.tiny` (vocabulary: tokenizer_vocab_size)."""
    if model_config:
        if builtin_shape(model_config):
            return builtin_shape(model_config), f"built-in shape {builtin_shape(model_config).name}"
        path = Path(model_config)
        return _read_config_json(path, path.name), str(path)
    ckpt = cfg.policy.checkpoint
    if ckpt:
        path = Path(ckpt) / "config.json"
        if path.exists():
            return _read_config_json(path, Path(ckpt).name), str(path)
        shape = builtin_shape(Path(ckpt).name)
        if shape is None:
            raise ValueError(f"{path} not found: pass --model-config CONFIG_JSON, or one of the built-in "
                             f"shapes ({', '.join(BUILTIN_SHAPES)})")
        return shape, f"built-in shape {shape.name} ({path} is not on this machine)"
    t = cfg.policy.tiny
    shape = ModelShape.from_config({**t.model_dump(), "model_type": t.architecture,
                                    "vocab_size": cfg.policy.tokenizer_vocab_size, "tie_word_embeddings": True},
                                   name=f"tiny {t.architecture}")
    return shape, "policy.tiny"


def _read_config_json(path: Path, name: str) -> ModelShape:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"model config not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    return ModelShape.from_config(d, name)


def estimate_prompt_tokens(cfg: RunConfig) -> int:
    """The prompt's length, estimated: the pool's rendered instructions and descriptors by the
    pool's own deliberately high estimate (router_r1.pool.cost.estimate_tokens), the question (max_question_tokens, else QUESTION_TOKENS) and the chat template."""
    p = cfg.policy
    text = render_prompt(cfg.load_pool(), "", layout=p.prompt_layout)
    question = p.max_question_tokens or QUESTION_TOKENS
    return estimate_tokens(text) + question + (CHAT_TEMPLATE_TOKENS if p.use_chat_template else 0)


@dataclass(frozen=True)
class Row:
    name: str
    bytes: int
    how: str


@dataclass(frozen=True)
class LearnerMemory:
    """One learner rank's bytes, by row (module docstring); `rows` in table order."""

    rows: tuple[Row, ...]
    micro_batch: int  # rows per micro-batch
    seq_len: int  # prompt + response tokens of the longest row
    response_len: int  # response tokens: what goes through the LM head

    def __getitem__(self, name: str) -> int:
        return sum(r.bytes for r in self.rows if r.name == name)

    @property
    def total(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def states(self) -> int:
        """The resident trained state: weights, master copy, grads and optimizer."""
        return sum(r.bytes for r in self.rows if r.name in ("weights", "master copy", "grads", "optimizer"))


def layer_activation_bytes(shape: ModelShape, tokens: int, compute_bytes: int, autocast: bool) -> int:
    """What one decoder layer saves for its backward over `tokens` tokens (flash/SDPA attention, no
    dropout): per token, 16 H bytes of float32 RMSNorm internals (input, 1/rms, normalised, two
    norms), the projections' inputs (one per norm output, or under autocast one cast per
    projection: 5 of them), q, the attention output, k and v, four I-wide MLP tensors (gate, up,
    SiLU(gate), their product) and the attention's float32 log-sum-exp per head."""
    H, I, a = shape.hidden_size, shape.intermediate_size, compute_bytes
    inputs = 5 if autocast else 2
    per_token = (16 * H + 8 + inputs * a * H + 2 * a * H + 2 * a * shape.kv_dim + 4 * a * I
                 + 4 * shape.num_attention_heads)
    return tokens * per_token


def learner_memory(cfg: RunConfig, shape: ModelShape, prompt_tokens: int, gpu_mem_bytes: int = 0) -> LearnerMemory:
    """One learner rank's bytes (module docstring) under `cfg`; `gpu_mem_bytes` sizes the vLLM
    share when rollouts share the learner's GPU."""
    lc, p = cfg.learner, cfg.policy
    policy_dt = shape.dtype if p.dtype == "auto" else p.dtype
    train_dt = lc.master_dtype or policy_dt
    autocast = lc.bf16 or train_dt != policy_dt  # weights cast per forward (actors/learner.py)
    compute_dt = "bfloat16" if lc.bf16 else policy_dt
    policy_b, train_b, compute_b = DTYPE_BYTES[policy_dt], DTYPE_BYTES[train_dt], DTYPE_BYTES[compute_dt]
    n = lc.num_learners
    sharding = lc.sharding if n > 1 else "none"
    P = shape.params()
    H, V, L = shape.hidden_size, shape.vocab_size, shape.num_hidden_layers
    value = H + 1 if lc.algorithm == "ppo" else 0  # the float32 value head
    trained = P * train_b + value * 4
    T = cfg.episode.max_response_tokens
    S = prompt_tokens + T
    if cfg.rollout.max_model_len:
        S = min(S, cfg.rollout.max_model_len)
        T = min(T, S)
    b = lc.micro_batch_size
    fsdp = sharding == "fsdp2"
    shard = (lambda x: math.ceil(x / n)) if fsdp else (lambda x: x)
    of_n = f", / {n} learners ({'FSDP2' if fsdp else 'ZeRO-1'})"

    rows = []
    linear = shape.layer_params() - 2 * H  # what autocast casts in a layer: its linear layers
    if autocast:
        if lc.gradient_checkpointing:
            casts, how = (V * H + linear) * compute_b, "the LM head's and one recomputed layer's"
        else:
            casts, how = (V * H + L * linear) * compute_b, "every linear layer's, kept for the backward"
        rows.append(Row("weights", casts, f"autocast's {compute_dt} casts: {how}"))
        rows.append(Row("master copy", shard(trained), f"{P / 1e9:.3g}B x {train_b} B: the trained {train_dt} "
                                                       f"weights" + (of_n if fsdp else "")))
    else:
        rows.append(Row("weights", shard(trained), f"{P / 1e9:.3g}B x {train_b} B ({train_dt})" + (of_n if fsdp else "")))
        rows.append(Row("master copy", 0, "none (learner.master_dtype unset)"))
    rows.append(Row("grads", shard(trained), f"{train_b} B per weight" + (of_n if fsdp else "")))
    if fsdp:  # the root unit (embeddings, LM head, value head) from forward to backward, two layers in flight
        root = V * H * (1 if shape.tie_word_embeddings else 2) + H + value
        rows.append(Row("FSDP2 gathered", 2 * (root + 2 * shape.layer_params()) * train_b,
                        "unsharded weights and gradients: the root unit and two layers"))
    opt = 2 * trained
    rows.append(Row("optimizer", opt if sharding == "none" else math.ceil(opt / n),
                    f"AdamW, 2 x {train_b} B per weight" + ("" if sharding == "none" else of_n)))
    if cfg.warmstart.steps > 0:
        rows.append(Row("warm-start AdamW", shard(2 * P * train_b), "the SFT optimizer, kept after the warm start"))
    ref = lc.kl_coef != 0
    rows.append(Row("reference", P * policy_b if ref else 0,
                    f"frozen copy, {policy_b} B per weight" if ref else "none (kl_coef 0)"))

    tokens = b * S
    layer = layer_activation_bytes(shape, tokens, compute_b, autocast)
    final_norm = tokens * (8 * H + train_b * H)
    if lc.gradient_checkpointing:
        act = L * tokens * train_b * H + layer + final_norm
        how = f"{L} layer inputs + 1 layer recomputed, {b} x {S} tokens"
    else:
        act = L * layer + final_norm
        how = f"{L} layers' saved tensors, {b} x {S} tokens (no gradient checkpointing)"
    rows.append(Row("activations", act, how))
    chunk = min(lc.logprob_chunk, b * T)
    fp32 = FP32_CHUNK_TENSORS + (2 if lc.entropy_coef > 0 else 0)  # the entropy's log-softmax and exp, kept
    logits = 2 * b * T * V * compute_b + fp32 * chunk * V * 4 + b * T * H * compute_b
    rows.append(Row("logits peak", logits, f"{b} x {T} x {V:,} logits + gradient ({compute_b} B), "
                                           f"float32 chunks of {chunk}"))
    on_gpu = lc.num_gpus > 0
    shared = on_gpu and cfg.rollout.engine == "vllm" and lc.num_gpus < 1 and 0 < cfg.rollout.num_gpus < 1
    util = cfg.rollout.gpu_memory_utilization
    rows.append(Row("vLLM share", int(util * gpu_mem_bytes) if shared else 0,
                    f"rollout.gpu_memory_utilization {util:g} of this GPU" if shared
                    else "none (vLLM has GPUs of its own)" if cfg.rollout.engine == "vllm" else "none"))
    rows.append(Row("CUDA context", CUDA_CONTEXT if on_gpu else 0, "the learner's" if on_gpu else "none (CPU)"))
    return LearnerMemory(rows=tuple(rows), micro_batch=b, seq_len=S, response_len=T)


@dataclass(frozen=True)
class Plan:
    cfg: RunConfig
    shape: ModelShape
    source: str  # where the shape came from
    prompt_tokens: int
    memory: LearnerMemory
    gpu_mem_bytes: int
    headroom: float
    rollout_gpu_mem_bytes: int  # a rollout actor's GPU when it has its own

    @property
    def on_gpu(self) -> bool:
        return self.cfg.learner.num_gpus > 0

    @property
    def usable(self) -> int:
        return int(self.gpu_mem_bytes * (1 - self.headroom))

    @property
    def fits(self) -> bool:
        return not self.on_gpu or self.memory.total <= self.usable


def make_plan(cfg: RunConfig, gpu_mem_gib: float = 80.0, model_config: str | None = None,
              prompt_tokens: int | None = None, headroom: float = 0.05,
              rollout_gpu_mem_gib: float | None = None) -> Plan:
    """The plan of one learner rank of `cfg` on a GPU of `gpu_mem_gib` GiB (of which `headroom`
    is kept for the caching allocator's fragmentation); a rollout GPU of its own has
    `rollout_gpu_mem_gib` (default: the same)."""
    shape, source = model_shape(cfg, model_config)
    prompt = prompt_tokens if prompt_tokens is not None else estimate_prompt_tokens(cfg)
    gpu = int(gpu_mem_gib * GiB)
    rollout_gpu = int((rollout_gpu_mem_gib or gpu_mem_gib) * GiB)
    return Plan(cfg, shape, source, prompt, learner_memory(cfg, shape, prompt, gpu), gpu, headroom, rollout_gpu)


def _with(cfg: RunConfig, **learner: Any) -> RunConfig:
    rollout = learner.pop("rollout", None)
    update = {"learner": cfg.learner.model_copy(update=learner)}
    if rollout:
        update["rollout"] = cfg.rollout.model_copy(update=rollout)
    return cfg.model_copy(update=update)


def _changes(cfg: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """Single changes that shrink a learner rank, the least intrusive first: (what to write, update)."""
    lc, out = cfg.learner, []
    if not lc.gradient_checkpointing:
        out.append(("learner.gradient_checkpointing: true", {"gradient_checkpointing": True}))
    mb = lc.micro_batch_size
    while mb > 1:  # the same rows per optimizer step
        mb //= 2
        accum = math.ceil(lc.micro_batch_size * lc.grad_accum / mb)
        out.append((f"learner.micro_batch_size: {mb} with grad_accum: {accum}",
                    {"micro_batch_size": mb, "grad_accum": accum}))
    shardings = ("none", "zero1", "fsdp2")
    if lc.num_learners > 1:
        for sharding in shardings[shardings.index(lc.sharding) + 1:]:
            out.append((f"learner.sharding: {sharding}", {"sharding": sharding}))
    for n in (2, 4, 8):
        if n > lc.num_learners:
            for sharding in ("zero1", "fsdp2"):
                out.append((f"learner.num_learners: {n} with sharding: {sharding} (one GPU each)",
                            {"num_learners": n, "sharding": sharding}))
    r = cfg.rollout
    if r.engine == "vllm" and lc.num_gpus < 1 and 0 < r.num_gpus < 1:
        for util in (0.3, 0.2):
            if util < r.gpu_memory_utilization:
                out.append((f"rollout.gpu_memory_utilization: {util}", {"rollout": {"gpu_memory_utilization": util}}))
    return out


def _strongest(cfg: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """The same kinds of change, each at its strongest (applied together when no single one fits)."""
    lc, r, out = cfg.learner, cfg.rollout, []
    if not lc.gradient_checkpointing:
        out.append(("learner.gradient_checkpointing: true", {"gradient_checkpointing": True}))
    if lc.micro_batch_size > 1:
        rows = lc.micro_batch_size * lc.grad_accum
        out.append((f"learner.micro_batch_size: 1 with grad_accum: {rows}", {"micro_batch_size": 1, "grad_accum": rows}))
    n = max(lc.num_learners, 8)
    if lc.sharding != "fsdp2" or n > lc.num_learners:
        out.append((f"learner.num_learners: {n} with sharding: fsdp2 (one GPU each)",
                    {"num_learners": n, "sharding": "fsdp2"}))
    if r.engine == "vllm" and lc.num_gpus < 1 and 0 < r.num_gpus < 1 and r.gpu_memory_utilization > 0.2:
        out.append(("rollout.gpu_memory_utilization: 0.2", {"rollout": {"gpu_memory_utilization": 0.2}}))
    return out


def advice(plan: Plan) -> str | None:
    """None when the plan fits; else one line: the size against the budget and what to change (the
    first single change that fits; else the strongest changes together, as many as it takes; else
    the largest rows)."""
    if plan.fits:
        return None

    def size(cfg: RunConfig) -> int:
        return learner_memory(cfg, plan.shape, plan.prompt_tokens, plan.gpu_mem_bytes).total

    head = (f"does not fit: {plan.memory.total / GiB:.1f} GiB per learner rank > {plan.usable / GiB:.1f} GiB "
            f"usable of {plan.gpu_mem_bytes / GiB:g} GiB")
    for what, update in _changes(plan.cfg):
        cfg = _with(plan.cfg, **dict(update))
        if size(cfg) <= plan.usable:
            return f"{head}; set {what} (-> {size(cfg) / GiB:.1f} GiB)"
    cfg, done = plan.cfg, []
    for what, update in _strongest(plan.cfg):
        cfg, done = _with(cfg, **dict(update)), done + [what]
        if size(cfg) <= plan.usable:
            return f"{head}; set {'; '.join(done)} (-> {size(cfg) / GiB:.1f} GiB)"
    big = sorted(plan.memory.rows, key=lambda r: -r.bytes)[:2]
    return (f"{head}, and no learner setting tried fits (largest: "
            + ", ".join(f"{r.name} {r.bytes / GiB:.1f} GiB" for r in big)
            + "); use a larger GPU, a smaller policy or shorter episodes")


def format_plan(plan: Plan) -> str:
    """The table `router-r1 plan` prints."""
    cfg, m, s = plan.cfg, plan.memory, plan.shape
    lc = cfg.learner
    shard = ({"none": "DDP", "zero1": "DDP, ZeRO-1", "fsdp2": "FSDP2"}[lc.sharding] if lc.num_learners > 1
             else "one learner")
    lines = [
        f"policy: {s.name} ({s.params() / 1e9:.3g}B parameters; {plan.source})",
        f"learner: {lc.num_learners} x {'GPU' if plan.on_gpu else 'CPU'} ({shard}), {lc.algorithm}, "
        f"policy {cfg.policy.dtype}, master {lc.master_dtype or 'none'}, micro-batch {m.micro_batch} x "
        f"{m.seq_len} tokens ({plan.prompt_tokens} prompt + {m.response_len} response), gradient checkpointing "
        f"{'on' if lc.gradient_checkpointing else 'off'}",
        "",
        f"{'per learner rank':<18} {'GiB':>8}  how",
    ]
    lines += [f"{r.name:<18} {r.bytes / GiB:>8.2f}  {r.how}" for r in m.rows]
    lines.append(f"{'total':<18} {m.total / GiB:>8.2f}  upper bound: every row at its peak at once")
    if plan.on_gpu:
        verdict = "fits" if plan.fits else "DOES NOT FIT"
        lines.append(f"{'GPU':<18} {plan.gpu_mem_bytes / GiB:>8.2f}  {verdict}: "
                     f"{plan.usable / GiB:.1f} GiB usable ({plan.headroom:.0%} kept for fragmentation)")
    else:
        lines.append("(a CPU learner: host memory, not checked against --gpu-mem)")
    if cfg.rollout.engine == "vllm":
        shared = m["vLLM share"] > 0
        gpu = plan.gpu_mem_bytes if shared else plan.rollout_gpu_mem_bytes
        util = cfg.rollout.gpu_memory_utilization
        share = int(util * gpu)
        weights = s.params() * DTYPE_BYTES[s.dtype if cfg.policy.dtype == "auto" else cfg.policy.dtype]
        kv = max(0, share - weights)
        tokens = kv // s.kv_cache_bytes_per_token(2)
        lines.append(f"vLLM ({'on the learner GPU' if shared else 'a rollout GPU'}, {util:g} of {gpu / GiB:g} GiB "
                     f"= {share / GiB:.1f} GiB): weights {weights / GiB:.1f} GiB, KV cache {kv / GiB:.1f} GiB = "
                     f"{tokens:,} tokens ({tokens // max(1, m.seq_len):,} full-length episodes at once)")
    return "\n".join(lines)

