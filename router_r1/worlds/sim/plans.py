"""Fixed routing policies on the simulator: the baselines a trained router is compared with and
the behaviours warm-start traces demonstrate.

A plan is a list of (move, SimCall): move is 'direct' (the full question), 'hop1' / 'hop2' (a
two-hop question decomposed into canonical sub-questions) or 'retry' (the same query again, to
another model, after a hedged or empty reply). The answer is what the last call states.

* random: models drawn uniformly (the paper's random-routing baseline, plus decompositions and
  retries so warm-start traces show every move);
* expert: what a router can learn from the descriptors alone: each (sub-)question goes to the
  cheapest model rated strong on its domain, two-hop questions are decomposed, and a hedged
  reply is retried with the model strongest on that domain;
* generalist: the whole question, in one call, to the model with the best skill over all
  domains, whatever it costs (quality bought at its price; warm-start traces that show it let
  the cost weight alpha decide between it and the expert: `configs/sweep_alpha_sim.yaml`).
The oracle, which also knows each model's per-fact knowledge, is in `oracle.py`.
"""
from __future__ import annotations

import random

from router_r1.worlds.sim.knowledge import SimQuestion
from router_r1.worlds.sim.language import DOMAINS, RELATIONS
from router_r1.worlds.sim.models import SimCall, Simulation

Plan = list[tuple[str, SimCall]]
STRONG = 0.8  # a skill at or above this counts as "strong" (what the descriptions say in words)


def _two_hops(sim: Simulation, q: SimQuestion, ask) -> Plan:
    """hop1 with `ask`, then hop2 about the entity hop1 stated (if any)."""
    moves = ask(q.subquestions[0], "hop1", q.relations[0])
    stated = moves[-1][1].reply.stated
    if stated is None:
        return moves
    return moves + ask(RELATIONS[q.relations[1]].ask(stated.name), "hop2", q.relations[1])


def _needs_retry(call: SimCall) -> bool:
    return call.reply.hedged or call.reply.stated is None


def random_plan(sim: Simulation, q: SimQuestion, rng: random.Random,
                decompose_p: float = 0.5, retry: bool = True) -> Plan:
    def ask(query: str, move: str, _relation: str | None = None) -> Plan:
        first = rng.choice(sim.names)
        out = [(move, sim.call(first, query))]
        if retry and _needs_retry(out[0][1]) and len(sim.names) > 1:
            out.append(("retry", sim.call(rng.choice([m for m in sim.names if m != first]), query)))
        return out

    if q.two_hop and rng.random() < decompose_p:
        return _two_hops(sim, q, ask)
    return ask(q.standalone, "direct")


def expert_for(sim: Simulation, domain: str) -> str:
    """The cheapest model strong on `domain`; the most skilled one if none is strong."""
    price = {m: sim.descriptor(m).price_in + sim.descriptor(m).price_out for m in sim.names}
    strong = strong_for(sim, domain)
    return min(strong, key=price.get) if strong else strongest_for(sim, domain)


def strong_for(sim: Simulation, domain: str) -> list[str]:
    """The models rated strong on `domain` (skill >= STRONG), in pool order."""
    return [m for m in sim.names if sim.models[m].spec.p_know(domain) >= STRONG]


def strongest_for(sim: Simulation, domain: str) -> str:
    return max(sim.names, key=lambda m: sim.models[m].spec.p_know(domain))


def expert_plan(sim: Simulation, q: SimQuestion, retry: bool = True) -> Plan:
    def ask(query: str, move: str, relation: str) -> Plan:
        domain = RELATIONS[relation].domain
        first = expert_for(sim, domain)
        out = [(move, sim.call(first, query))]
        backup = strongest_for(sim, domain)
        if retry and _needs_retry(out[0][1]) and backup != first:
            out.append(("retry", sim.call(backup, query)))
        return out

    if q.two_hop:
        return _two_hops(sim, q, ask)
    return ask(q.standalone, "direct", q.relations[0])


def generalist_for(sim: Simulation) -> str:
    """The model with the highest skill summed over every domain."""
    return max(sim.names, key=lambda m: sum(sim.models[m].spec.p_know(d) for d in DOMAINS))


def generalist_plan(sim: Simulation, q: SimQuestion) -> Plan:
    return [("direct", sim.call(generalist_for(sim), q.standalone))]
