"""RL maths for the router: advantages and losses as pure torch functions (Ray-free).

Shapes: B = episodes, T = response tokens (right-padded). `mask` is always the *loss* mask:
1 on tokens the policy generated, 0 on inserted <information> tokens and on padding. Every
reduction goes through `masked_mean`, so a masked token contributes nothing to a loss or its
gradient. Losses return `(loss, metrics)`; metric names are namespaced by role (actor/, critic/).

References
- PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped surrogate, eq. 7;
  value clipping as in OpenAI baselines ppo2).
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation" (eq. 16).
- GRPO: Shao et al. 2024, "DeepSeekMath" (sec. 4.1: group-normalised outcome advantages, KL to a
  reference with the unbiased estimator k3, eq. 4).
"""
from __future__ import annotations

import torch


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask == 1, else 0. A select, not a product: whatever sits on masked tokens (even
    inf or nan) can reach neither the value nor the gradient. Losses apply it to their inputs
    before any exp, so an extreme log-prob on an information token cannot turn 0 * inf into nan."""
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of x where mask == 1. x, mask: same shape. Returns a scalar."""
    return masked(x, mask).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over tokens where mask == 1 (0 if the mask is empty). x, mask: (B, T)."""
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over masked tokens. x, mask: (B, T). Returns a scalar."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_sum((x - mean) ** 2, mask) / n.clamp(min=1)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked tokens; masked-out entries come back as 0. x, mask: (B, T)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return masked(out, mask)


def grpo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantages (DeepSeekMath sec. 4.1.2): A_i = (r_i - mean(r_g)) / (std(r_g) + eps)
    over the group g of samples for the same question.

    rewards: (B,) float; group_ids: (B,) int. Returns (B,). A group of one sample, or one whose
    rewards are all equal (std <= eps), carries no signal: its advantages are 0. std is the
    unbiased one (as in verl).
    """
    rewards = rewards.float()
    adv = torch.zeros_like(rewards)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        r = rewards[idx]
        if r.numel() < 2:
            continue
        std = r.std()
        if std <= eps:  # all rewards (numerically) equal: no preference to learn
            continue
        adv[idx] = (r - r.mean()) / (std + eps)
    return adv


def last_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-level rewards with each episode's scalar reward on its last policy token.

    rewards: (B,); mask: (B, T). Returns (B, T), zero elsewhere (and everywhere for a row with no
    policy token)."""
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, pos, torch.full_like(pos, -1)).max(dim=1).values  # (B,)
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    rows = torch.nonzero(last >= 0).squeeze(1)
    out[rows, last[rows]] = rewards.float()[rows]
    return out


def gae_advantages(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   gamma: float = 1.0, lam: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over policy tokens only.

        delta_t = r_t + gamma * V(next policy token) - V_t
        A_t     = delta_t + gamma * lam * A_(next policy token)

    Inserted information tokens (mask 0) are skipped: the recursion carries the next policy
    token's value and advantage across them, as verl/Search-R1 do for multi-turn rollouts, so the
    environment's text is neither a state the critic must value nor an action to credit.

    token_rewards, values, mask: (B, T) (episode reward on the last policy token, see
    `last_token_rewards`). Returns (advantages, returns), both (B, T), zero where mask == 0;
    returns = advantages + values are the critic's targets.
    """
    values, token_rewards = masked(values, mask), masked(token_rewards, mask)
    mask = mask.float()
    B, T = values.shape
    next_value = torch.zeros(B, device=values.device)
    next_adv = torch.zeros(B, device=values.device)
    adv = torch.zeros(B, T, device=values.device)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        next_value = m * values[:, t] + (1 - m) * next_value
        next_adv = m * a + (1 - m) * next_adv
    returns = masked(adv + values, mask)
    return adv, returns


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated for minimisation:

        ratio = pi(a|s) / pi_old(a|s)
        L     = -mean_t min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)

    logp, old_logp, advantages, mask: (B, T). The mean is over policy tokens (token-mean, as in
    verl's default aggregation). Returns (loss scalar, metrics)."""
    log_ratio, advantages = masked(logp - old_logp, mask), masked(advantages, mask)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -masked_mean(torch.min(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped < unclipped).float(), mask)
        approx_kl = masked_mean(-log_ratio, mask)  # KL(old || new), k1
    return loss, {"actor/pg_loss": loss.item(), "actor/clipfrac": clipfrac.item(),
                  "actor/approx_kl": approx_kl.item(), "actor/ratio_mean": masked_mean(ratio, mask).item()}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
               kind: str = "k3") -> tuple[torch.Tensor, dict[str, float]]:
    """KL(pi || pi_ref) estimated per token from samples of pi, averaged over policy tokens.

    k3 (DeepSeekMath eq. 4; Schulman 2020, "Approximating KL divergence"): unbiased, always >= 0,
        k3 = pi_ref/pi - log(pi_ref/pi) - 1
    k1 = log(pi/pi_ref) (unbiased, can be negative); k2 = 0.5 * log(pi/pi_ref)^2.
    logp, ref_logp, mask: (B, T). Returns (kl scalar, metrics)."""
    log_ratio = masked(ref_logp - logp, mask)  # log(pi_ref / pi)
    if kind == "k3":
        kl = torch.exp(log_ratio) - log_ratio - 1
    elif kind == "k1":
        kl = -log_ratio
    elif kind == "k2":
        kl = 0.5 * log_ratio ** 2
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")
    kl = masked_mean(kl, mask)
    return kl, {"actor/kl": kl.item()}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position. logits: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token_t) at each position. logits: (B, T, V); tokens: (B, T) -> (B, T).
    Written as logit - logsumexp so no second (B, T, V) tensor is materialised."""
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip: float | None = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (PPO, as in OpenAI baselines ppo2):

        V_clip = V_old + clip(V - V_old, -c, c)
        L      = 0.5 * mean_t max((V - R)^2, (V_clip - R)^2)

    values, old_values, returns, mask: (B, T). `clip=None` gives the plain squared error."""
    values, old_values, returns = masked(values, mask), masked(old_values, mask), masked(returns, mask)
    err = (values - returns) ** 2
    if clip is None:
        loss = 0.5 * masked_mean(err, mask)
        clipfrac = torch.zeros(())
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clipped = (v_clipped - returns) ** 2
        loss = 0.5 * masked_mean(torch.max(err, err_clipped), mask)
        clipfrac = masked_mean((err_clipped > err).float(), mask)
    return loss, {"critic/vf_loss": loss.item(), "critic/vf_clipfrac": clipfrac.item(),
                  "critic/values_mean": masked_mean(values, mask).item()}
