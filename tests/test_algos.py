"""The RL maths on hand-computed examples, and the mask: information tokens never matter."""
from __future__ import annotations

import math

import pytest
import torch

from router_r1.rl import algos


def test_grpo_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0, 0.3, 0.3])
    groups = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    adv = algos.grpo_advantages(rewards, groups, eps=0.0)
    s = math.sqrt(1 / 3)  # unbiased std of [1, 0, 1, 0]
    assert adv[:4].tolist() == pytest.approx([0.5 / s, -0.5 / s, 0.5 / s, -0.5 / s])
    assert adv[4] == 0  # a group of one carries no signal
    assert adv[5:].tolist() == [0.0, 0.0]  # equal rewards: zero std, zero advantage


def test_grpo_advantages_eps_and_group_order():
    rewards = torch.tensor([2.0, 1.0, 0.0, 4.0])
    groups = torch.tensor([7, 3, 7, 3])
    adv = algos.grpo_advantages(rewards, groups, eps=1e-6)
    s7, s3 = math.sqrt(2.0), math.sqrt(4.5)
    assert adv.tolist() == pytest.approx([1 / (s7 + 1e-6), -1.5 / (s3 + 1e-6), -1 / (s7 + 1e-6), 1.5 / (s3 + 1e-6)])


def test_last_token_rewards_on_last_policy_token():
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    out = algos.last_token_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    want = torch.zeros(3, 6)
    want[0, 3], want[1, 0] = 2.0, -1.0
    assert torch.equal(out, want)


def test_gae_skips_information_tokens():
    # positions: policy, information, policy(last, reward 1), padding
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 9.0, 0.2, 7.0]])  # values on masked tokens must not matter
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    adv, ret = algos.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=2: delta = 1 - 0.2 = 0.8.  t=0: delta = 0.9*0.2 - 0.5 = -0.32; A = -0.32 + 0.9*0.8*0.8
    assert adv[0].tolist() == pytest.approx([0.256, 0.0, 0.8, 0.0])
    assert ret[0].tolist() == pytest.approx([0.756, 0.0, 1.0, 0.0])


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    mask = torch.ones(1, 3)
    values = torch.tensor([[0.1, 0.2, 0.3]])
    rewards = torch.tensor([[0.0, 0.0, 2.0]])
    adv, ret = algos.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([1.9, 1.8, 1.7])
    assert ret[0].tolist() == pytest.approx([2.0, 2.0, 2.0])


def test_masked_mean_and_whiten():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 4.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert algos.masked_mean(x, m).item() == pytest.approx(2.5)
    assert algos.masked_mean(x, torch.zeros_like(m)).item() == 0.0
    w = algos.masked_whiten(x, m)
    assert w[0, 2] == 0 and w[1, 1] == 0
    assert algos.masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-6)
    assert algos.masked_var(w, m).item() == pytest.approx(1.0, rel=1e-4)


def test_policy_loss_clipping_hand_computed():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    # A=+1 with ratio 1.5 -> clipped at 1.2; A=-1 with ratio 0.5 -> min(-0.5, -0.8) = -0.8
    loss, m = algos.policy_loss(logp, old, torch.tensor([[1.0, -1.0]]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 - 0.8) / 2)
    assert m["actor/clipfrac"] == pytest.approx(1.0)
    # Inside the trust region nothing is clipped and the loss is -mean(ratio * A).
    loss, m = algos.policy_loss(torch.log(torch.tensor([[1.1, 0.9]])), old, torch.tensor([[1.0, 2.0]]), mask, 0.2)
    assert loss.item() == pytest.approx(-(1.1 + 1.8) / 2)
    assert m["actor/clipfrac"] == 0.0


def test_kl_estimators():
    mask = torch.ones(1, 1)
    logp, ref = torch.tensor([[math.log(0.25)]]), torch.tensor([[math.log(0.5)]])
    k3, m = algos.kl_penalty(logp, ref, mask, "k3")
    assert k3.item() == pytest.approx(2 - math.log(2) - 1)  # r - log r - 1 with r = pi_ref / pi = 2
    assert m["actor/kl"] == pytest.approx(k3.item())
    assert algos.kl_penalty(logp, ref, mask, "k1")[0].item() == pytest.approx(-math.log(2))
    assert algos.kl_penalty(logp, logp, mask, "k3")[0].item() == 0.0
    with pytest.raises(ValueError, match="unknown KL estimator"):
        algos.kl_penalty(logp, ref, mask, "k9")


