"""SlotRouterModule: an RLlib RLModule that scores every model slot with one shared network.

RLlib's default MLP reads the flat observation, so each of the 12 slots has weights of its own and
a slot's model is recognised by where it sits; with shuffled slots it must learn the same rule
twelve times, and a model it never saw is just an unfamiliar input in one of them. Here one small
network scores each slot from the question (and the last reply) together with that slot's
descriptor (price, size, latency, hashed description terms: `features.pool_features`), so the
policy is the same function of every slot (permutation-equivariant: moving a model moves its
logit) and an unseen model is scored by what its descriptor says, like any other. The question and
the slot meet in an elementwise product of their embeddings, so "which domain does the question
need" and "which domains does the descriptor name as strong" combine in one layer. The answer
action and the value read the question with a masked mean of the slot embeddings.

The observation layout is `features.FeatureSpec`'s (`model_config["features"]`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from router_r1.rl_router.features import FeatureSpec

INVALID_LOGIT = -1.0e4  # an empty slot: never sampled, and finite (no NaN in PPO's ratios or KL)


def split_observation(obs: torch.Tensor, spec: FeatureSpec) -> dict[str, torch.Tensor]:
    """The flat observation (FeatureSpec.obs_dim) cut into its parts; slots as [B, M, slot_dim]."""
    m, i = spec.max_models, 0
    parts: dict[str, torch.Tensor] = {}
    for name, width in (("question", spec.question_dim), ("reply", spec.reply_dim), ("reply_len", 1),
                        ("called", m), ("step", 1), ("slots", m * spec.slot_dim), ("valid", m)):
        parts[name] = obs[..., i:i + width]
        i += width
    if i != obs.shape[-1]:
        raise ValueError(f"observation has {obs.shape[-1]} features, the spec says {i}")
    parts["slots"] = parts["slots"].reshape(*obs.shape[:-1], m, spec.slot_dim)
    return parts


class SlotRouterModule(TorchRLModule, ValueFunctionAPI):
    """See module docstring. model_config: {"features": FeatureSpec dict, "hidden": width}."""

    def setup(self) -> None:
        self.spec = FeatureSpec(**self.model_config["features"])
        h = int(self.model_config.get("hidden", 64))
        s = self.spec
        self.context = nn.Sequential(nn.Linear(s.question_dim + s.reply_dim + 2, h), nn.ReLU())
        self.slot_embed = nn.Sequential(nn.Linear(s.slot_dim + 1, h), nn.ReLU())
        self.slot_score = nn.Sequential(nn.Linear(3 * h, h), nn.ReLU(), nn.Linear(h, 1))
        self.answer = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 1))
        self.values = nn.Sequential(nn.Linear(2 * h, h), nn.ReLU(), nn.Linear(h, 1))

    def _embed(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = split_observation(obs, self.spec)
        ctx = self.context(torch.cat([p["question"], p["reply"], p["reply_len"], p["step"]], -1))
        slots = self.slot_embed(torch.cat([p["slots"], p["called"].unsqueeze(-1)], -1))  # [B, M, h]
        valid = p["valid"]
        pooled = (slots * valid.unsqueeze(-1)).sum(-2) / valid.sum(-1, keepdim=True).clamp(min=1.0)
        c = ctx.unsqueeze(-2).expand_as(slots)
        scores = self.slot_score(torch.cat([c, slots, c * slots], -1)).squeeze(-1)
        scores = torch.where(valid > 0, scores, torch.full_like(scores, INVALID_LOGIT))
        summary = torch.cat([ctx, pooled], -1)
        return scores, summary, valid

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        scores, summary, _ = self._embed(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: torch.cat([scores, self.answer(summary)], -1)}

    def _forward_train(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        scores, summary, _ = self._embed(batch[Columns.OBS])
        return {Columns.ACTION_DIST_INPUTS: torch.cat([scores, self.answer(summary)], -1),
                Columns.EMBEDDINGS: summary}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        if embeddings is None:
            _, embeddings, _ = self._embed(batch[Columns.OBS])
        return self.values(embeddings).squeeze(-1)
