"""Well-formed warm-start traces on the simulator, for the supervised warm start of a tiny router.

A router built from scratch cannot follow the protocol by chance, so before RL it imitates
complete trajectories written here in the exact protocol:

    <think> I need the birthplace of the founder of Zelix Corp. First I need the founder of
    Zelix Corp. </think>
    <search> Sim-Bio-Small: Who founded Zelix Corp? </search>
    <information>The founder ... is Tomas Velik.</information>      (origin: information)
    <think> The founder of Zelix Corp is Tomas Velik. Now I need ... </think>
    <search> ...: Where was Tomas Velik born? </search> <information>...</information>
    <think> The answer is Kestrel. </think>
    <answer> Kestrel </answer>

Each trace is a core `Episode` whose segments carry their origin, so the SFT loss masks the
inserted information exactly as the RL loss does (`router_r1.env.episode.tokenize_trace`). The
answer is always copied from the last reply, right or wrong: the trace teaches the format and
the routing moves, and which model to trust is then learned from reward.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from router_r1.env.answer_metrics import exact_match
from router_r1.env.episode import Episode, Segment
from router_r1.env.prompt import index_key, render_prompt
from router_r1.env.protocol import information_block
from router_r1.env.reward import RewardConfig
from router_r1.pool.types import CallResult
from router_r1.worlds.sim.knowledge import SimQuestion
from router_r1.worlds.sim.language import DOMAINS, RELATIONS
from router_r1.worlds.sim.models import SimCall, Simulation
from router_r1.worlds.sim.oracle import oracle_plan
from router_r1.worlds.sim.plans import Plan, expert_plan, generalist_plan, random_plan
from router_r1.worlds.sim.unseen import call_domain

TracePolicy = Literal["oracle", "expert", "random", "generalist"]
TRACE_POLICIES = ("oracle", "expert", "random", "generalist")
NO_ANSWER = "unknown"  # answered when the last reply stated nothing


def _need(q: SimQuestion, sim: Simulation) -> str:
    """The whole question as a noun phrase: 'the birthplace of the founder of Zelix Corp'."""
    s = sim.world.entities[q.subject].name
    for r in q.relations:
        s = RELATIONS[r].noun_phrase(s)
    return s


def _search(model: str, query: str) -> str:
    return f"<search> {model}: {query} </search>"


def _plan_oracle(sim: Simulation, q: SimQuestion, cfg: RewardConfig) -> Plan:
    calls = oracle_plan(sim, q, cfg).calls
    return [("direct", calls[0])] if len(calls) == 1 else [("hop1", calls[0]), ("hop2", calls[1])]


def make_trace(sim: Simulation, q: SimQuestion, policy: TracePolicy = "oracle",
               rng: random.Random | None = None, reward_cfg: RewardConfig | None = None,
               instructions: str | None = None, compact: bool = False, decompose_p: float = 0.5,
               retry: bool = True, think_need: bool = False, by_strength: bool = False) -> Episode:
    """One complete, well-formed trajectory for `q`, as a finished `Episode`.

    policy 'oracle': the oracle's plan under `reward_cfg` (cheapest path to the gold answer);
    'expert': the cheapest model strong on each hop's domain, retrying a hedge with the
    strongest; 'random': models drawn at random, so traces also show wrong answers, hedges and
    retries; 'generalist': one call to the model best over all domains (see `plans.py`).
    `think_need`: each think before a call ends with the domain its query asks about
    (`unseen.call_domain`: "I need a model strong on sports."; none for a two-hop question asked
    whole), whatever model the policy then calls. With `by_strength` (prompts listing models by
    `prompt.strength_index`) it goes on to quote the index line the called model is listed under
    for that domain, and the model ("strong on sports: Sim-Geo-Small."), so the name follows the
    same phrase as in the prompt.
    """
    rng = rng or random.Random(0)
    if policy == "oracle":
        moves = _plan_oracle(sim, q, reward_cfg or RewardConfig())
    elif policy == "expert":
        moves = expert_plan(sim, q, retry)
    elif policy == "random":
        moves = random_plan(sim, q, rng, decompose_p, retry)
    elif policy == "generalist":
        moves = generalist_plan(sim, q)
    else:
        raise ValueError(f"unknown trace policy {policy!r}; choose from {TRACE_POLICIES}")
    need = _need(q, sim)
    subject = sim.world.entities[q.subject].name
    segments: list[Segment] = []
    think = f"I need {need}."
    if moves[0][0] == "hop1":
        think += f" First I need {RELATIONS[q.relations[0]].noun_phrase(subject)}."
    for i, (_, call) in enumerate(moves):
        if think_need and (domain := call_domain(sim.world, call.query)) in DOMAINS:
            think += f" I need a model strong on {domain}."
            if by_strength:
                key = index_key(sim.descriptor(call.model), domain)
                think += f" {key}: {call.model}." if key else f" {call.model}."
        segments.append(Segment(f"<think> {think} </think>\n{_search(call.model, call.query)}",
                                "policy"))
        segments.append(Segment(information_block(call.reply.text), "information"))
        following = moves[i + 1][0] if i + 1 < len(moves) else None
        if following == "retry":
            think = f"{call.model} is not sure. I will ask another model."
        elif following == "hop2":
            found = RELATIONS[q.relations[0]].noun_phrase(subject)
            stated = call.reply.stated.name
            think = (f"{found[:1].upper()}{found[1:]} is {stated}. Now I need "
                     f"{RELATIONS[q.relations[1]].noun_phrase(stated)}.")
    last = moves[-1][1].reply.stated
    answer = last.name if last is not None else NO_ANSWER
    segments.append(Segment(f"<think> The answer is {answer}. </think>\n<answer> {answer} </answer>",
                            "policy"))
    return Episode(
        uid=q.id, question=q.text, golden_answers=q.golden_answers,
        prompt=render_prompt(sim.pool, q.text, instructions, compact), segments=segments,
        calls=[_call_result(sim, c) for _, c in moves],
        routes=[(c.model, c.query) for _, c in moves],
        turns=sum(s.origin == "policy" for s in segments), done=True,
        meta={"trace_policy": policy, "em": exact_match(answer, q.golden_answers),
              "stated": [(c.reply.stated.name, c.reply.stated.kind) if c.reply.stated else None
                         for _, c in moves]})


def _call_result(sim: Simulation, c: SimCall) -> CallResult:
    return CallResult(model=c.model, text=c.reply.text, prompt_tokens=c.prompt_tokens,
                      completion_tokens=c.completion_tokens, cost_usd=c.cost_usd,
                      latency_s=sim.descriptor(c.model).latency_s, attempts=1)


def swap_stated_names(ep: Episode, sim: Simulation, rng: random.Random) -> Episode:
    """The same trace with each reply's stated entity renamed to a random entity of the same
    kind, from the information block that states it onwards (so later sub-questions and the
    answer copy the new name). The facts become false; the text stays consistent. This is how
    the tiny router gets to read and write every entity name of the world, held-out ones
    included (as answers, never as the held-out questions or their facts): a name it never
    produced in training is one it cannot copy out of a question (docs/training.md)."""
    segments = [Segment(x.text, x.origin) for x in ep.segments]
    routes = list(ep.routes)
    for i, stated in enumerate(ep.meta["stated"]):
        if stated is None:
            continue
        name, kind = stated
        new = rng.choice(sim.world.by_kind(kind)).name
        for j in range(2 * i + 1, len(segments)):  # segment 2i+1 is call i's information
            segments[j] = Segment(segments[j].text.replace(name, new), segments[j].origin)
        routes[i + 1:] = [(m, q.replace(name, new)) for m, q in routes[i + 1:]]
    return Episode(uid=ep.uid, question=ep.question, golden_answers=ep.golden_answers, prompt=ep.prompt,
                   segments=segments, calls=ep.calls, routes=routes, turns=ep.turns, done=True,
                   meta={**ep.meta, "name_swap": True, "em": 0.0}, pool=ep.pool)


def swap_subject(ep: Episode, old: str, kind: str, sim: Simulation, rng: random.Random) -> Episode:
    """The same trace about another entity of the subject's kind: `old` (the question's subject)
    is renamed everywhere, in the question, the sub-questions, the replies and the answer. The
    facts become false; the text stays consistent. With one fresh name per trace the router cannot
    tie a question's words to a remembered name: the only way to write the right name is to copy
    it out of the question (docs/training.md, the demo's choices)."""
    text = " ".join([ep.question, *(x.text for x in ep.segments)])
    choices = [e.name for e in sim.world.by_kind(kind) if e.name != old and e.name not in text]
    if not choices:
        return ep
    new = rng.choice(choices)
    return Episode(uid=ep.uid, question=ep.question.replace(old, new), golden_answers=ep.golden_answers,
                   prompt="", segments=[Segment(x.text.replace(old, new), x.origin) for x in ep.segments],
                   calls=ep.calls, routes=[(m, q.replace(old, new)) for m, q in ep.routes], turns=ep.turns,
                   done=True, meta={**ep.meta, "subject_swap": True}, pool=ep.pool)


DEFAULT_MIX = {"expert": 0.6, "random": 0.4}


def make_traces(sim: Simulation, questions: Sequence[SimQuestion],
                mix: dict[str, float] | None = None, seed: int = 0,
                reward_cfg: RewardConfig | None = None,
                instructions: str | None = None, compact: bool = False,
                name_swap: float = 0.0, subject_swap: float = 0.0, think_need: bool = False,
                by_strength: bool = False) -> list[Episode]:
    """One trace per question, its policy drawn with the weights of `mix` (default: 60% expert,
    40% random: the format and sensible routing, plus enough variety for RL to explore from).
    A `name_swap` share of them have their stated names swapped (`swap_stated_names`), and a
    `subject_swap` share their subject renamed (`swap_subject`): fresh names in every trace.
    `think_need`, `by_strength`: see `make_trace`.
    A swapped trace keeps no prompt: the rollout worker renders it from the renamed question."""
    mix = mix or DEFAULT_MIX
    bad = sorted(set(mix) - set(TRACE_POLICIES))
    if bad:
        raise ValueError(f"unknown trace policies {bad}; choose from {TRACE_POLICIES}")
    if not (0.0 <= name_swap <= 1.0 and 0.0 <= subject_swap <= 1.0):
        raise ValueError(f"name_swap and subject_swap must be in [0, 1], got {name_swap}, {subject_swap}")
    subject_rng = random.Random(f"{seed}-subject-swap")
    rng, swap_rng = random.Random(seed), random.Random(f"{seed}-name-swap")
    names, weights = list(mix), list(mix.values())
    out = []
    for q in questions:
        ep = make_trace(sim, q, rng.choices(names, weights)[0], rng, reward_cfg,
                        instructions=instructions, compact=compact, think_need=think_need,
                        by_strength=by_strength)
        if name_swap and swap_rng.random() < name_swap:
            ep = swap_stated_names(ep, sim, swap_rng)
        if subject_swap and subject_rng.random() < subject_swap:
            subject = sim.world.entities[q.subject]
            ep = swap_subject(ep, subject.name, subject.kind, sim, subject_rng)
        out.append(ep)
    return out


def tokenizer_corpus(sim: Simulation, n_traces: int = 1000, seed: int = 0,
                     instructions: str | None = None, compact: bool = False) -> list[str]:
    """Texts to train the tiny router's tokenizer on locally: every entity name, every question
    of every split, and full prompts + traces over training questions (mixed policies), so
    every word the router will read or write in the simulator is in its vocabulary."""
    w = sim.world
    texts = [e.name for e in w.entities.values()]
    texts += [q.text for split in ("train", "val", "test") for q in w.all_questions(split)]
    for ep in make_traces(sim, w.questions("train", n_traces, seed=seed), seed=seed,
                          instructions=instructions, compact=compact):
        texts.append(ep.prompt + ep.response)
    return texts
