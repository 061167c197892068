"""The simulator as a training world (`data.kind: simulated`, the demo's).

Questions are the knowledge base's disjoint train / val splits (`knowledge.SimWorld`; validation
questions are about entities training never shows); the outcome is EM/F1 against the simulator's
truth (the World default); warm-start traces come from `traces.py`, the tokenizer corpus covers
every name and question, and the report compares the router with the oracle, the best single
model, random routing and the descriptor-only expert (`oracle.expected_rewards`). `data.sim`
sets train_size (default: the whole split, or `data.limit`), val_size and two_hop_fraction.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from router_r1.worlds.base import Item, Split, World, item
from router_r1.worlds.sim.models import Simulation
from router_r1.worlds.sim.oracle import expected_rewards
from router_r1.worlds.sim.traces import make_traces, tokenizer_corpus

if TYPE_CHECKING:
    from router_r1.env.episode import Episode, Tokenizer
    from router_r1.env.reward import RewardConfig
    from router_r1.infra.config import RunConfig
    from router_r1.pool.descriptors import PoolSpec


class SimulatedWorld(World):
    """The simulated world of the pool file: the same world the pool's `simulated` backend serves."""

    def __init__(self, sim: Simulation, train: list[Item], val: list[Item], cfg: RunConfig):
        self.sim, self._splits, self.cfg = sim, {"train": train, "val": val}, cfg

    @classmethod
    def from_config(cls, cfg: RunConfig, pool: PoolSpec) -> SimulatedWorld:
        sim = Simulation.from_pool(pool)
        opts, seed = cfg.data.sim, cfg.seed
        frac = opts.two_hop_fraction
        n_train = opts.train_size if opts.train_size is not None else cfg.data.limit
        train = (sim.world.questions("train", n_train, frac, seed=seed) if n_train
                 else sim.world.questions("train", seed=seed))
        val = sim.world.questions("val", opts.val_size, frac, seed=seed)
        return cls(sim, [item(q.id, q.text, q.golden_answers) for q in train],
                   [item(q.id, q.text, q.golden_answers) for q in val], cfg)

    def questions(self, split: Split) -> list[Item]:
        return self._splits[split]

    def tokenizer_corpus(self, pool: PoolSpec, compact: bool) -> list[str]:
        return tokenizer_corpus(self.sim, n_traces=max(256, self.cfg.warmstart.num_traces),
                                seed=self.cfg.seed, compact=compact)

    def warmstart_traces(self, pool: PoolSpec, tokenizer: Tokenizer) -> list[Episode]:
        """Traces over fresh training questions (seed + 1), rendered as text; the rollout worker
        encodes them with the rollouts' own prompt ids."""
        cfg, ws = self.cfg, self.cfg.warmstart
        qs = self.sim.world.questions("train", ws.num_traces, seed=cfg.seed + 1)
        return make_traces(self.sim, qs, mix=ws.trace_mix, seed=cfg.seed, reward_cfg=cfg.reward,
                           compact=cfg.policy.compact_prompt, name_swap=ws.name_swap)

    def reference(self, items: Sequence[Item], reward: RewardConfig) -> dict[str, Any]:
        return expected_rewards(self.sim, [self.sim.world.question(it["id"]) for it in items], reward)
