"""Chunked log-probs and entropy (router_r1.rl.logprobs) equal the one-tensor ones of router_r1.rl.algos
exactly, values and gradients, in float32 and bfloat16, and hold less memory at a 150k vocabulary."""
from __future__ import annotations

import pytest
import torch

from router_r1.rl import algos
from router_r1.rl.logprobs import token_logprobs


def _full(logits, tokens, temperature, entropy):
    """What the learner computed before chunking: the whole (B, T, V) tensor in float32."""
    x = logits.float()
    if temperature != 1.0:
        x = x / temperature
    logp = algos.token_logprobs(x, tokens)
    if entropy is None:
        return logp, None
    with torch.set_grad_enabled(entropy == "grad"):
        return logp, algos.entropy_from_logits(x)


def _inputs(dtype, B=3, T=5, V=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    tokens = torch.randint(0, V, (B, T), generator=g)
    a, b = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)  # loss weights
    return logits, tokens, a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("entropy", [None, "value", "grad"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_the_full_tensor_values_and_gradients(dtype, entropy, temperature):
    logits, tokens, a, b = _inputs(dtype)
    want_logits = logits.clone().requires_grad_()
    want_logp, want_ent = _full(want_logits, tokens, temperature, entropy)
    loss = (a * want_logp).sum() + ((b * want_ent).sum() if entropy == "grad" else 0.0)
    loss.backward()
    for chunk in (1, 4, 7, 15, 1024):  # one token, uneven cuts, exactly B*T, everything in one
        x = logits.clone().requires_grad_()
        logp, ent = token_logprobs(x, tokens, temperature, entropy=entropy, chunk=chunk)
        assert logp.dtype == torch.float32 and logp.shape == tokens.shape
        assert torch.equal(logp, want_logp), chunk
        if entropy is None:
            assert ent is None
        else:
            assert torch.equal(ent, want_ent), chunk
            assert ent.requires_grad == (entropy == "grad")
        loss = (a * logp).sum() + ((b * ent).sum() if entropy == "grad" else 0.0)
        loss.backward()
        assert x.grad.dtype == dtype
        assert torch.equal(x.grad, want_logits.grad), chunk
        with torch.no_grad():  # scoring: no graph at all
            logp_ng, ent_ng = token_logprobs(x, tokens, temperature, entropy=entropy, chunk=chunk)
        assert torch.equal(logp_ng, want_logp) and not logp_ng.requires_grad


def test_chunked_log_probs_are_a_distribution():
    logits, _, _, _ = _inputs(torch.float32, B=1, T=1, V=6)
    every = torch.arange(6).view(6, 1, 1)
    logp = torch.cat([token_logprobs(logits, t, entropy=None, chunk=2)[0] for t in every])
    assert torch.allclose(logp.exp().sum(), torch.tensor(1.0))
    _, ent = token_logprobs(torch.zeros(2, 3, 8), torch.zeros(2, 3, dtype=torch.long), entropy="value")
    assert torch.allclose(ent, torch.full((2, 3), torch.log(torch.tensor(8.0)).item()))


@pytest.mark.slow
def test_chunked_peak_memory_is_smaller_at_a_150k_vocabulary():
    """Peak resident memory of one forward + backward (entropy in the loss) over bf16 logits of 64
    tokens x 150k, measured in fresh processes (benchmarks/bench_logprob_memory.py, ~8 s of CPU):
    the one-tensor path holds several 37 MiB float32 copies at once (about 220 MiB measured), the
    chunked one the logits' bf16 gradient and a few 4.6 MiB chunks (about 45 MiB)."""
    from benchmarks.bench_logprob_memory import one_process

    full, chunked = (one_process(mode, tokens=64, vocab=150_000, chunk=8, entropy="grad", timeout=120)["peak_mb"]
                     for mode in ("full", "chunked"))
    fp32_mb = 64 * 150_000 * 4 / 2 ** 20  # one float32 copy of the logits
    assert full > 4 * fp32_mb, full  # the measurement sees the float32 copies
    assert chunked < 2 * fp32_mb, (chunked, full)
