"""A user's routing data set as one class and nothing on disk (issue 27: one World for every
command): three models' recorded answers to arithmetic questions, with graded scores, recorded
costs for two models and recorded token counts for the third (priced from its descriptor).
`write_pool` writes the descriptors whose models are answered by the `world` backend."""
from __future__ import annotations

from pathlib import Path

from router_r1.worlds.recorded import RecordedWorld

# model id -> (display name, aliases, USD per 1M tokens, params_b)
MODELS = {"big-1": ("Big", 5.0, 70), "mid-1": ("Mid", 1.0, 13), "small-1": ("Small", 0.2, 7)}


class TinyRecordedWorld(RecordedWorld):
    """`n` questions per task; `sum` questions: Big and Mid right, Small right on even ones;
    `triple` questions: Big right, Mid half right (graded 0.5), Small wrong."""

    def __init__(self, n: int = 12):
        self.n = n

    def rows(self):
        for i in range(self.n):
            for task, q, a in (("sum", f"What is {i} + {i}?", 2 * i), ("triple", f"What is {i} times 3?", 3 * i)):
                scores = {"big-1": 1.0, "mid-1": 1.0 if task == "sum" else 0.5,
                          "small-1": float(task == "sum" and i % 2 == 0)}
                for model, score in scores.items():
                    row = {"sample_id": f"{task}{i}", "eval_name": task, "prompt": q, "model": model,
                           "response": str(a) if score == 1.0 else f"about {a + (score == 0)}",
                           "correct": score}
                    if model == "small-1":  # no recorded cost: priced from its tokens
                        row |= {"prompt_tokens": 20, "completion_tokens": 5}
                    else:
                        row["cost"] = 0.01 if model == "big-1" else 0.001
                    yield row


def write_pool(path: Path) -> Path:
    lines = ["name: tiny-recorded", "models:"]
    for mid, (name, price, size) in MODELS.items():
        lines += [f"  - name: {name}", f"    aliases: [{mid}]", f"    price: {price}", f"    params_b: {size}",
                  f"    description: {name.lower()} general model", "    backend: {kind: world}"]
    path.write_text("\n".join(lines) + "\n")
    return path
