"""The trajectory batch: the one contract between rollout actors and the learner.

`TrajectoryBatch` is plain Python lists (cheap to pickle through the Ray object store, no
tensors, no Ray). The learner turns it into padded tensors with `to_tensors`. Row i of every
per-episode field describes the same episode.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch

from router_r1.env.episode import Episode, Tokenizer, episode_tokens, tokenize_trace


class BatchError(ValueError):
    """A trajectory batch whose fields disagree (lengths, mask values, empty prompts)."""


def _check_rows(episodes: Sequence, rewards: Sequence, group_ids: Sequence) -> None:
    if not (len(episodes) == len(rewards) == len(group_ids)):
        raise BatchError(f"{len(episodes)} episodes, {len(rewards)} rewards, {len(group_ids)} group ids")


@dataclass
class TrajectoryBatch:
    """Episodes ready for the learner, one row per episode.

    prompt_ids:     the prompt's token ids (what the policy conditioned on; never trained on).
    response_ids:   every token after the prompt, in order: the policy's own text and the inserted
                    <information> blocks. Only these tokens are seen by the loss.
    loss_mask:      same length as response_ids; 1 = the policy generated this token, 0 = it was
                    inserted by the environment (see `router_r1.env.episode.episode_tokens`).
    rewards:        one scalar reward per episode (`router_r1.env.reward`).
    group_ids:      episodes sampled for the same question share an id (GRPO groups).
    policy_version: the weights version that generated the episode (staleness accounting).
    sampler_logprobs: per row, the sampler's log-prob of each response token as it was sampled
                    (0.0 on inserted tokens), same length as response_ids; empty list when the
                    rows were not sampled (warm-start traces). The learner compares them with its
                    own log-probs at the same weights (`rollout/logp_diff_*`).
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    loss_mask: list[list[int]]
    rewards: list[float]
    group_ids: list[int]
    policy_version: list[int]
    sampler_logprobs: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.prompt_ids)
        for f in ("response_ids", "loss_mask", "rewards", "group_ids", "policy_version"):
            if len(getattr(self, f)) != n:
                raise BatchError(f"TrajectoryBatch.{f} has {len(getattr(self, f))} rows, prompt_ids has {n}")
        if self.sampler_logprobs:
            if len(self.sampler_logprobs) != n:
                raise BatchError(f"TrajectoryBatch.sampler_logprobs has {len(self.sampler_logprobs)} rows, "
                                 f"expected 0 or {n}")
            for i, (r, lp) in enumerate(zip(self.response_ids, self.sampler_logprobs)):
                if len(r) != len(lp):
                    raise BatchError(f"row {i}: {len(r)} response ids but {len(lp)} sampler log-probs")
        for i, (p, r, m) in enumerate(zip(self.prompt_ids, self.response_ids, self.loss_mask)):
            if not p:
                raise BatchError(f"row {i}: empty prompt (the first response token needs a context)")
            if len(r) != len(m):
                raise BatchError(f"row {i}: {len(r)} response ids but {len(m)} loss-mask entries")
            if any(x not in (0, 1) for x in m):
                raise BatchError(f"row {i}: loss_mask must hold only 0 and 1")

    def __len__(self) -> int:
        return len(self.prompt_ids)

    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], rewards: Sequence[float], group_ids: Sequence[int],
                      max_response_tokens: int | None = None) -> TrajectoryBatch:
        """Sampled token-mode episodes as a batch: their ids and sampler log-probs exactly as
        sampled and inserted. No tokenizer: nothing is encoded again."""
        _check_rows(episodes, rewards, group_ids)
        toks = [episode_tokens(e, max_response_tokens) for e in episodes]
        return cls._build(episodes, toks, rewards, group_ids, sampled=True)

    @classmethod
    def from_traces(cls, traces: Sequence[Episode], tokenizer: Tokenizer, max_response_tokens: int | None = None,
                    rewards: Sequence[float] | None = None, group_ids: Sequence[int] | None = None) -> TrajectoryBatch:
        """Demonstrations (warm-start traces written as text) encoded segment by segment, so the
        loss mask is exact; they carry no sampler log-probs. Rewards default to 0, each trace its
        own group."""
        rewards = [0.0] * len(traces) if rewards is None else rewards
        group_ids = list(range(len(traces))) if group_ids is None else group_ids
        _check_rows(traces, rewards, group_ids)
        toks = [tokenize_trace(e, tokenizer, max_response_tokens) for e in traces]
        return cls._build(traces, toks, rewards, group_ids, sampled=False)

    @classmethod
    def _build(cls, episodes, toks, rewards, group_ids, sampled: bool) -> TrajectoryBatch:
        return cls(prompt_ids=[t.prompt_ids for t in toks], response_ids=[t.response_ids for t in toks],
                   loss_mask=[t.loss_mask for t in toks], rewards=[float(r) for r in rewards],
                   group_ids=[int(g) for g in group_ids],
                   policy_version=[int(e.policy_version) for e in episodes],
                   sampler_logprobs=[t.logprobs for t in toks] if sampled else [])

    def select(self, rows: Sequence[int]) -> TrajectoryBatch:
        """A batch of the given rows (e.g. one data-parallel shard)."""
        optional = ("sampler_logprobs",)  # an empty list stays empty
        kw = {f.name: [getattr(self, f.name)[i] for i in rows] for f in fields(self) if f.name not in optional}
        kw |= {name: [getattr(self, name)[i] for i in rows] if getattr(self, name) else [] for name in optional}
        return TrajectoryBatch(**kw)

    def to_tensors(self, pad_id: int, device: str | torch.device = "cpu") -> TensorBatch:
        """Right-padded tensors; see `TensorBatch`."""
        B = len(self)
        L = max(len(p) + len(r) for p, r in zip(self.prompt_ids, self.response_ids))
        T = max(1, max(len(r) for r in self.response_ids))
        input_ids = torch.full((B, L), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        response_ids = torch.full((B, T), pad_id, dtype=torch.long)
        response_pos = torch.zeros((B, T), dtype=torch.long)
        response_mask = torch.zeros((B, T), dtype=torch.long)
        loss_mask = torch.zeros((B, T), dtype=torch.long)
        sampler_logp = torch.zeros((B, T), dtype=torch.float32)
        for i, (p, r, m) in enumerate(zip(self.prompt_ids, self.response_ids, self.loss_mask)):
            n = len(p) + len(r)
            input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
            attention_mask[i, :n] = 1
            if r:
                response_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                response_pos[i, :len(r)] = torch.arange(len(p), n)
                response_mask[i, :len(r)] = 1
                loss_mask[i, :len(r)] = torch.tensor(m, dtype=torch.long)
                if self.sampler_logprobs:
                    sampler_logp[i, :len(r)] = torch.tensor(self.sampler_logprobs[i], dtype=torch.float32)
        tb = TensorBatch(input_ids=input_ids, attention_mask=attention_mask, response_ids=response_ids,
                         response_pos=response_pos, response_mask=response_mask, loss_mask=loss_mask,
                         sampler_logp=sampler_logp,
                         rewards=torch.tensor(self.rewards, dtype=torch.float32),
                         group_ids=torch.tensor(self.group_ids, dtype=torch.long),
                         policy_version=torch.tensor(self.policy_version, dtype=torch.long))
        return tb.to(device)


@dataclass
class TensorBatch:
    """A `TrajectoryBatch` as right-padded tensors (B rows, L = longest prompt+response, T =
    longest response).

    input_ids, attention_mask: (B, L): prompt then response, then padding.
    response_ids:  (B, T): the response tokens, right-padded.
    response_pos:  (B, T): where response token t of row b sits in input_ids; the model predicts it
                   from position response_pos - 1 (0 on padding, which the masks hide).
    response_mask: (B, T): 1 on real response tokens (policy and information).
    loss_mask:     (B, T): 1 on policy tokens only: what every loss averages over.
    sampler_logp:  (B, T): the sampler's log-prob of each response token (0 where unknown).
    rewards: (B,) float; group_ids, policy_version: (B,) long.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_ids: torch.Tensor
    response_pos: torch.Tensor
    response_mask: torch.Tensor
    loss_mask: torch.Tensor
    sampler_logp: torch.Tensor
    rewards: torch.Tensor
    group_ids: torch.Tensor
    policy_version: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: str | torch.device) -> TensorBatch:
        return TensorBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, rows: torch.Tensor | Sequence[int]) -> TensorBatch:
        """Rows `rows`, with padding columns trimmed to the longest selected row (micro-batches)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        L = max(1, int(self.attention_mask[rows].sum(dim=1).max()))
        T = max(1, int(self.response_mask[rows].sum(dim=1).max()))
        kw = {}
        for f in fields(self):
            x = getattr(self, f.name)[rows]
            if f.name in ("input_ids", "attention_mask"):
                x = x[:, :L]
            elif x.dim() == 2:
                x = x[:, :T]
            kw[f.name] = x
        return TensorBatch(**kw)
