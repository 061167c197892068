"""RL maths for the router: advantages and losses as pure torch functions (Ray-free).

Shapes: B = episodes, T = response tokens (right-padded). `mask` is always the *loss* mask:
1 on tokens the policy generated, 0 on inserted <information> tokens and on padding. Every
reduction first selects masked tokens (`masked`), so a masked token contributes nothing to a loss
or its gradient. Losses return `(loss, metrics)`; metric names are namespaced by role (actor/, critic/).

References
- PPO: Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (clipped surrogate, eq. 7;
  value clipping as in OpenAI baselines ppo2).
- GAE: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation" (eq. 16).
- GRPO: Shao et al. 2024, "DeepSeekMath" (sec. 4.1: group-normalised outcome advantages, KL to a
  reference with the unbiased estimator k3, eq. 4; the objective averages each output's tokens,
  then the outputs: eq. 3, our "seq-mean-token-mean").
- Dr. GRPO: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
  (arXiv:2503.20783): GRPO's 1/|o_i| favours long wrong answers; summing each output's tokens
  removes that bias, our "seq-mean-token-sum" (Dr. GRPO also drops the std in the advantage;
  `grpo_advantages` keeps it).
- KL estimators k1, k2, k3: Schulman 2020, "Approximating KL Divergence" (blog post).
- Numeric guards as in verl (volcengine/verl, core_algos.py): the log-ratio is clamped to +-20
  before exp, the k3 estimate to [-10, 10].
"""
from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0  # |log pi/pi_old| and |log pi_ref/pi| at most this before exp (verl's bound)
KL_CLAMP = 10.0  # the k3 estimate per token is kept in [-KL_CLAMP, KL_CLAMP] (verl's kl_penalty)
LOSS_AGG = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


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


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over masked tokens; masked-out entries come back as 0. x, mask: (B, T)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    return masked((x - mean) * torch.rsqrt(var + eps), mask)


def loss_weights(mask: torch.Tensor, loss_agg: str = "token-mean") -> torch.Tensor:
    """Per-token weights w (B, T) such that the aggregated loss is sum(w * loss_per_token).

    mask: (B, T) loss mask of all the rows one optimizer step trains on. With n_i the policy
    tokens of row i, N = sum_i n_i and S the rows with n_i > 0 (a row with none is not counted):
      token-mean          w_it = 1 / N           every policy token alike (verl's default);
      seq-mean-token-mean w_it = 1 / (S * n_i)   mean over each output, then over outputs
                                                 (DeepSeekMath GRPO, Shao et al. 2024, eq. 3);
      seq-mean-token-sum  w_it = 1 / S           sum over each output, mean over outputs: no
                                                 1/|o_i| length bias (Dr. GRPO, Liu et al. 2025).
    Weights are 0 off the mask. Computed once over an optimizer step and sliced per micro-batch
    (and per data-parallel rank), the parts add up to exactly the loss of the whole step."""
    m = mask.float()
    if loss_agg == "token-mean":
        return m / m.sum().clamp(min=1)
    n = m.sum(dim=1, keepdim=True)  # (B, 1) policy tokens per row
    rows = (n > 0).sum().clamp(min=1)
    if loss_agg == "seq-mean-token-mean":
        return m / (n.clamp(min=1) * rows)
    if loss_agg == "seq-mean-token-sum":
        return m / rows
    raise ValueError(f"unknown loss aggregation {loss_agg!r}; use one of {', '.join(LOSS_AGG)}")


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, loss_agg: str = "token-mean",
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * loss) over masked tokens: loss, mask (B, T) -> scalar. `weights` (B, T) from
    `loss_weights` over a larger set of rows (the whole optimizer step) make this that step's
    share from these rows; by default they are this batch's own (`loss_agg`)."""
    w = loss_weights(mask, loss_agg) if weights is None else weights
    return (masked(loss, mask) * w).sum()


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


