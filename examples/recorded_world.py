"""A routing data set of your own as one World class: recorded answers, nothing converted.

The data (examples/recorded_answers.jsonl, made up for this example): one JSON object per line,
one line per question, each model's recorded answer beside it:

    {"id": "m1", "task": "math", "question": "What is 61 * 94?",
     "answers": {"small-model": {"text": "5724", "score": 0.0, "prompt_tokens": 18, "completion_tokens": 3},
                 "large-model": {"text": "5734", "score": 1.0, "cost": 0.0021}}}

`score` is a graded score in [0, 1]; `cost` is the recorded USD, and where it is missing the call
is priced from the model's descriptor with the recorded token counts. `RecordedWorld`
(router_r1/worlds/recorded.py) does the rest: the train/validation split, the outcome (the score
of the reply the router's answer adopts), warm-start traces, and the pool's `world` backend, which
answers the router's calls from these answers (examples/pool_recorded.yaml). One config names the
class (examples/recorded_world.yaml); from the repository root:

    router-r1 evaluate --config examples/recorded_world.yaml --policy baselines,per-task --split val
    router-r1 train-rllib --config examples/recorded_world.yaml --iterations 5 --out outputs/rllib_recorded
    router-r1 train --config examples/recorded_world.yaml
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from router_r1.worlds.recorded import RecordedWorld


class AnswersFileWorld(RecordedWorld):
    def __init__(self, path: str):
        self.path = path  # relative paths: to the directory the command runs in

    def rows(self) -> Iterator[dict[str, Any]]:
        """One long-table row per (question, model)."""
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                q = json.loads(line)
                for model, a in q["answers"].items():
                    yield {"sample_id": q["id"], "eval_name": q.get("task", "question"), "prompt": q["question"],
                           "model": model, "response": a.get("text"), "correct": a.get("score"),
                           "cost": a.get("cost"), "prompt_tokens": a.get("prompt_tokens"),
                           "completion_tokens": a.get("completion_tokens")}
