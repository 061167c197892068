"""The rule-based reward of Router-R1 (Zhang et al., 2025, eq. 2-5).

    bad format                 -> format_penalty (default -1), whatever else happened
    well-formed, outcome == 0  -> 0
    well-formed, outcome  > 0  -> (1 - alpha) * outcome + alpha * cost_reward

`outcome` is EM (or F1 by config); `cost_reward` in [0, 1] is higher for cheaper episodes and
comes from a cost normaliser. The paper's normaliser is stateful (a sliding window of recent
costs), so its state is part of a training checkpoint. "Bad format" is the protocol validator's
verdict (router_r1.env.protocol: the reference's `format_reward` rules, plus the stricter checks
`format_rules` turns on).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from router_r1.env.protocol import FormatRules


class RewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.0, ge=0.0, le=1.0)  # cost coefficient: 0 = quality only
    metric: Literal["em", "f1"] = "em"
    format_penalty: float = -1.0
    normalizer: Literal["window", "reference"] = "window"
    window: int = Field(default=1000, ge=1)  # window normaliser: last N episode costs
    low_pct: float = 5.0
    high_pct: float = 95.0
    reference_cost_usd: float = Field(default=1e-4, gt=0)  # reference normaliser's scale
    # Format checks stricter than the paper's reference implementation; all off by default.
    format_rules: FormatRules = Field(default_factory=FormatRules)


class CostNormalizer(Protocol):
    def update(self, costs: list[float]) -> None: ...
    def score(self, cost: float) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class WindowCostNormalizer:
    """The paper's normaliser: sqrt of raw cost, min-max scaled between the low and high
    percentiles of a sliding window of the last `window` costs, clipped to [0, 1], then 1 - x.
    """

    def __init__(self, window: int = 1000, low_pct: float = 5.0, high_pct: float = 95.0):
        self.window, self.low_pct, self.high_pct = window, low_pct, high_pct
        self._costs: deque[float] = deque(maxlen=window)

    def update(self, costs: list[float]) -> None:
        self._costs.extend(math.sqrt(max(c, 0.0)) for c in costs)

    def score(self, cost: float) -> float:
        if not self._costs:
            return 1.0 if cost <= 0 else 0.5  # nothing seen yet: neutral for paid calls
        arr = np.fromiter(self._costs, dtype=float)
        lo, hi = np.percentile(arr, [self.low_pct, self.high_pct])
        x = math.sqrt(max(cost, 0.0))
        if hi - lo < 1e-12:
            scaled = 0.0 if x <= lo else 1.0
        else:
            scaled = min(max((x - lo) / (hi - lo), 0.0), 1.0)
        return 1.0 - scaled

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "window", "window": self.window, "low_pct": self.low_pct,
                "high_pct": self.high_pct, "costs": list(self._costs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "window":
            raise ValueError(f"not a window normaliser state: kind={state.get('kind')!r}")
        self.window = int(state["window"])
        self.low_pct, self.high_pct = float(state["low_pct"]), float(state["high_pct"])
        self._costs = deque(state["costs"], maxlen=self.window)

    def __len__(self) -> int:
        return len(self._costs)


class ReferenceCostNormalizer:
    """Stateless: cost_reward = 1 - min(1, cost / reference). Same input, same score, always."""

    def __init__(self, reference_cost_usd: float):
        if reference_cost_usd <= 0:
            raise ValueError("reference_cost_usd must be > 0")
        self.reference = reference_cost_usd

    def update(self, costs: list[float]) -> None:
        pass

    def score(self, cost: float) -> float:
        return 1.0 - min(1.0, max(cost, 0.0) / self.reference)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "reference", "reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference = float(state["reference"])


def make_normalizer(cfg: RewardConfig) -> CostNormalizer:
    if cfg.normalizer == "window":
        return WindowCostNormalizer(cfg.window, cfg.low_pct, cfg.high_pct)
    return ReferenceCostNormalizer(cfg.reference_cost_usd)


@dataclass(frozen=True)
class RewardBreakdown:
    reward: float
    format_ok: bool
    outcome: float  # EM or F1, as configured
    cost_usd: float
    cost_reward: float


def compute_reward(format_ok: bool, outcome: float, cost_usd: float, cost_reward: float,
                   cfg: RewardConfig) -> RewardBreakdown:
    """One episode's reward from its parts (see module docstring)."""
    if not format_ok:
        r = cfg.format_penalty
    elif outcome <= 0:
        r = 0.0
    else:
        r = (1 - cfg.alpha) * outcome + cfg.alpha * cost_reward
    return RewardBreakdown(r, format_ok, outcome, cost_usd, cost_reward)


def score_batch(format_ok: list[bool], outcomes: list[float], costs: list[float],
                normalizer: CostNormalizer, cfg: RewardConfig) -> list[RewardBreakdown]:
    """Rewards for a batch. The window is updated with the batch's costs first, so each batch is
    scored against a window that includes it (as in the paper's implementation)."""
    normalizer.update(costs)
    return [compute_reward(f, o, c, normalizer.score(c), cfg)
            for f, o, c in zip(format_ok, outcomes, costs, strict=True)]
