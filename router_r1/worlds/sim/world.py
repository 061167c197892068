"""The simulator as a training world (`data.kind: simulated`, the demo's).

Questions are the knowledge base's disjoint train / val splits (`knowledge.KnowledgeBase`); how
validation is held out is `data.sim.split` (over the pool file's): "entity" (validation questions
are about entities training never shows) or "question" (validation questions are not training
questions, over subjects training names; the entity-held-out test split is then played as well,
`extra_evals`, the harder test). The outcome is EM/F1 against the simulator's truth (the World
default); warm-start traces come from `traces.py`, the tokenizer corpus covers every name and
question, and the report compares the router with the oracle, the best single model, random
routing and the descriptor-only expert (`oracle.expected_rewards`), overall and per question type
(`oracle.by_question_type`: single-hop, two-hop, follow-up). `data.sim` sets train_size (default:
the whole split, or `data.limit`), val_size, two_hop_fraction, split, heldout_size and
conversation_share: the share of each split's questions (and of the warm-start traces) replaced by
follow-ups, which carry their earlier turn as the item's history (knowledge.KnowledgeBase.follow_up).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from router_r1.worlds.base import Item, Split, World, check_trace_mix, item
from router_r1.worlds.sim.knowledge import SimQuestion
from router_r1.worlds.sim.models import Simulation
from router_r1.worlds.sim.oracle import by_question_type, expected_rewards, question_type
from router_r1.worlds.sim.synthetic import synthetic_traces
from router_r1.worlds.sim.traces import TRACE_POLICIES, make_traces, tokenizer_corpus

if TYPE_CHECKING:
    from router_r1.env.episode import Episode, Tokenizer
    from router_r1.env.prompt import PromptLayout
    from router_r1.env.reward import RewardConfig
    from router_r1.infra.config import RunConfig
    from router_r1.pool.descriptors import PoolSpec


def sim_item(q: SimQuestion) -> Item:
    """A simulator question as a rollout item, with its history when it is a follow-up."""
    return item(q.id, q.text, q.golden_answers, q.history)


def with_follow_ups(sim: Simulation, qs: list[SimQuestion], split: str, share: float, seed: int,
                    shuffle: bool = False) -> list[SimQuestion]:
    """`qs` with its last `share` replaced by as many follow-ups of `split` (seeded by `seed`);
    `shuffle`: then mixed in a seeded order (warm-start traces are read in order). `share` 0: `qs`."""
    k = round(share * len(qs))
    if not k:
        return qs
    out = qs[:len(qs) - k] + sim.world.follow_ups(split, k, seed=seed)
    if shuffle:
        random.Random(f"{seed}-follow-up-order").shuffle(out)
    return out


class SimulatedWorld(World):
    """The simulated world of the pool file: the same world the pool's `simulated` backend serves."""

    def __init__(self, sim: Simulation, train: list[Item], val: list[Item], cfg: RunConfig,
                 heldout: list[Item] | None = None):
        self.sim, self._splits, self.cfg = sim, {"train": train, "val": val}, cfg
        self.heldout = heldout or []

    @classmethod
    def from_config(cls, cfg: RunConfig, pool: PoolSpec) -> SimulatedWorld:
        # `split_seed` (data.split_seed, else the run's seed) draws the train / val / test questions,
        # so a run repeated under another seed can keep the same ones. The split chooses which
        # questions are train / val / test, never the knowledge base.
        check_trace_mix(cfg.warmstart.trace_mix, TRACE_POLICIES, "simulated")
        opts, seed = cfg.data.sim, cfg.split_seed
        sim = Simulation.from_pool(pool, **({"split": opts.split} if opts.split else {}))
        frac = opts.two_hop_fraction
        n_train = opts.train_size if opts.train_size is not None else cfg.data.limit
        train = (sim.world.questions("train", n_train, frac, seed=seed) if n_train
                 else sim.world.questions("train", seed=seed))
        val = sim.world.questions("val", opts.val_size, frac, seed=seed)
        heldout = (sim.world.questions("test", opts.heldout_size, frac, seed=seed)
                   if sim.world.config.split == "question" and opts.heldout_size else [])

        def items(qs, split):
            return [sim_item(q) for q in with_follow_ups(sim, qs, split, opts.conversation_share, seed)]

        return cls(sim, items(train, "train"), items(val, "val"), cfg, items(heldout, "test"))

    def questions(self, split: Split) -> list[Item]:
        return self._splits[split]

    def held_out(self) -> str:
        if self.sim.world.config.split == "question":
            return ("questions: no validation question is a training question, and every subject it names is named "
                    "in training; held out entities: test questions about subjects no training question asks about")
        return "entities: no validation question is about an entity a training question is about"

    def extra_evals(self) -> dict[str, list[Item]]:
        """Under the question split: the test split's questions about held-out entities (subjects
        no training question asks about), the harder test beside validation."""
        return {"held_out_entities": self.heldout} if self.heldout else {}

    def tokenizer_corpus(self, pool: PoolSpec, layout: PromptLayout) -> list[str]:
        """Every name and question, and prompts + traces over the training pool; with
        `warmstart.synthetic_pools`, prompts + traces over synthetic pools too (their names'
        parts), never a name of the pool file outside the training view."""
        n = max(256, self.cfg.warmstart.num_traces)
        texts = tokenizer_corpus(self.sim, n_traces=n, seed=self.cfg.seed, layout=layout)
        share = self.cfg.data.sim.conversation_share
        if share:  # follow-ups' prompts (their history block) and traces
            fus = self.sim.world.follow_ups("train", max(64, round(share * n)), seed=self.cfg.seed)
            texts += [ep.prompt + ep.response for ep in make_traces(self.sim, fus, seed=self.cfg.seed, layout=layout)]
        share = self.cfg.warmstart.synthetic_pools
        if share:
            qs = self.sim.world.questions("train", max(64, round(share * n)), seed=self.cfg.seed)
            texts += [ep.prompt + ep.response for ep in synthetic_traces(
                self.sim, qs, seed=self.cfg.seed, reserved=self.reserved_names(), layout=layout)]
        return texts

    def warmstart_traces(self, pool: PoolSpec, tokenizer: Tokenizer) -> list[Episode]:
        """Traces over fresh training questions (seed + 1), rendered as text; the rollout worker
        encodes them with the rollouts' own prompt ids. A `warmstart.synthetic_pools` share of
        them is played over random synthetic pools (each trace carries its pool), shuffled in."""
        cfg, ws = self.cfg, self.cfg.warmstart
        qs = self.sim.world.questions("train", ws.num_traces, seed=cfg.seed + 1)
        n_synth = round(ws.synthetic_pools * len(qs))
        # Follow-ups replace a conversation_share of the single questions, never the synthetic-pool ones.
        plain = with_follow_ups(self.sim, qs[n_synth:], "train", cfg.data.sim.conversation_share, cfg.seed + 1,
                                shuffle=True)
        traces = make_traces(self.sim, plain, mix=ws.trace_mix, seed=cfg.seed, reward_cfg=cfg.reward,
                             layout=cfg.policy.prompt_layout, subject_swap=ws.subject_swap,
                             swap_names=ws.swap_names)
        if n_synth:
            traces += synthetic_traces(self.sim, qs[:n_synth], seed=cfg.seed + 1, reserved=self.reserved_names(),
                                       layout=cfg.policy.prompt_layout, subject_swap=ws.subject_swap,
                                       swap_names=ws.swap_names)
            random.Random(f"{cfg.seed}-trace-order").shuffle(traces)
        return traces

    def follow_up_items(self, split: str, n: int | None = None) -> list[Item]:
        """`n` follow-ups of `split` as items with their history (the conversation measurement,
        benchmarks/bench_conversation.py, plays each with and without it)."""
        return [sim_item(q) for q in self.sim.world.follow_ups(split, n, seed=self.cfg.split_seed)]

    def reserved_names(self) -> list[str]:
        """Every name and alias of the pool file, unseen models included: synthetic pools never
        use them (a held-out model must not be written in training under its name)."""
        return [k for m in self.cfg.load_pool().models for k in (m.name, *m.aliases)]

    def reference(self, items: Sequence[Item], reward: RewardConfig) -> dict[str, Any]:
        return expected_rewards(self.sim, [self.sim.world.question(it["id"]) for it in items], reward)

    def by_type(self, items: Sequence[Item], rows: Sequence[dict[str, Any]],
                reward: RewardConfig) -> dict[str, Any]:
        """Per question type (single-hop, two-hop): the router's greedy rows (id, em, reward,
        cost_usd, calls) beside every one-call policy, the expert and the oracle."""
        out = by_question_type(self.sim, [self.sim.world.question(it["id"]) for it in items], reward)
        for kind, table in out.items():
            mine = [r for r in rows if question_type(self.sim.world.question(r["id"])) == kind]
            table["router"] = {k: (sum(r[k] for r in mine) / len(mine) if mine else None)
                               for k in ("em", "reward", "cost_usd", "calls")}
        return out
