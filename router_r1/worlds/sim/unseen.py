"""Where a model gets called, per domain: the measurement of a model unseen in training.

A router trained without a model and handed it in the descriptor file should call it where its
description says it is strong. Each routed call asks one (sub-)question; the simulator's own
query reader (`SimWorld.interpret`) says which relation it asks, hence its domain. A whole two-hop
question asked in one call spans two domains and is counted apart, as is a query the simulator
does not understand. Used by `router-r1 unseen` (pipelines/unseen.py) for the trained router and
for the descriptor-only expert on the same questions.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from router_r1.pool.descriptors import PoolSpec
from router_r1.worlds.sim.knowledge import SimQuestion, SimWorld
from router_r1.worlds.sim.language import RELATIONS
from router_r1.worlds.sim.models import Simulation
from router_r1.worlds.sim.plans import expert_plan

DOMAIN_ORDER = ("geography", "sports", "people", "science", "arts")
WHOLE_TWO_HOP = "two-hop, asked whole"
NOT_UNDERSTOOD = "not understood"


def call_domain(world: SimWorld, query: str) -> str:
    """The domain of the fact a query asks; `WHOLE_TWO_HOP` or `NOT_UNDERSTOOD` otherwise."""
    it = world.interpret(query)
    if it is None:
        return NOT_UNDERSTOOD
    if len(it.relations) > 1:
        return WHOLE_TWO_HOP
    return RELATIONS[it.relations[0]].domain


def domain_shares(routes: Iterable[tuple[str, str]], model: str, pool: PoolSpec,
                  world: SimWorld) -> dict[str, dict[str, float | int | None]]:
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
