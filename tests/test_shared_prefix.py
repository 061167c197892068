"""The learner's shared-prefix forward: the rows' common prefix runs once, the rest on its cache.
It must give the plain forward's logits, values and gradients (and the same update), only cheaper."""
from __future__ import annotations

import copy

import pytest
import torch

from actors.learner import Learner
from router_r1.engines.model import build_tiny_policy
from router_r1.env.episode import Episode, Segment
from router_r1.rl.batch import TrajectoryBatch
from router_r1.rl.policy_model import PolicyWithValue, shared_prefix_len
from tiny_learner import CORPUS, TINY, tiny_config


def _t(rows):
    return torch.tensor(rows)


def test_shared_prefix_len_by_hand():
    ids = _t([[5, 6, 7, 8, 9, 0], [5, 6, 7, 1, 2, 3], [5, 6, 7, 8, 0, 0]])
    mask = _t([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    late = _t([[4, 5], [4, 5], [3, 0]])  # first response tokens at positions 4, 4, 3
    assert shared_prefix_len(ids, mask, late) == 2  # 3 equal tokens, but row 2's 1st target is predicted at 2
    assert shared_prefix_len(ids, mask, _t([[5, 0], [5, 0], [4, 0]])) == 3
    assert shared_prefix_len(ids[:1], mask[:1], late[:1]) == 0  # one row: nothing to share
    no_response = _t([[5, 0], [0, 0], [4, 0]])
    assert shared_prefix_len(ids, mask, no_response) == 0
    pad = _t([[0, 0, 0], [0, 0, 0]])  # rows equal only in padding share nothing
    assert shared_prefix_len(pad, _t([[0, 0, 0], [0, 0, 0]]), _t([[1], [1]])) == 0


def _episode(i: int, question: str, answer: str) -> Episode:
    prompt = ("Answer the question. Think inside <think> </think>. To ask a model, write <search> "
              f"Model-Name: question </search>. Candidates: Alpha-7B, Beta-70B.\nQuestion: {question}\n")
    e = Episode(uid=f"q{i}", question=question, golden_answers=[answer], prompt=prompt, policy_version=0)
    e.segments = [Segment(f"<think>I should ask.</think><search>Alpha-7B: {question}</search>", "policy"),
                  Segment(f"<information>It is {answer}.</information>", "information"),
                  Segment(f"<think>It says {answer}.</think><answer>{answer}</answer>", "policy")]
    return e


def _batch(tokenizer) -> TrajectoryBatch:
    """Four rows: one long common prefix, then questions and replies of different lengths."""
    qa = [("capital of Veloria?", "Marlow"), ("who wrote the river book?", "Quenby"),
          ("capital?", "Marlow"), ("what city is north of the lake in Veloria?", "I do not know")]
    eps = [_episode(i, q, a) for i, (q, a) in enumerate(qa)]
    return TrajectoryBatch.from_traces(eps, tokenizer, rewards=[1.0, 0.0, 1.0, 0.0], group_ids=[0, 0, 1, 1])


@pytest.mark.parametrize("with_value", [False, True])
def test_shared_prefix_forward_equals_the_plain_forward(with_value):
    learner = Learner(tiny_config(), CORPUS)
    tb = _batch(learner.tokenizer).to_tensors(learner.tokenizer.pad_token_id)
    assert shared_prefix_len(tb.input_ids, tb.attention_mask, tb.response_pos) >= 16
    torch.manual_seed(0)
    lm = build_tiny_policy(TINY, learner.tokenizer)
    plain = PolicyWithValue(lm, with_value, share_prefix=False)
    shared = PolicyWithValue(copy.deepcopy(lm), with_value, share_prefix=True)
    shared.load_state_dict(plain.state_dict())
    weights = torch.randn(tb.response_ids.shape)
    outs, grads = [], []
    for model in (plain, shared):
        logits, values = model(tb.input_ids, tb.attention_mask, tb.response_pos)
        loss = (logits.logsumexp(-1) * weights * tb.response_mask).sum()
        if with_value:
            loss = loss + (values * weights * tb.response_mask).sum()
        loss.backward()
        outs.append((logits, values))
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    m = tb.response_mask.bool()
    assert torch.allclose(outs[0][0][m], outs[1][0][m], atol=1e-5)
    if with_value:
        assert torch.allclose(outs[0][1][m], outs[1][1][m], atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6), n


def test_an_rl_update_is_the_same_with_and_without_sharing():
    """PPO with a reference model: old/ref scoring and the update (policy, value, KL) all go
    through the shared path; the gradients at the optimizer step match the plain path's."""
    grads, metrics = [], []
    for share in (False, True):
        learner = Learner(tiny_config("ppo", share_prefix=share, kl_coef=0.1, micro_batch_size=4,
                                      grad_accum=1), CORPUS)
        seen = {}

        def record(optimizer, args, kwargs, learner=learner, seen=seen):
            seen.update({n: p.grad.clone() for n, p in learner.model.named_parameters() if p.grad is not None})

        learner.optimizer.register_step_pre_hook(record)
        metrics.append(learner.update(_batch(learner.tokenizer)))
        grads.append(seen)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-7), n
    assert metrics[1]["actor/pg_loss"] == pytest.approx(metrics[0]["actor/pg_loss"], abs=1e-6)
