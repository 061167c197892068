"""Training and validation questions, and the seeded stream that feeds them to the trainer.

Questions come from the simulated world (`data.kind: simulated`), from QA files (`qa`) or from
replay tables (`replay`, router_r1.worlds.replay.world). The
stream reshuffles each epoch from (seed, epoch), so its whole state is two integers, kept in
checkpoints: a resumed run sees exactly the questions an uninterrupted one would.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from router_r1.infra.config import DataConfig
from router_r1.pool.descriptors import PoolSpec
from router_r1.worlds.qa import load_qa

if TYPE_CHECKING:
    from router_r1.worlds.sim import Simulation

Item = dict[str, Any]  # {"id", "question", "golden_answers"}: what rollout workers take
SIM_OPTIONS = {"train_size", "val_size", "two_hop_fraction"}


def _item(id_: str, question: str, golds: list[str]) -> Item:
    return {"id": id_, "question": question, "golden_answers": list(golds)}


def simulation_for(pool: PoolSpec):
    """The simulated world of the pool file (the same world the pool's backend serves)."""
    from router_r1.worlds.sim import Simulation

    return Simulation.from_pool(pool)


def load_questions(data: DataConfig, pool: PoolSpec, seed: int = 0,
                   sim: Simulation | None = None) -> tuple[list[Item], list[Item]]:
    """(train, val) items. Simulated: the world's disjoint train / val splits (of `sim` when the
    caller has already built it); `data.sim` may set train_size (default: the whole split),
    val_size (default 64), two_hop_fraction."""
    if data.kind == "simulated":
        bad = sorted(set(data.sim) - SIM_OPTIONS)
        if bad:
            raise ValueError(f"unknown data.sim options {bad}; known: {sorted(SIM_OPTIONS)}")
        world = (sim or simulation_for(pool)).world
        frac = data.sim.get("two_hop_fraction")
        n_train = data.sim.get("train_size", data.limit)
        train = world.questions("train", n_train, frac, seed=seed) if n_train else world.questions("train", seed=seed)
        val = world.questions("val", int(data.sim.get("val_size", 64)), frac, seed=seed)
        return ([_item(q.id, q.text, q.golden_answers) for q in train],
                [_item(q.id, q.text, q.golden_answers) for q in val])
    if data.kind == "qa":
        if not data.train:
            raise ValueError("data.kind 'qa' needs data.train files")
        train = [_item(f"{ex.source}:{ex.id}", ex.question, ex.golden_answers)
                 for path in data.train for ex in load_qa(path, data.limit)]
        if data.eval:
            val = [_item(f"{ex.source}:{ex.id}", ex.question, ex.golden_answers)
                   for path in data.eval for ex in load_qa(path, data.limit)]
        else:  # hold out a seeded fraction of the training rows
            rng = random.Random(seed)
            order = list(range(len(train)))
            rng.shuffle(order)
            n_val = max(1, int(len(train) * data.val_fraction))
            held = set(order[:n_val])
            val = [train[i] for i in sorted(held)]
            train = [x for i, x in enumerate(train) if i not in held]
        return train, val
    if data.kind == "replay":  # real recorded answers (router_r1.worlds.replay.world)
        from router_r1.worlds.replay.world import ReplayWorld

        w = ReplayWorld.load(data.train, pool, data.val_fraction, seed, data.limit, data.val_size)
        return w.items(w.train), w.items(w.val)
    raise ValueError(f"data.kind {data.kind!r} is not supported for training; use 'simulated', 'qa' or 'replay'")


class QuestionStream:
    """Endless batches over `items`, reshuffled each epoch from (seed, epoch)."""

    def __init__(self, items: list[Item], seed: int = 0):
        if not items:
            raise ValueError("no training questions")
        self.items, self.seed = items, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def next_batch(self, n: int) -> list[Item]:
        out = []
        while len(out) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self.items[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "n": len(self.items)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("n") not in (None, len(self.items)):
            raise ValueError(f"checkpoint was taken over {state['n']} training questions, "
                             f"this run has {len(self.items)}; the data changed")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._shuffle()
