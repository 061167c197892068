"""One RL update's bookkeeping around the maths of `algos` (Ray-free; the learner actor runs it).

- `advantages`: GRPO's group-normalised outcome or PPO's whitened GAE, for the whole batch (GRPO
  groups are whole, and PPO whitens, only there).
- `optimizer_steps`: how an update's rows are cut into optimizer steps (a random permutation per
  epoch, steps of micro_batch_size x grad_accum rows) and each step's per-token loss weights.
- `rank_micro_batches`: how an optimizer step's rows are split over data-parallel ranks and
  micro-batches, the same number of passes on every rank.
- `rl_loss`: one micro-batch's share of an optimizer step's loss: clipped surrogate (PPO,
  Schulman et al. 2017, eq. 7) + kl_coef x KL to the reference (DeepSeekMath eq. 3-4) -
  entropy_coef x entropy (A3C's bonus, Mnih et al. 2016) + value_coef x clipped value loss
  (PPO), each term weighted per token by the step's `algos.loss_weights`.
- `UpdateMetrics` and `batch_metrics`: what an update reports (names in docs/training.md).

Shapes: B rows, T response tokens; a micro-batch has b rows and t <= T columns (its longest row).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from router_r1.infra.config import LearnerConfig
from router_r1.rl import algos
from router_r1.rl.batch import TensorBatch

# The micro-step's loss: (rows (b,), micro-batch, logp (b, t), entropy (b, t) or None, values
# (b, t) or None) -> (loss, float metrics); the learner's SFT and RL steps each give one.
LossFn = Callable[[torch.Tensor, TensorBatch, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"],
                  tuple[torch.Tensor, dict[str, float]]]


def advantages(tb: TensorBatch, old_values: torch.Tensor, lc: LearnerConfig,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(advantages (B, T), returns (B, T) or None) for the whole batch, zero on non-policy
    tokens: GRPO's per-group normalised rewards on every policy token, or (PPO) GAE over the
    last-token reward and `old_values` (B, T), whitened over the batch's policy tokens."""
    mask = tb.loss_mask.float()
    if lc.algorithm == "grpo":
        return algos.grpo_advantages(tb.rewards, tb.group_ids)[:, None] * mask, None
    token_rewards = algos.last_token_rewards(tb.rewards, mask)
    adv, returns = algos.gae_advantages(token_rewards, old_values, mask, lc.gamma, lc.gae_lambda)
    return algos.masked_whiten(adv, mask), returns


