"""A custom world for the planted-key test of a whole training run (tests/test_train_secrets.py):
a few arithmetic questions, and warm-start traces that all route to the candidate `Live`, so
that after a short warm start the tiny router calls it in almost every rollout."""
from __future__ import annotations

from router_r1.env.episode import Episode, Segment
from router_r1.env.protocol import information_block
from router_r1.worlds.base import Item, World, item


class SecretProbeWorld(World):
    def __init__(self, n_train: int = 8, n_val: int = 2):
        self._items = {"train": [item(f"t{i}", f"What is {i} + {i}?", [str(2 * i)]) for i in range(n_train)],
                       "val": [item(f"v{i}", f"What is {i} + 1?", [str(i + 1)]) for i in range(n_val)]}

    def questions(self, split: str) -> list[Item]:
        return self._items[split]

    def warmstart_traces(self, pool, tokenizer) -> list[Episode]:
        out = []
        for it in self._items["train"]:
            gold = it["golden_answers"][0]
            out.append(Episode(
                uid=it["id"], question=it["question"], golden_answers=[gold], prompt="", done=True,
                segments=[Segment(f"<think> ask Live </think>\n<search> Live: {it['question']} </search>",
                                  "policy"),
                          Segment(information_block(f"Live answers: {gold}"), "information"),
                          Segment(f"<think> done </think>\n<answer> {gold} </answer>", "policy")]))
        return out
