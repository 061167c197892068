"""What `router-r1 unseen` (experiments/unseen.py) measures, on the simulator.

Where a model gets called, per domain: a router trained without a model and handed it in the
descriptor file should call it where its description says it is strong. Each routed call asks one
(sub-)question; the simulator's own query reader (`knowledge.call_domain`) says which relation it
asks, hence its domain. A whole two-hop question asked in one call spans two domains and is
counted apart, as is a query the simulator does not understand. Counted for the trained router
and for the descriptor-only expert on the same questions (`domain_shares`, `expert_routes`).

Whether a router reads descriptors at all: its first call on questions each over a fresh synthetic
pool (`choice_cases`), scored against the descriptor-only expert and a uniform pick among the lines
(`choice_rates`).
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from router_r1.pool.descriptors import PoolSpec
from router_r1.worlds.sim.knowledge import SimQuestion, KnowledgeBase, call_domain
from router_r1.worlds.sim.models import Simulation
from router_r1.worlds.sim.plans import expert_for, expert_plan, strong_for
from router_r1.worlds.sim.synthetic import random_pool

DOMAIN_ORDER = ("geography", "sports", "people", "science", "arts")


def domain_shares(routes: Iterable[tuple[str, str]], model: str, pool: PoolSpec,
                  world: KnowledgeBase) -> dict[str, dict[str, float | int | None]]:
    """Per domain: routed calls (`calls`), those to `model` (`to_model`, by the pool's name
    resolution) and their share (None without calls). `routes` are (model as written, query);
    a route to no pool model counts as a call, not to `model`. Domains in DOMAIN_ORDER, then
    the two other kinds where they occur."""
    target = pool[model].name
    counts: dict[str, list[int]] = {d: [0, 0] for d in DOMAIN_ORDER}
    for written, query in routes:
        c = counts.setdefault(call_domain(world, query), [0, 0])
        c[0] += 1
        d = pool.resolve(written)
        c[1] += int(d is not None and d.name == target)
    return {k: {"calls": n, "to_model": k_, "share": (k_ / n if n else None)} for k, (n, k_) in counts.items()}


def expert_routes(sim: Simulation, questions: Sequence[SimQuestion]) -> list[tuple[str, str]]:
    """The descriptor-only expert's calls on `questions` over `sim`'s pool, as (model, query)."""
    return [(c.model, c.query) for q in questions for _, c in expert_plan(sim, q)]


@dataclass(frozen=True)
class ChoiceCase:
    """One question over a fresh synthetic pool, and what the descriptors say its first call should
    be: the descriptor-only expert's model (`plans.expert_for` the first hop's domain) and every
    model rated strong on that domain."""

    question: SimQuestion
    pool: PoolSpec
    expert: str
    strong: tuple[str, ...]


def choice_cases(sim: Simulation, questions: Sequence[SimQuestion], seed: int = 0,
                 reserved: Iterable[str] = (), heads: int = 16) -> list[ChoiceCase]:
    """Each question over its own fresh random pool (as in `synthetic.synthetic_traces`, another
    draw; names from the first `heads` of `synthetic.HEADS`, the training traces' 16 by default)."""
    reserved = list(reserved)
    rng = random.Random(f"{seed}-choice")
    out = []
    for q in questions:
        pool = random_pool(rng, reserved, heads=heads)
        synth = Simulation(pool, sim.world)
        domain = q.domains[0]
        out.append(ChoiceCase(q, pool, expert_for(synth, domain), tuple(strong_for(synth, domain))))
    return out


def choice_rates(cases: Sequence[ChoiceCase], chosen: Sequence[str | None]) -> dict[str, float | int]:
    """How a router's first calls (`chosen`, the model as written, None for no call) over
    `choice_cases` read the descriptors: the share naming a model of the pool (`in_pool`, by the
    pool's name resolution), one strong on the question's domain (`strong`) and the expert's
    model (`expert`), beside what picking a line uniformly at random gives (`uniform_strong`,
    `uniform_expert`). A router that copies names without reading descriptions sits at the
    uniform figures times `in_pool`."""
    if len(cases) != len(chosen) or not cases:
        raise ValueError(f"need one choice per case, got {len(chosen)} for {len(cases)} cases")
    in_pool = strong = expert = 0
    for c, written in zip(cases, chosen):
        d = c.pool.resolve(written) if written else None
        in_pool += d is not None
        strong += d is not None and d.name in c.strong
        expert += d is not None and d.name == c.expert
    n = len(cases)
    return {"n": n, "in_pool": in_pool / n, "strong": strong / n, "expert": expert / n,
            "uniform_strong": sum(len(c.strong) / len(c.pool.models) for c in cases) / n,
            "uniform_expert": sum(1 / len(c.pool.models) for c in cases) / n}