def optimizer_steps(mask: torch.Tensor, lc: LearnerConfig, generator: torch.Generator,
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows, weights) of each optimizer step of an update: `ppo_epochs` passes over a random
    permutation of the B rows (drawn from `generator`, the same on every rank), cut into steps
    of micro_batch_size x grad_accum rows; a step without policy tokens is skipped. `weights`
    (B, T) are the step's `algos.loss_weights` on its rows and zero elsewhere: the step's loss
    is sum(weights x per-token loss), exactly however the step is cut into micro-batches.
    mask: (B, T) loss mask, float."""
    B, mini = mask.shape[0], lc.micro_batch_size * lc.grad_accum
    for _ in range(lc.ppo_epochs):
        perm = torch.randperm(B, generator=generator).to(mask.device)
        for start in range(0, B, mini):
            rows = perm[start:start + mini]
            if mask[rows].sum() == 0:
                continue
            weights = torch.zeros_like(mask)
            weights[rows] = algos.loss_weights(mask[rows], lc.loss_agg)
            yield rows, weights


def rank_micro_batches(rows: torch.Tensor, rank: int, world_size: int, micro_batch_size: int,
                       ) -> list[torch.Tensor]:
    """This rank's micro-batches of one optimizer step over `rows` (row indices of the whole
    batch, the same on every rank): every world_size-th row from this rank's, cut into as many
    micro-batches of at most micro_batch_size rows as the largest share needs. Every rank thus
    runs the same number of forward/backward passes (DDP's all-reduce pairs up); a shorter
    share ends in empty ones."""
    mine = rows[rank::world_size]
    n = max(1, math.ceil(math.ceil(len(rows) / world_size) / micro_batch_size))
    return [mine[j * micro_batch_size:(j + 1) * micro_batch_size] for j in range(n)]


@dataclass
class StepTensors:
    """Whole-batch (B, T) tensors that every micro-batch's loss indexes by row: the scores from
    before the first optimizer step (`ref_logp` None without a reference), the advantages and
    returns, the loss mask, and the current optimizer step's loss weights (zero off its rows)."""

    old_logp: torch.Tensor
    ref_logp: torch.Tensor | None
    old_values: torch.Tensor
    adv: torch.Tensor
    returns: torch.Tensor | None
    mask: torch.Tensor
    weights: torch.Tensor | None = None
    behaviour_w: torch.Tensor | None = None  # decoupled-PPO importance weights of stale rows, or None


def rl_loss(rows: torch.Tensor, logp: torch.Tensor, entropy: torch.Tensor, values: torch.Tensor | None,
            st: StepTensors, lc: LearnerConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step's loss (module docstring) and its metrics, the loss
    and the micro-batch's policy-token count (`tokens`) included. rows: (b,) indices into the
    batch; logp, entropy: (b, t); values: (b, t) or None (GRPO)."""
    t = logp.shape[1]
    m, w = st.mask[rows, :t], st.weights[rows, :t]
    bw = st.behaviour_w[rows, :t] if st.behaviour_w is not None else None
    pg, metrics = algos.policy_loss(logp, st.old_logp[rows, :t], st.adv[rows, :t], m, lc.clip_eps, weights=w,
                                    behaviour_w=bw)
    kl, kl_metrics = torch.zeros((), device=logp.device), {}
    if st.ref_logp is not None:
        kl, kl_metrics = algos.kl_penalty(logp, st.ref_logp[rows, :t], m, lc.kl_estimator, weights=w)
    entropy_term = algos.agg_loss(entropy, m, weights=w)
    loss = pg + lc.kl_coef * kl - lc.entropy_coef * entropy_term
    metrics |= kl_metrics | {"actor/entropy": algos.masked_mean(entropy, m).item()}
    if values is not None:
        vf, vf_metrics = algos.value_loss(values, st.old_values[rows, :t], st.returns[rows, :t], m,
                                          clip=lc.vf_clip, weights=w)
        loss = loss + lc.value_coef * vf
        metrics |= vf_metrics
    return loss, metrics | {"learner/loss": loss.item(), "tokens": float(m.sum())}


class UpdateMetrics:
    """Micro-batch metrics accumulated over an update (and, by the caller, summed over ranks):
    the losses are each optimizer step's (its micro-batches' shares add up to it), averaged over
    steps; the others are token-means over every policy token trained on."""

    STEP_LOSSES = ("actor/pg_loss", "learner/loss")
    TOKEN_MEANS = ("actor/clipfrac", "actor/approx_kl", "actor/ratio_mean", "actor/kl", "actor/entropy")
    CRITIC_LOSSES = ("critic/vf_loss",)
    CRITIC_MEANS = ("critic/vf_clipfrac", "critic/values_mean")

    def __init__(self, with_kl: bool, with_critic: bool):
        self.loss_keys = self.STEP_LOSSES + (self.CRITIC_LOSSES if with_critic else ())
        self.mean_keys = tuple(k for k in self.TOKEN_MEANS if k != "actor/kl" or with_kl)
        self.mean_keys += self.CRITIC_MEANS if with_critic else ()
        self.sums: dict[str, float] = dict.fromkeys(self.loss_keys + self.mean_keys + ("tokens",), 0.0)

    def add(self, metrics: dict[str, float]) -> None:
        """Add one micro-batch's `rl_loss` metrics."""
        for k in self.loss_keys:
            self.sums[k] += metrics[k]
        for k in self.mean_keys:
            self.sums[k] += metrics[k] * metrics["tokens"]
        self.sums["tokens"] += metrics["tokens"]

    def result(self, sums: dict[str, float], optimizer_steps: int) -> dict[str, float]:
        """The update's metrics from `sums` (this object's, summed over ranks)."""
        out = {k: sums[k] / max(optimizer_steps, 1) for k in self.loss_keys}
        return out | {k: sums[k] / max(sums["tokens"], 1.0) for k in self.mean_keys}


def batch_metrics(tb: TensorBatch, adv: torch.Tensor, returns: torch.Tensor | None,
                  old_logp: torch.Tensor, sampler_logprobs: bool) -> dict[str, float]:
    """What the batch itself says: staleness, advantages, token counts, scores and (when the
    sampler sent its log-probs) the rollout/learner log-prob distance. adv, returns, old_logp:
    (B, T)."""
    mask = tb.loss_mask.float()
    out = {
        # Episodes behind the newest weights in the batch (0 when all came from one version).
        "learner/staleness": float(tb.policy_version.max() - tb.policy_version.float().mean()),
        "actor/advantages_mean": algos.masked_mean(adv, mask).item(),
        "actor/response_tokens": float(tb.response_mask.sum(1).float().mean()),  # policy + inserted
        "actor/policy_tokens": float(mask.sum(1).mean()),
        "critic/score_mean": float(tb.rewards.mean()),
    }
    if returns is not None:
        out["critic/returns_mean"] = algos.masked_mean(returns, mask).item()
    if sampler_logprobs and mask.sum() > 0:
        # |sampler log-prob - learner log-prob| at the weights that sampled (old_logp is
        # scored before any optimizer step): 0 up to numerics when rollouts and learner agree.
        diff = (tb.sampler_logp - old_logp).abs()[mask > 0]
        out["rollout/logp_diff_mean"] = diff.mean().item()
        out["rollout/logp_diff_max"] = diff.max().item()
    return out
