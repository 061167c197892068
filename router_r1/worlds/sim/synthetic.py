"""Synthetic candidate pools: warm-start traces that teach a router to read descriptors.

A tiny router warm-started on one fixed pool learns that pool by heart: it writes those few names
and never needs to read a description, so a model added to the descriptor file later (unseen in
training) is never called, whatever its description says. Here a share of the warm-start traces
is played over a fresh random pool each: invented names built from parts like the real ones
(`Sim-Nova-Large`), each model with a random profile (strong, fair or weak per domain) and price,
its description written from that profile in the pool file's own words ("Strong on geography and
sports; weak on people, science and arts."), simulated with exactly that profile on the run's
world, and routed by the descriptor-only expert (`plans.expert_plan`: the cheapest model strong
on each hop's domain). A name says nothing about its model, so the only way to imitate these
traces is to read each description and price. Each trace carries its pool (`Episode.pool`) and is
rendered over it with the run's prompt options.

Names of the real pool (`reserved`, every model of the pool file, unseen ones included) are never
drawn, so a model held out of training is never written, called or described under its name in
training text.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from router_r1.env.episode import Episode
from router_r1.env.prompt import PromptLayout
from router_r1.pool.descriptors import Backend, ModelDescriptor, PoolSpec
from router_r1.worlds.sim.knowledge import SimQuestion
from router_r1.worlds.sim.language import DOMAINS
from router_r1.worlds.sim.models import Simulation
from router_r1.worlds.sim.plans import STRONG
from router_r1.worlds.sim.traces import make_trace, swap_subject

if TYPE_CHECKING:
    from router_r1.infra.config import SwapNames

FAIR = 0.45  # a skill at or above this (and below STRONG) is "fair" in words; below it "weak"
# Name parts: the real pool's pieces and others, combined at random (a name says nothing about
# its model: it is drawn independently of the profile). Warm-start traces draw from the first 16
# heads; the RLlib router's catalog (experiments/unseen.py) from all 60.
HEADS = ("Geo", "Bio", "Sci", "General", "Art", "Sport", "Nova", "Omni", "Lex", "Atlas", "Core",
         "Quant", "Sage", "Vox", "Terra", "Poly", "Ark", "Bolt", "Cedar", "Delta", "Echo", "Flux", "Gale",
         "Helix", "Ion", "Jade", "Kite", "Lumen", "Mesa", "Nimbus", "Onyx", "Pike", "Quill", "Raven",
         "Sol", "Tide", "Umbra", "Vale", "Wren", "Zephyr", "Aster", "Birch", "Coral", "Dune", "Ember",
         "Fern", "Grove", "Haze", "Iris", "Juno", "Kelp", "Lark", "Moss", "Nox", "Opal", "Pine", "Reef",
         "Sable", "Thorn", "Vega")
SIZES = ("Tiny", "Small", "Medium", "Large", "XL")
SPECIALIST_PRICES = (0.05, 0.10, 0.15, 0.20, 0.30, 0.40, 0.60, 0.80, 1.00)
GENERALIST_PRICES = (1.00, 1.50, 2.00, 3.00)
GENERALIST_SHARE = 0.25  # share of drawn models that are good on every topic


def _listed(names: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def describe(skill: dict[str, float], hop_skill: float, order: Sequence[str] = DOMAINS) -> str:
    """A description in the pool file's words: 'Strong on X and Y; fair on Z; weak on ...', or
    'Good on every topic' (and ', and on two-hop questions in one call' when hop_skill >= 0.5)
    for a model strong everywhere. `order` is the order domains are named in."""
    strong = [d for d in order if skill[d] >= STRONG]
    if len(strong) == len(order):
        return "Good on every topic" + (", and on two-hop questions in one call." if hop_skill >= 0.5 else ".")
    fair = [d for d in order if FAIR <= skill[d] < STRONG]
    weak = [d for d in order if skill[d] < FAIR]
    parts = [f"{word} on {_listed(ds)}" for word, ds in (("strong", strong), ("fair", fair), ("weak", weak)) if ds]
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def random_model(rng: random.Random, name: str) -> ModelDescriptor:
    """One simulated model with a random profile, described in words from that profile."""
    if rng.random() < GENERALIST_SHARE:
        skill = {d: round(rng.uniform(0.82, 0.9), 2) for d in DOMAINS}
        hop_skill, price = round(rng.uniform(0.6, 0.9), 2), rng.choice(GENERALIST_PRICES)
    else:
        domains = list(DOMAINS)
        rng.shuffle(domains)
        n_strong, n_fair = rng.choice((1, 1, 2, 2, 3)), rng.choice((0, 1, 2))
        skill = {d: round(rng.uniform(0.85, 0.95), 2) for d in domains[:n_strong]}
        skill |= {d: round(rng.uniform(0.5, 0.65), 2) for d in domains[n_strong:n_strong + n_fair]}
        skill |= {d: round(rng.uniform(0.15, 0.35), 2) for d in domains[n_strong + n_fair:]}
        hop_skill, price = round(rng.uniform(0.1, 0.4), 2), rng.choice(SPECIALIST_PRICES)
    order = list(DOMAINS)
    rng.shuffle(order)  # the words' order carries no meaning either
    options = {"skill": skill, "hop_skill": hop_skill, "hedge": round(rng.uniform(0.2, 0.5), 2),
               "verbosity": rng.choice((0, 1))}
    return ModelDescriptor(name=name, price_in=price, price_out=price, latency_s=1.0,
                           description=describe(skill, hop_skill, order),
                           backend=Backend(kind="simulated", options=options))


def random_name(rng: random.Random, heads: int = 16) -> str:
    """`Sim-<head>-<size>`, the head one of the first `heads` of HEADS."""
    return f"Sim-{rng.choice(HEADS[:heads])}-{rng.choice(SIZES)}"


def random_pool(rng: random.Random, reserved: Iterable[str] = (), sizes: tuple[int, int] = (2, 5),
                heads: int = 16) -> PoolSpec:
    """A pool of `sizes[0]..sizes[1]` random models with distinct names (`random_name` over
    `heads` heads), none in `reserved` (compared case-insensitively, as the pool resolves names)."""
    if not 2 <= heads <= len(HEADS):
        raise ValueError(f"heads must be between 2 and {len(HEADS)}, got {heads}")
    banned = {n.strip().casefold() for n in reserved}
    names: list[str] = []
    n = rng.randint(*sizes)
    for _ in range(1000):
        if len(names) == n:
            break
        name = random_name(rng, heads)
        if name.casefold() not in banned and name not in names:
            names.append(name)
    if len(names) < sizes[0]:
        raise ValueError("too few synthetic model names left outside the reserved ones")
    return PoolSpec(name="synthetic", models=[random_model(rng, n) for n in names])


def synthetic_traces(sim: Simulation, questions: Sequence[SimQuestion], seed: int = 0,
                     reserved: Iterable[str] = (), layout: PromptLayout = "full",
                     subject_swap: float = 0.0, swap_names: SwapNames = "all") -> list[Episode]:
    """One expert trace per question, each over its own random pool (on `sim`'s world), carrying
    that pool (`Episode.pool`); a `subject_swap` share get a fresh subject, drawn as `swap_names`
    says (`traces.swap_subject`)."""
    reserved = list(reserved)
    rng, subject_rng = random.Random(f"{seed}-synthetic"), random.Random(f"{seed}-synthetic-subject")
    out = []
    for q in questions:
        pool = random_pool(rng, reserved)
        synth = Simulation(pool, sim.world)
        ep = make_trace(synth, q, "expert", rng, layout=layout)
        ep.pool = pool
        ep.meta["synthetic_pool"] = True
        if subject_swap and subject_rng.random() < subject_swap:
            subject = sim.world.entities[q.subject]
            ep = swap_subject(ep, subject.name, subject.kind, synth, subject_rng, swap_names)
        out.append(ep)
    return out