def test_entropy_and_token_logprobs():
    logits = torch.zeros(2, 3, 8)
    assert torch.allclose(algos.entropy_from_logits(logits), torch.full((2, 3), math.log(8)))
    logits = torch.randn(2, 3, 8)
    tokens = torch.randint(0, 8, (2, 3))
    want = torch.log_softmax(logits, -1)[torch.arange(2)[:, None], torch.arange(3)[None], tokens]
    assert torch.allclose(algos.token_logprobs(logits, tokens), want)


def test_value_loss_clipped_hand_computed():
    mask = torch.ones(1, 2)
    old = torch.tensor([[0.0, 0.0]])
    values = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[1.0, 0.0]])
    # pos 0: unclipped err 0, clipped V = 0.2 -> err 0.64 -> max 0.64; pos 1: err 0.01 both ways
    loss, m = algos.value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert m["critic/vf_clipfrac"] == pytest.approx(0.5)
    plain, _ = algos.value_loss(values, old, returns, mask, clip=None)
    assert plain.item() == pytest.approx(0.5 * (0.0 + 0.01) / 2)


def _total_loss(logp, old, ref, adv, values, old_values, returns, mask):
    pg, _ = algos.policy_loss(logp, old, adv, mask, 0.2)
    kl, _ = algos.kl_penalty(logp, ref, mask)
    vf, _ = algos.value_loss(values, old_values, returns, mask, 0.2)
    return pg + 0.1 * kl + 0.5 * vf


def test_masked_tokens_change_no_gradient():
    torch.manual_seed(0)
    B, T = 3, 7
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0], [1, 0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 0, 0, 0]]).float()
    tensors = {k: torch.randn(B, T) for k in ("logp", "old", "ref", "adv", "values", "old_values", "returns")}

    def grads(t):
        logp = t["logp"].clone().requires_grad_(True)
        values = t["values"].clone().requires_grad_(True)
        loss = _total_loss(logp, t["old"], t["ref"], t["adv"], values, t["old_values"], t["returns"], mask)
        loss.backward()
        return loss.detach(), logp.grad, values.grad

    base_loss, g_logp, g_values = grads(tensors)
    assert torch.all(g_logp[mask == 0] == 0) and torch.all(g_values[mask == 0] == 0)
    assert g_logp[mask == 1].abs().sum() > 0
    # Garbage on the information tokens: every input, including the policy's own log-probs there.
    poisoned = {k: torch.where(mask == 0, torch.full_like(v, 1e3), v) for k, v in tensors.items()}
    loss2, g2_logp, g2_values = grads(poisoned)
    assert torch.equal(base_loss, loss2)
    assert torch.equal(g_logp, g2_logp) and torch.equal(g_values, g2_values)


# -- loss aggregation, numeric guards and KL estimators (issue 12) ---------------------------------
# Two outputs with 2 and 1 policy tokens, a padding column, and a row with no policy token at all.
AGG_MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
AGG_LOSS = torch.tensor([[1.0, 2.0, 50.0], [4.0, 50.0, 50.0], [50.0, 50.0, 50.0]])


@pytest.mark.parametrize("mode, want", [
    ("token-mean", (1 + 2 + 4) / 3),                   # every policy token alike
    ("seq-mean-token-mean", ((1 + 2) / 2 + 4 / 1) / 2),  # DeepSeekMath: per-output mean, then mean
    ("seq-mean-token-sum", ((1 + 2) + 4) / 2),         # Dr. GRPO: per-output sum, then mean
])
def test_loss_aggregation_hand_computed(mode, want):
    # The empty third row is not an output: it counts in no denominator.
    assert algos.agg_loss(AGG_LOSS, AGG_MASK, mode).item() == pytest.approx(want)
    w = algos.loss_weights(AGG_MASK, mode)
    assert torch.all(w[AGG_MASK == 0] == 0)
    assert w.sum().item() == pytest.approx({"token-mean": 1.0, "seq-mean-token-mean": 1.0,
                                            "seq-mean-token-sum": 1.5}[mode])


