"""The trained model: a causal LM plus an optional value head, scored on response tokens only
(Ray-free; the learner actor, actors/learner.py, wraps it in DDP and an optimizer).

Design choices (why):
- Critic (PPO): a linear value head on the policy's last hidden state, trained jointly with the
  policy through the shared trunk (`value_coef` weighs its loss; `vf_lr` may give it its own
  learning rate), as in TRL's value-head models. It costs one extra matmul, not a second LM; a
  separate critic model would be the choice at scale. GRPO has no head. The head is float32 on a
  trunk that may be bf16, and starts at zero: V = 0 before any return is seen.
- Only the positions that predict response tokens go through the LM head, never the whole
  (B, L, V) slab; their log-probs are taken in float32 chunks (`router_r1.rl.logprobs`).
- Shared prefix: the rows of a batch mostly begin with the same tokens (instructions and
  descriptors; a GRPO group, the whole prompt). That prefix goes through the trunk once and its
  keys and values are repeated over the rows (`PolicyWithValue`, `shared_prefix_len`).
- Dropout is switched off (`prepare_for_training`): the PPO ratio pi/pi_old must compare the
  same function, and old log-probs are recomputed with the current weights before the epochs.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
from typing import Callable, ContextManager

import torch
from torch import nn
from transformers import DynamicCache

from router_r1.engines.model import build_tiny_policy, load_policy, train_tokenizer
from router_r1.infra.config import PolicyConfig
from router_r1.rl import logprobs
from router_r1.rl.batch import TensorBatch

MIN_SHARED_PREFIX = 16  # below this, one plain forward is as cheap as two calls


class PolicyWithValue(nn.Module):
    """A causal LM plus an optional value head, evaluated on response tokens only.

    forward -> (logits (B, T, V), values (B, T) or None): the logits that predict each response
    token and the value of the state before it, both read at position response_pos - 1. Only
    those positions go through the LM head, never the whole (B, L, V) slab.

    `share_prefix`: the rows' shared prefix goes through the trunk once, its keys and values are
    repeated over the rows, and only the rest of each row is computed on top of them. Gradients
    flow through the repeated cache (summed over the rows), so logits and gradients equal the
    plain forward's up to float rounding, at a fraction of the cost (`shared_prefix_len`;
    measured in docs/training.md). Not with activation checkpointing, which disables the cache
    in training.
    """

    def __init__(self, lm: nn.Module, with_value: bool, share_prefix: bool = False):
        super().__init__()
        self.lm = lm
        self.share_prefix = share_prefix
        # transformers >= 5.24 names the cache argument `cache`; earlier releases `past_key_values`
        self._cache_kw = "cache" if "cache" in inspect.signature(lm.base_model.forward).parameters else "past_key_values"
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1) if with_value else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)  # V = 0 at start: no bias before any return is seen
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                response_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        p = shared_prefix_len(input_ids, attention_mask, response_pos) if self.share_prefix else 0
        if p >= MIN_SHARED_PREFIX:
            h = self._hidden_after_prefix(input_ids, attention_mask, p)  # (B, L - p, H)
        else:
            p = 0
            h = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                   use_cache=False).last_hidden_state  # (B, L, H)
        pos = (response_pos - 1 - p).clamp(min=0)  # (B, T): the state that emits response token t
        h = h.gather(1, pos.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, T, H)
        logits = self.lm.get_output_embeddings()(h)
        values = None
        if self.value_head is not None:  # float32 head on a trunk that may be bf16
            values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return logits, values

    def _hidden_after_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             p: int) -> torch.Tensor:
        """Hidden states of positions p.. of every row, the first p tokens (equal in every row)
        computed once, for row 0, and their cache repeated over the batch."""
        base = self.lm.base_model
        cache = DynamicCache(config=self.lm.config)
        base(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p],
             use_cache=True, **{self._cache_kw: cache})
        cache.batch_repeat_interleave(input_ids.shape[0])
        B, L = input_ids.shape
        position_ids = torch.arange(p, L, device=input_ids.device).unsqueeze(0).expand(B, -1)
        return base(input_ids=input_ids[:, p:], attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=True, **{self._cache_kw: cache}).last_hidden_state


def shared_prefix_len(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      response_pos: torch.Tensor) -> int:
    """How many leading tokens every row of a right-padded batch has in common (all real, all
    equal to row 0's), cut so that the state emitting each row's first response token
    (response_pos[:, 0] - 1) lies after it. 0 for a single row or a row with no response.
    input_ids, attention_mask: (B, L); response_pos: (B, T)."""
    if input_ids.shape[0] < 2:
        return 0
    same = ((input_ids == input_ids[:1]) & (attention_mask == 1)).all(dim=0)  # (L,)
    run = int(same.long().cumprod(0).sum())
    first = int(response_pos[:, 0].min()) - 1  # 0 - 1 on a row without response
    return max(0, min(run, first))


def response_logprobs(module: nn.Module, mb: TensorBatch, temperature: float = 1.0, *,
                      entropy: logprobs.EntropyMode = None, chunk: int = logprobs.DEFAULT_CHUNK,
                      autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(logp (b, t), entropy (b, t) or None, values (b, t) or None) of a micro-batch's response
    tokens under `module` (a PolicyWithValue, or DDP around one), the forward under `autocast()`,
    the log-probs from logits / `temperature` in float32 chunks (router_r1.rl.logprobs;
    `entropy`: "grad", "value" or None)."""
    with autocast():
        logits, values = module(mb.input_ids, mb.attention_mask, mb.response_pos)
    logp, ent = logprobs.token_logprobs(logits, mb.response_ids, temperature, entropy=entropy, chunk=chunk)
    return logp, ent, values


def zero_backward(module: nn.Module, mb: TensorBatch, with_values: bool,
                  autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
    """A backward of zero loss through a forward of `mb` (one row will do): for a data-parallel
    rank with no rows in a micro-batch, so that DDP's gradient all-reduce still pairs up with the
    other ranks', adding nothing. It touches the parameters a real pass would (the value head
    only `with_values`)."""
    with autocast():
        logits, values = module(mb.input_ids, mb.attention_mask, mb.response_pos)
    zero = 0.0 * logits.sum()  # in the logits' dtype: no float32 copy of a vocabulary-wide tensor
    if with_values and values is not None:
        zero = zero + 0.0 * values.sum()
    zero.backward()


def autocast_for(device_type: str, bf16: bool, train_dtype: torch.dtype,
                 policy_dtype: torch.dtype) -> Callable[[], ContextManager]:
    """The forward's autocast: bf16 (`learner.bf16`), or, over float32 master weights of a
    half-precision policy, the policy dtype, so the forward computes as the rollouts do.
    Without autocast's weight cache: it would hold a cast of every weight until the forward ends
    (2 bytes a parameter beside the float32 ones); uncached, a layer's casts live while its
    backward needs them (with activation checkpointing: while it is recomputed). Each weight is
    cast once per forward either way; the values are the same."""
    if bf16:
        return lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16, cache_enabled=False)
    if train_dtype != policy_dtype:
        return lambda: torch.autocast(device_type=device_type, dtype=policy_dtype, cache_enabled=False)
    return contextlib.nullcontext


def load_or_build_policy(policy_cfg: PolicyConfig, dtype: torch.dtype, seed: int,
                         tokenizer_corpus: list[str] | None = None) -> tuple[nn.Module, Any]:
    """(causal LM in `dtype`, tokenizer): `policy.checkpoint` loaded, or else a tiny model built
    from `policy.tiny` (seeded with `seed`) over a tokenizer trained on `tokenizer_corpus`."""
    if policy_cfg.checkpoint:
        return load_policy(policy_cfg.checkpoint, dtype=dtype)
    if not tokenizer_corpus:
        raise ValueError("a tiny policy (no policy.checkpoint) needs tokenizer_corpus to train its tokenizer")
    tok = train_tokenizer(tokenizer_corpus, policy_cfg.tokenizer_vocab_size)
    return build_tiny_policy(policy_cfg.tiny.model_dump(), tok, seed=seed, dtype=dtype), tok


def frozen_reference(lm: nn.Module, dtype: torch.dtype, device: torch.device | str,
                     share_prefix: bool) -> PolicyWithValue:
    """A frozen copy of `lm` in `dtype` on `device`, for the KL reference: no value head, no
    gradients, eval mode (and so never in an optimizer)."""
    ref = PolicyWithValue(copy.deepcopy(lm), with_value=False, share_prefix=share_prefix)
    ref.requires_grad_(False)
    ref.eval()
    return ref.to(device=device, dtype=dtype)


def prepare_for_training(lm: nn.Module, activation_checkpointing: bool) -> None:
    """Switch dropout off (module docstring) and, if asked, recompute activations in backward."""
    if activation_checkpointing:
        _enable_checkpointing(lm)
    _disable_dropout(lm)


def _disable_dropout(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def _enable_checkpointing(lm: nn.Module) -> None:
    """Recompute activations in backward (non-reentrant: works under no_grad scoring and DDP).
    transformers >= 5.x names it activation checkpointing; older releases gradient checkpointing."""
    kw = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
