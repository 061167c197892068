"""Log-probs of the taken tokens, and the policy's entropy, without full-vocabulary float32 tensors.

The learner scores every response token as log_softmax(logits / temperature)[token] in float32 (the
function the sampler draws from; `engines/hf.py`). Done on the whole (B, T, V) logits, that is a
float32 copy, a scaled copy and logsumexp's `exp(x - max)` temporary, plus three more for the
entropy (log_softmax, its exp, their product): each of them 4 x B x T x V bytes, about 11 GB for
Qwen2.5 (V = 151,936) at 4 rows of 4.7k tokens. Here the logits are cut into chunks of `chunk`
tokens along the flattened (B*T) axis and each chunk goes through the same float32 operations on
its own, so a float32 tensor is never larger than chunk x V.

Exact: every operation is row-wise over the vocabulary (gather, logsumexp, log_softmax and the
entropy's sum), so a chunk's rows get the values the whole tensor's rows get, and the gradients
too (tests/test_logprobs.py checks bit equality). With gradients, each chunk but the last runs
under `torch.utils.checkpoint` (non-reentrant): its float32 intermediates are dropped after the
forward and recomputed in the backward, the same operations in the same order, so the backward
holds one chunk's float32 tensors at a time instead of the autograd graph keeping all of them
for the whole micro-batch. The price is that recomputation: about 1.3x the CPU time of the
float32 part (benchmarks/bench_logprob_memory.py), small beside the model's own forward and
backward, and nothing when the micro-batch fits in one chunk. Measured there at 512 tokens x
151,936 (bf16 logits, forward + backward): peak 1,187 -> 407 MiB for the log-probs alone,
1,781 -> 556 MiB with the entropy in the loss. What stays is the logits in the model's dtype
and their gradient, as in the one-tensor path, except that here the gradient briefly exists
twice (the chunks' pieces, then their concatenation by the split's backward).

The entropy is computed only when asked for: `entropy="grad"` when it is in the loss
(`learner.entropy_coef` > 0), `"value"` (no gradient, no saved tensors) when it is only logged,
None otherwise. Its formula: H = -sum_v p_v log p_v over the tempered distribution; the entropy
bonus in the loss is Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning"
(A3C, sec. 4), as PPO uses it (Schulman et al. 2017, eq. 9).

The reference, one-tensor versions are `algos.token_logprobs` and `algos.entropy_from_logits`;
tests/test_logprobs.py checks this one against them (values and gradients, float32 and bfloat16)
and benchmarks/bench_logprob_memory.py measures the peak memory saved.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK = 1024  # tokens per float32 chunk: 1024 x 151,936 x 4 B = 0.6 GB for Qwen2.5

EntropyMode = Literal["grad", "value"] | None


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, *,
                   entropy: EntropyMode = None, chunk: int = DEFAULT_CHUNK,
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log pi(token_t), entropy_t or None) of softmax(logits / temperature), in float32.

    logits: (B, T, V), any floating dtype (the LM head's); tokens: (B, T) long -> logp (B, T)
    float32, entropy (B, T) float32 or None. `entropy`: "grad" (differentiable), "value" (under
    no_grad) or None (not computed). `chunk`: tokens per float32 chunk (module docstring).
    Differentiable in `logits` when grad is enabled and they require it."""
    B, T, V = logits.shape
    flat, ids = logits.reshape(B * T, V), tokens.reshape(B * T)
    grad = torch.is_grad_enabled() and logits.requires_grad
    logps, ents = [], []
    pieces = list(zip(flat.split(chunk), ids.split(chunk)))
    for i, (x, t) in enumerate(pieces):
        # The last chunk's backward runs first and frees its tensors before the next one's
        # starts: keeping them costs no peak memory and saves recomputing them.
        if grad and i < len(pieces) - 1:
            lp, ent = checkpoint(_chunk, x, t, temperature, entropy, use_reentrant=False,
                                 preserve_rng_state=False)
        else:
            lp, ent = _chunk(x, t, temperature, entropy)
        logps.append(lp)
        ents.append(ent)
    logp = (logps[0] if len(logps) == 1 else torch.cat(logps)).view(B, T)
    if entropy is None:
        return logp, None
    return logp, (ents[0] if len(ents) == 1 else torch.cat(ents)).view(B, T)


def _chunk(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, entropy: EntropyMode,
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: logits (N, V), tokens (N,) -> logp (N,), entropy (N,) or None. The operations
    of `algos.token_logprobs` and `algos.entropy_from_logits`, on logits / temperature in float32."""
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    # logit - logsumexp: no (N, V) log_softmax tensor for the log-probs alone
    logp = x.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(x, dim=-1)
    if entropy is None:
        return logp, None
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        lsm = torch.log_softmax(x, dim=-1)
        ent = -(lsm.exp() * lsm).sum(dim=-1)
    return logp, ent