@pytest.mark.parametrize("mode", algos.LOSS_AGG)
def test_step_weights_sliced_per_micro_batch_add_up_to_the_step_loss(mode):
    """Weights computed over the optimizer step, sliced by rows: any cut into micro-batches (or
    data-parallel ranks) sums to the loss of the whole step, including uneven cuts."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    loss = torch.randn(5, 4)
    whole = algos.agg_loss(loss, mask, mode)
    w = algos.loss_weights(mask, mode)
    for cut in ([[0, 1], [2, 3], [4]], [[0], [1, 2, 3, 4]], [[4, 2], [0], [3, 1]]):
        parts = sum(algos.agg_loss(loss[r], mask[r], weights=w[r]) for r in cut)
        assert parts.item() == pytest.approx(whole.item(), rel=1e-6)
    # while averaging each micro-batch's own aggregate would not (uneven rows and tokens):
    own = sum(algos.agg_loss(loss[r], mask[r], mode) for r in ([0], [1, 2, 3, 4])) / 2
    assert own.item() != pytest.approx(whole.item(), rel=1e-3)


def test_policy_loss_aggregation_passes_through():
    old = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    mask = AGG_MASK[:2]
    # ratio 1 everywhere (inside the clip range): per-token loss is -A
    assert algos.policy_loss(old, old, adv, mask, loss_agg="seq-mean-token-mean")[0].item() == \
        pytest.approx(-(1.0 + 2.0) / 2)
    assert algos.policy_loss(old, old, adv, mask, loss_agg="seq-mean-token-sum")[0].item() == \
        pytest.approx(-(2.0 + 2.0) / 2)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        algos.policy_loss(old, old, adv, mask, loss_agg="sum")


def test_policy_loss_clamps_the_log_ratio_before_exp():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    logp = torch.tensor([[100.0, -100.0]], requires_grad=True)  # e^100 overflows float32
    loss, m = algos.policy_loss(logp, old, torch.tensor([[-1.0, 1.0]]), mask, clip_eps=0.2)
    # token 0: ratio e^20, A = -1: min(-e^20, -1.2) = -e^20; token 1: ratio e^-20, A = +1:
    # min(e^-20, 0.8) = e^-20. loss = -mean = (e^20 - e^-20) / 2
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx((math.exp(20) - math.exp(-20)) / 2, rel=1e-5)
    assert m["actor/approx_kl"] == pytest.approx(0.0)  # -(20 + -20) / 2
    loss.backward()
    assert torch.equal(logp.grad, torch.zeros(1, 2))  # outside the clamp: no gradient
    # Inside the bound the clamp changes nothing.
    lp = torch.tensor([[19.0, -19.0]])
    loss, _ = algos.policy_loss(lp, old, torch.tensor([[-1.0, 1.0]]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((math.exp(19) - math.exp(-19)) / 2, rel=1e-5)


def test_kl_estimators_hand_computed_k1_k2_k3():
    mask = torch.ones(1, 1)
    # pi = 0.5, pi_ref = 0.25: log r = log(pi_ref / pi) = -log 2
    logp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    l2 = math.log(2)
    assert algos.kl_penalty(logp, ref, mask, "k1")[0].item() == pytest.approx(l2)
    assert algos.kl_penalty(logp, ref, mask, "k2")[0].item() == pytest.approx(0.5 * l2 ** 2)
    assert algos.kl_penalty(logp, ref, mask, "k3")[0].item() == pytest.approx(0.5 + l2 - 1)


def test_kl_k3_is_clamped_and_finite():
    mask = torch.ones(1, 3)
    logp = torch.tensor([[0.0, 0.0, 0.0]])
    ref = torch.tensor([[100.0, -30.0, 2.0]])
    kl, m = algos.kl_penalty(logp, ref, mask, "k3")
    # log r = 100 -> 20 -> e^20 - 21 -> 10; log r = -30 -> -20 -> e^-20 + 19 -> 10; log r = 2: e^2 - 3
    want = [10.0, 10.0, math.exp(2) - 3]
    assert kl.item() == pytest.approx(sum(want) / 3, rel=1e-6)
    assert m["actor/kl"] == pytest.approx(sum(want) / 3, rel=1e-6)
    # aggregation like the policy loss: the token-mean metric stays, the loss follows loss_agg
    mask2 = torch.tensor([[1, 1, 0], [1, 0, 0]])
    lp2, ref2 = torch.zeros(2, 3), torch.tensor([[math.log(2), 0.0, 9.0], [math.log(3), 9.0, 9.0]])
    k3 = [2 - math.log(2) - 1, 0.0, 3 - math.log(3) - 1]  # r - log r - 1 on the three policy tokens
    kl, m = algos.kl_penalty(lp2, ref2, mask2, "k3", loss_agg="seq-mean-token-sum")
    assert kl.item() == pytest.approx(((k3[0] + k3[1]) + k3[2]) / 2)
    assert m["actor/kl"] == pytest.approx(sum(k3) / 3)


def test_value_loss_uses_its_own_clip_and_aggregation():
    mask = AGG_MASK[:2]
    old = torch.zeros(2, 3)
    values = torch.tensor([[1.0, 0.1, 7.0], [0.5, 7.0, 7.0]])
    returns = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # clip 0.5: token (0,0): err 0, clipped V 0.5 -> 0.25; (0,1): 0.01 both; (1,0): 0.25 both ways
    loss, m = algos.value_loss(values, old, returns, mask, clip=0.5)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.01 + 0.25) / 3)
    loss, _ = algos.value_loss(values, old, returns, mask, clip=0.5, loss_agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(0.5 * ((0.25 + 0.01) / 2 + 0.25) / 2)


def test_decoupled_ppo_with_one_stale_row_by_hand():
    """Staleness 1: row 0 was sampled by older weights (mu), row 1 by the current ones.
    Row 0, token 0: pi_prox/mu = e^0.5 = 1.6487 (under the cap 2); token 1: e^1.0 = 2.718 -> 2.
    Row 1 keeps w = 1 although its mu and pi_prox differ. Loss by hand (token-mean over 4 tokens,
    ratio pi/pi_prox = 1 everywhere, so each surrogate is its advantage):
        -(1.6487 * 1.0 + 2.0 * (-0.5) + 1 * 2.0 + 1 * 0.25) / 4 = -0.72468"""
    import math

    from router_r1.rl.algos import behaviour_weights, policy_loss

    mask = torch.ones(2, 2)
    prox = torch.tensor([[-1.0, -0.5], [-2.0, -1.0]])
    mu = torch.tensor([[-1.5, -1.5], [-2.3, -1.0]])
    stale = torch.tensor([True, False])
    w, m = behaviour_weights(prox, mu, mask, stale, cap=2.0)
    assert torch.allclose(w, torch.tensor([[math.exp(0.5), 2.0], [1.0, 1.0]]))
    assert m["actor/behaviour_is_clipfrac"] == 0.5 and m["actor/stale_token_frac"] == 0.5
    assert m["actor/behaviour_is_max"] == pytest.approx(math.e)
    adv = torch.tensor([[1.0, -0.5], [2.0, 0.25]])
    loss, _ = policy_loss(prox.clone(), prox, adv, mask, behaviour_w=w)
    expected = -(math.exp(0.5) * 1.0 + 2.0 * (-0.5) + 2.0 + 0.25) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6) and expected == pytest.approx(-0.72468, abs=1e-5)
    # No stale row: every weight is exactly 1 and the loss is the on-policy one.
    w0, _ = behaviour_weights(prox, mu, mask, torch.tensor([False, False]))
    assert torch.equal(w0, torch.ones(2, 2))
    assert policy_loss(prox.clone(), prox, adv, mask, behaviour_w=w0)[0].item() == policy_loss(prox.clone(), prox, adv, mask)[0].item()
