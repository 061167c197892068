"""Learning-rate schedules as multipliers of the base LR (Ray-free; torch's LambdaLR applies them).

A schedule is a pure function of the step count, so an optimizer resumed at step k gets exactly the
LR the uninterrupted run had there (the SFT warm start sets its LR from it each step; the RL
optimizer's LambdaLR keeps the step in its checkpointed state). Warmup then decay is the usual
recipe for fine-tuning transformers (linear warmup as in Vaswani et al. 2017, cosine decay as in
Loshchilov & Hutter 2017, "SGDR", without restarts).
"""
from __future__ import annotations

import math
from typing import Callable


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup to 1 (step k of the warmup gives (k+1)/(warmup+1),
    never 0), then constant, linear or cosine decay to 0 at `total_steps`."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f
