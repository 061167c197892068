"""Weight sync that scales (issue #16): the learner publishes its weights in the policy dtype, in
buckets of bounded size (one object-store ref each); a rollout engine loads them in place and
ends bit-exact with the learner."""
from __future__ import annotations

import pytest
import torch

from actors.learner import Learner
from router_r1.engines import weights
from router_r1.engines.hf import HFGenerator
from router_r1.engines.model import build_tiny_policy
from tests.tiny_learner import CORPUS, TINY, fixed_batch, tiny_config


def test_buckets_respect_the_size_and_keep_every_tensor_once():
    g = torch.Generator().manual_seed(0)
    state = {f"w{i}": torch.randn(n, generator=g).to(torch.bfloat16) for i, n in enumerate([10, 300, 40, 40, 5, 600, 1])}
    cap = 200 * 2  # bytes: 200 bf16 values
    buckets = weights.bucket_state_dict(state, cap)
    for b in buckets:
        assert weights.nbytes(b) <= cap or len(b) == 1  # only a lone oversized tensor exceeds it
    assert [k for b in buckets for k in b] == list(state)  # each once, in order
    assert [list(b) for b in buckets] == [["w0"], ["w1"], ["w2", "w3", "w4"], ["w5"], ["w6"]]
    assert all(b[k] is state[k] for b in buckets for k in b)
    with pytest.raises(ValueError):
        weights.bucket_state_dict(state, 0)


def test_tied_weights_travel_once():
    lm = build_tiny_policy(TINY, Learner(tiny_config(), CORPUS).tokenizer)
    sd = lm.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()  # tied
    unique = weights.unique_tensors(sd)
    assert "model.embed_tokens.weight" in unique and "lm_head.weight" not in unique
    assert len(unique) == len(sd) - 1


def test_copy_into_refuses_foreign_weights():
    tok = Learner(tiny_config(), CORPUS).tokenizer
    lm = build_tiny_policy(TINY, tok)
    with pytest.raises(KeyError, match="not a parameter"):
        weights.copy_into(lm, [{"model.nope": torch.zeros(1)}])
    with pytest.raises(ValueError, match="shape"):
        weights.copy_into(lm, [{"model.norm.weight": torch.zeros(3)}])


@pytest.mark.ray
def test_bucketed_bf16_weights_arrive_bit_exact(ray_local):
    import ray

    cfg = tiny_config(kl_coef=0.01, sync_bucket_mb=0.02)  # ~20 kB buckets: many of them
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"dtype": "bfloat16"})})
    learner = Learner(cfg, CORPUS)
    learner.update(fixed_batch(learner.tokenizer))  # weights that differ from any fresh init
    refs = learner.publish_weights()
    stats = learner.last_publish()
    buckets = ray.get(refs)
    assert len(refs) == stats["sync/buckets"] > 3
    cap = int(0.02 * weights.MB)
    assert all(weights.nbytes(b) <= cap or len(b) == 1 for b in buckets)
    sent = {k: v for b in buckets for k, v in b.items()}
    assert {v.dtype for v in sent.values()} == {torch.bfloat16}
    assert stats["sync/bytes"] == weights.nbytes(sent) == sum(v.numel() * 2 for v in sent.values())

    engine_lm = build_tiny_policy(TINY, learner.tokenizer, seed=99, dtype=torch.bfloat16)
    engine = HFGenerator(engine_lm, learner.tokenizer)
    engine.load_buckets(buckets)
    mine, theirs = engine.model.state_dict(), learner.state_dict()
    assert set(mine) == set(theirs)
    assert all(mine[k].dtype == theirs[k].dtype and torch.equal(mine[k], theirs[k]) for k in theirs)
    assert learner.version() == 1
