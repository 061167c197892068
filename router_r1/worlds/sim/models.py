"""Simulated candidate models, and `Simulation`: one world plus the pool's simulated models.

Whether model m knows fact f is a fixed, seeded property of (world seed, m, f), drawn once with
probability skill[domain of f]. So a model answers the same sub-question the same way every time
(as a real model at temperature 0 would), its answers are cacheable, and the oracle, which knows
every model's knowledge, is well defined. A model that does not know states a plausible wrong
answer of the right kind, sometimes hedged; a query it cannot understand gets "I don't know."
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from router_r1.pool.cost import call_cost
from router_r1.pool.descriptors import ModelDescriptor, PoolSpec
from router_r1.worlds.sim.knowledge import Entity, Interpretation, SimConfig, KnowledgeBase, unit
from router_r1.worlds.sim.language import FILLERS, HEDGE, IDK, RELATIONS, count_tokens

BACKEND_ONLY_OPTIONS = ("sleep", "latency_scale")


class SimModelSpec(BaseModel):
    """A simulated model's behaviour, read from its descriptor's `backend.options`."""

    model_config = ConfigDict(extra="forbid")

    skill: dict[str, float] = Field(default_factory=dict)  # domain -> P(knows a fact)
    default_skill: float = Field(default=0.3, ge=0.0, le=1.0)  # domains missing from `skill`
    hop_skill: float = Field(default=0.3, ge=0.0, le=1.0)  # P(answers a two-hop question in one
    #   call), given that it knows both facts
    hedge: float = Field(default=0.3, ge=0.0, le=1.0)  # P(a wrong answer comes hedged)
    verbosity: int = Field(default=0, ge=0, le=len(FILLERS))  # filler sentences after the answer

    def p_know(self, domain: str) -> float:
        return self.skill.get(domain, self.default_skill)


@dataclass(frozen=True)
class SimReply:
    """One simulated answer. `stated` is the entity the reply names as its answer (None for
    "I don't know."); `correct` says whether it is the true answer (None if not understood)."""

    text: str
    stated: Entity | None
    correct: bool | None
    hedged: bool
    interpretation: Interpretation | None


class SimModel:
    def __init__(self, name: str, spec: SimModelSpec, world: KnowledgeBase):
        self.name, self.spec, self.world = name, spec, world
        self._seed = world.config.seed

    def knows(self, relation: str, subject: Entity) -> bool:
        p = self.spec.p_know(RELATIONS[relation].domain)
        return unit(self._seed, self.name, "knows", relation, subject.id) < p

    def composes(self, relations: tuple[str, ...], subject: Entity) -> bool:
        """Knows the answer to the whole question: every fact, plus the composition for two."""
        e, ok = subject, True
        for r in relations:
            ok = ok and self.knows(r, e)
            e = self.world.lookup(r, e)
            if e is None:
                return False
        if len(relations) > 1:
            ok = ok and unit(self._seed, self.name, "hop", relations, subject.id) < self.spec.hop_skill
        return ok

    def wrong_answer(self, relations: tuple[str, ...], subject: Entity, truth: Entity) -> Entity:
        """A fixed, plausible wrong answer: same kind as the truth (for a capital, a city of the
        same country), never the truth itself."""
        kind = truth.kind
        cands = [e for e in self.world.by_kind(kind) if e.id != truth.id]
        if relations == ("capital_of",):
            same = [c for c in cands if self.world.lookup("country_of", c) == subject]
            cands = same or cands
        return cands[int(unit(self._seed, self.name, "wrong", relations, subject.id) * len(cands))]

    def reply(self, query: str) -> SimReply:
        it = self.world.interpret(query)
        truth = self.world.resolve(it.subject, it.relations) if it else None
        if it is None or truth is None:
            return SimReply(IDK, None, None, False, it)
        if self.composes(it.relations, it.subject):
            stated, hedged = truth, False
        else:
            stated = self.wrong_answer(it.relations, it.subject, truth)
            hedged = unit(self._seed, self.name, "hedge", it.relations, it.subject.id) < self.spec.hedge
        sentence = self._statement(it, stated.name)
        if hedged:
            sentence = f"{HEDGE} {sentence}"
        text = " ".join((sentence, *FILLERS[:self.spec.verbosity]))
        return SimReply(text, stated, stated.id == truth.id, hedged, it)

    def _statement(self, it: Interpretation, answer: str) -> str:
        if len(it.relations) == 1:
            return RELATIONS[it.relations[0]].state(it.subject.name, answer)
        first, second = it.relations
        return RELATIONS[second].state(RELATIONS[first].noun_phrase(it.subject.name), answer)


@dataclass(frozen=True)
class SimCall:
    """A priced simulated call: the reply plus what the backend would bill for it."""

    model: str
    query: str
    reply: SimReply
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class Simulation:
    """The world plus every simulated model of a pool (those with `backend.kind: simulated`)."""

    def __init__(self, pool: PoolSpec, world: KnowledgeBase):
        self.pool, self.world = pool, world
        self.models: dict[str, SimModel] = {
            m.name: SimModel(m.name, SimModelSpec.model_validate(m.backend.options), world)
            for m in pool.models if m.backend.kind == "simulated"}
        if not self.models:
            raise ValueError(f"pool {pool.name!r} has no model with backend kind 'simulated'")

    @classmethod
    def from_pool(cls, pool: PoolSpec, **world_options: Any) -> "Simulation":
        """World options come from the pool file's `backends: {simulated: {...}}`, then overrides."""
        opts = {**pool.backends.get("simulated", {}), **world_options}
        for key in BACKEND_ONLY_OPTIONS:  # how the backend serves, not what the world is
            opts.pop(key, None)
        cfg = SimConfig.model_validate(opts)
        return cls(pool, KnowledgeBase.build(cfg))

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def descriptor(self, name: str) -> ModelDescriptor:
        return self.pool[name]

    def model(self, name: str) -> SimModel:
        d = self.pool.resolve(name)
        if d is None or d.name not in self.models:
            raise KeyError(f"{name!r} is not a simulated model of pool {self.pool.name!r}")
        return self.models[d.name]

    def call(self, name: str, query: str) -> SimCall:
        """Ask model `name` the bare query; tokens and cost as the backend bills them for a
        single user message holding `query`."""
        m = self.model(name)
        r = m.reply(query)
        pt, ct = count_tokens(query), count_tokens(r.text)
        return SimCall(m.name, query, r, pt, ct, call_cost(self.pool[m.name], pt, ct))