def behaviour_weights(prox_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                      stale: torch.Tensor, cap: float = 2.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights of the decoupled PPO objective (Hilton et al. 2022,
    "Batch size-invariance for policy optimization", eq. 2; as AReaL uses it for rollouts that
    run ahead of the learner, Fu et al. 2025, eq. 5):

        w_t = min(pi_prox(a_t|s_t) / mu(a_t|s_t), cap)   for rows sampled by older weights
        w_t = 1                                            for rows sampled by the current ones

    mu is the behaviour policy, the sampler's own log-probs; pi_prox the proximal policy, the
    learner's weights at the start of the update (PPO's "old" policy, which the clipped ratio is
    taken against). The weights correct for sampling from mu; the clip keeps each update near
    pi_prox. `stale`: (B,) bool, rows generated by older weights; fresh rows keep exactly 1, so a
    synchronous step is untouched (its mu and pi_prox differ only by numerics).
    prox_logp, behaviour_logp, mask: (B, T). Returns (weights (B, T), metrics over stale tokens)."""
    with torch.no_grad():
        log_w = torch.clamp(prox_logp - behaviour_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        w = torch.where(stale[:, None], torch.clamp(torch.exp(log_w), max=cap), torch.ones_like(log_w))
        w = masked(w, mask)
        sm = mask * stale[:, None].to(mask.dtype)
        n = sm.sum()
        raw = torch.exp(log_w)
        metrics = {"actor/behaviour_is_mean": (masked_sum(w, sm) / n).item() if n > 0 else 1.0,
                   "actor/behaviour_is_max": raw[sm > 0].max().item() if n > 0 else 1.0,
                   "actor/behaviour_is_clipfrac": (masked_sum((raw > cap).float(), sm) / n).item() if n > 0 else 0.0,
                   "actor/stale_token_frac": (n / mask.sum().clamp(min=1)).item()}
    return w, metrics


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_eps: float = 0.2, loss_agg: str = "token-mean",
                weights: torch.Tensor | None = None,
                behaviour_w: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated for minimisation:

        ratio = pi(a|s) / pi_old(a|s)  = exp(clamp(logp - old_logp, -20, 20))
        L     = -agg_t w_t * min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)

    logp, old_logp, advantages, mask: (B, T). `agg` is `agg_loss` (token-mean by default; see
    `loss_weights` for `loss_agg` and `weights`). `behaviour_w`: (B, T) decoupled-PPO importance
    weights (`behaviour_weights`; None: w_t = 1, the on-policy loss). The clamp (verl's) keeps
    exp finite when a token's probability has moved by more than e^20; its gradient there is 0.
    Returns (loss scalar, metrics); the metrics other than pg_loss are token-means over the mask."""
    log_ratio = masked(torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP), mask)
    advantages = masked(advantages, mask)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    surrogate = torch.min(unclipped, clipped)
    if behaviour_w is not None:
        surrogate = behaviour_w * surrogate
    loss = -agg_loss(surrogate, mask, loss_agg, weights)
    with torch.no_grad():
        clipfrac = masked_mean((clipped < unclipped).float(), mask)
        approx_kl = masked_mean(-log_ratio, mask)  # KL(old || new), k1
    return loss, {"actor/pg_loss": loss.item(), "actor/clipfrac": clipfrac.item(),
                  "actor/approx_kl": approx_kl.item(), "actor/ratio_mean": masked_mean(ratio, mask).item()}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
               kind: str = "k3", loss_agg: str = "token-mean",
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """KL(pi || pi_ref) estimated per token from samples of pi (Schulman 2020, "Approximating KL
    Divergence"), aggregated like the policy loss (`agg_loss`). With r = pi_ref / pi:

        k1 = -log r              unbiased, high variance, can be negative;
        k2 = 0.5 * (log r)^2     biased, low variance, >= 0 (its gradient is KL's);
        k3 = r - log r - 1       unbiased, low variance, >= 0 (DeepSeekMath eq. 4, GRPO's choice).

    k3's log r is clamped to +-20 before exp and k3 itself to [-10, 10], as verl's kl_penalty
    does. logp, ref_logp, mask: (B, T). Returns (kl scalar, {"actor/kl": its token-mean})."""
    log_r = masked(ref_logp - logp, mask)  # log(pi_ref / pi)
    if kind == "k3":
        log_r = torch.clamp(log_r, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = torch.clamp(torch.exp(log_r) - log_r - 1, -KL_CLAMP, KL_CLAMP)
    elif kind == "k1":
        kl = -log_r
    elif kind == "k2":
        kl = 0.5 * log_r ** 2
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")
    with torch.no_grad():
        token_mean = masked_mean(kl, mask)
    return agg_loss(kl, mask, loss_agg, weights), {"actor/kl": token_mean.item()}


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
               mask: torch.Tensor, clip: float | None = 0.2, loss_agg: str = "token-mean",
               weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (PPO, as in OpenAI baselines ppo2), aggregated by `agg_loss`:

        V_clip = V_old + clip(V - V_old, -c, c)
        L      = 0.5 * agg_t max((V - R)^2, (V_clip - R)^2)

    values, old_values, returns, mask: (B, T). `clip` is `learner.vf_clip` (in return units,
    separate from the policy's clip_eps); None gives the plain squared error."""
    values, old_values, returns = masked(values, mask), masked(old_values, mask), masked(returns, mask)
    err = (values - returns) ** 2
    if clip is None:
        loss = 0.5 * agg_loss(err, mask, loss_agg, weights)
        clipfrac = torch.zeros(())
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clipped = (v_clipped - returns) ** 2
        loss = 0.5 * agg_loss(torch.max(err, err_clipped), mask, loss_agg, weights)
        clipfrac = masked_mean((err_clipped > err).float(), mask)
    return loss, {"critic/vf_loss": loss.item(), "critic/vf_clipfrac": clipfrac.item(),
                  "critic/values_mean": masked_mean(values, mask).item()}
